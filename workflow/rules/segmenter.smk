# Segment: the class-agnostic segmenter (external masks + cues) and per-shard resegmentation.


rule train_segmenter:
    """Class-agnostic: (image, one class's cue) -> that object's mask, learned from COCO-layout masks."""
    input:
        coco=config["coco"]["annotations"],
        split=split_file(EXTERNAL),
        cams=cam_shards(EXTERNAL) if config["segmenter"]["cue"] == "cam" else [],
        weights=weights_input("segmenter"),
    output:
        model=f"{RESULTS}/models/segmenter.pt",
    params:
        classes=config["classes"],
        train=pick("segmenter", "backbone", "weights", "output_stride", "width", "cue", "second_cues",
                   "consistency", "feedback", "passes", "crop", "scale_range", "batch_size", "epochs",
                   "optimizer", "lr", "weight_decay"),
        category_map=config["coco"]["category_map"],
        seed=config["seed"],
        data=lambda wc: data_version(EXTERNAL, "images"),
        code=code_version("train_segmenter"),
        tensorboard=f"{RESULTS}/tensorboard/train_segmenter",
        resume=resume_path("train_segmenter"),
    threads: 2 + config["num_workers"]  # the model's threads + one core per DataLoader worker
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=8000,
        runtime=480,
    log:
        log_path("train_segmenter"),
    benchmark:
        bench_path("train_segmenter")
    script:
        "../scripts/train_segmenter.py"


rule resegment:
    """Every present class of every image through the segmenter (or SAM), `rounds` times, one shard."""
    input:
        model=segmenter_model(),
        cams=rules.extract_cams.output.store,
        split=lambda wc: split_file(wc.split),
    output:
        store=f"{RESULTS}/reseg/{{split}}/{{shard}}.h5",
    params:
        classes=config["classes"],
        reseg=pick("reseg", "rounds", "flip", "keep_rounds", "max_side"),
        sam=config["segmenter"]["sam"] if config["segmenter"]["kind"] == "sam" else None,
        canvas=config["inference"]["canvas"],  # changes the maps; the rest of `inference` is speed only
        data=lambda wc: data_version(wc.split, "images"),
        code=code_version("resegment"),
    threads: 1 + config["inference"]["workers"]
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=120,
    log:
        log_path("resegment", "{split}/{shard}"),
    benchmark:
        bench_path("resegment", "{split}/{shard}")
    script:
        "../scripts/resegment.py"
