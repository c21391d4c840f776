# Data: the synthetic demo dataset (when enabled) and image-level labels per split.

from pathlib import Path

from locseg.data.demo import DEMO_VERSION


if config["demo"]["enabled"]:

    rule demo_data:
        """Synthetic VOC- and COCO-layout data, byte-identical for one seed."""
        output:
            train=raw_split_file("train"),
            val=raw_split_file("val"),
            coco=config["coco"]["annotations"],
        params:
            # demo.out (config.py checks coco.annotations is <demo.out>/coco/annotations/instances_train.json)
            out=lambda wc, output: str(Path(output.coco).parents[2]),
            size=config["demo"]["size"],
            seed=config["seed"],
            version=DEMO_VERSION,
        log:
            log_path("demo_data"),
        benchmark:
            bench_path("demo_data")
        script:
            "../scripts/demo_data.py"


VOC_SPLITS = sorted(set(SPLITS.values()))


rule validate_dataset:
    """First step: every image and GT mask of the configured splits (and the COCO images) checked once.
    on_bad_image: fail stops here listing every problem; skip leaves bad images out of every stage."""
    input:
        splits=[raw_split_file(s) for s in VOC_SPLITS],
        coco=config["coco"]["annotations"],
    output:
        splits=[split_file(s) for s in [*VOC_SPLITS, EXTERNAL]],
        report=report(f"{RESULTS}/validate/report.json", caption="../report/validation.rst", category="Dataset"),
    params:
        on_bad_image=config["on_bad_image"],
        classes=config["classes"],
        category_map=config["coco"]["category_map"],
        files=lambda wc: {s: presence_version(s) for s in [*VOC_SPLITS, EXTERNAL]},
        code=code_version("validate_dataset"),
    log:
        log_path("validate_dataset"),
    benchmark:
        bench_path("validate_dataset")
    script:
        "../scripts/validate_dataset.py"


rule image_labels:
    """Which classes each image holds: from GT masks, or from dataset.labels_file."""
    input:
        split=lambda wc: split_file(wc.split),
        labels_file=[DATASET["labels_file"]] if DATASET["labels_file"] else [],
    output:
        json=f"{RESULTS}/labels/{{split}}.json",
    params:
        classes=config["classes"],
        allow_pickle=DATASET["allow_pickle"],
        data=lambda wc: data_version(wc.split, "images", "masks"),  # image headers: the size check
        code=code_version("image_labels"),
    log:
        log_path("image_labels", "{split}"),
    benchmark:
        bench_path("image_labels", "{split}")
    script:
        "../scripts/image_labels.py"
