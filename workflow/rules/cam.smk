# Locate: the multi-label CAM classifier and per-shard CAM extraction into the HDF5 store.


rule train_cam:
    """Multi-label classifier on the image-level labels of the CAM split."""
    input:
        labels=f"{RESULTS}/labels/{SPLITS['cam']}.json",
        split=split_file(SPLITS["cam"]),
        weights=weights_input("cam"),
    output:
        model=CAM_MODEL,
    params:
        classes=config["classes"],
        train=pick("cam", "backbone", "weights", "output_stride", "crop", "scale_range", "batch_size",
                   "epochs", "optimizer", "lr", "weight_decay"),
        split=SPLITS["cam"],
        source=config["cam"]["source"],
        seed=config["seed"],
        data=lambda wc: data_version(SPLITS["cam"], "images"),
        code=code_version("train_cam"),
        tensorboard=f"{RESULTS}/tensorboard/train_cam",
        resume=resume_path("train_cam"),
    threads: 2 + config["num_workers"]  # the model's threads + one core per DataLoader worker
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=8000,
        runtime=240,
    log:
        log_path("train_cam"),
    benchmark:
        bench_path("train_cam")
    script:
        "../scripts/train_cam.py"


rule extract_cams:
    """Multi-scale (+ flip) CAMs of each image's present classes, one shard of one split."""
    input:
        unpack(cam_split_inputs),
    output:
        store=f"{RESULTS}/cams/{{split}}/{{shard}}.h5",
    params:
        classes=config["classes"],
        infer=pick("cam", "scales", "flip", "max_side"),
        canvas=config["inference"]["canvas"],  # changes the maps; the rest of `inference` is speed only
        imported=lambda wc: imports_cams(wc.split),
        shards=config["shards"],
        data=lambda wc: cam_data_version(wc.split),
        code=code_version("extract_cams"),
    threads: 1 + config["inference"]["workers"]
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=120,
    log:
        log_path("extract_cams", "{split}/{shard}"),
    benchmark:
        bench_path("extract_cams", "{split}/{shard}")
    script:
        "../scripts/extract_cams.py"
