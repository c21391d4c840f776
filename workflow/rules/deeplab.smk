# Retrain: DeepLabV3 on the pseudo masks, or on GT masks for the fully supervised bound.


rule train_deeplab:
    """DeepLabV3, cross-entropy with 255 ignored, poly LR, on the pseudo split's images."""
    input:
        unpack(deeplab_label_inputs),
        split=split_file(SPLITS["pseudo"]),
        weights=weights_input("deeplab"),
    output:
        model=f"{RESULTS}/models/deeplab_{{labels}}.pt",
    params:
        classes=config["classes"],
        train=pick("deeplab", "backbone", "weights", "crop", "scale_range", "batch_size", "epochs",
                   "optimizer", "lr", "weight_decay"),
        split=SPLITS["pseudo"],
        seed=config["seed"],
        data=lambda wc: data_version(SPLITS["pseudo"], "images", *(["masks"] if wc.labels == "gt" else [])),
        code=code_version("train_deeplab"),
        tensorboard=f"{RESULTS}/tensorboard/train_deeplab_{{labels}}",
        resume=resume_path("train_deeplab_{labels}"),
    threads: 2 + config["num_workers"]  # the model's threads + one core per DataLoader worker
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=8000,
        runtime=480,
    log:
        log_path("train_deeplab", "{labels}"),
    benchmark:
        bench_path("train_deeplab", "{labels}")
    script:
        "../scripts/train_deeplab.py"
