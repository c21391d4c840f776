# Data: the synthetic demo dataset (when enabled) and image-level labels per split.

from locseg.data.demo import DEMO_VERSION


if config["demo"]["enabled"]:

    rule demo_data:
        """Synthetic VOC- and COCO-layout data, byte-identical for one seed."""
        output:
            train=split_file("train"),
            val=split_file("val"),
            coco=config["coco"]["annotations"],
        params:
            out=config["demo"]["out"],
            size=config["demo"]["size"],
            seed=config["seed"],
            version=DEMO_VERSION,
        log:
            log_path("demo_data"),
        benchmark:
            bench_path("demo_data")
        script:
            "../scripts/demo_data.py"


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
    log:
        log_path("image_labels", "{split}"),
    benchmark:
        bench_path("image_labels", "{split}")
    script:
        "../scripts/image_labels.py"
