# Pseudo masks: label assembly into palette PNGs, and the deeplab-pytorch layout.


rule export_masks:
    """Constant background score + argmax over present classes (+ optional 255 band) -> PNG per image."""
    input:
        probs=lambda wc: expand(rules.resegment.output.store, split=wc.split, shard=SHARDS),
    output:
        masks=directory(f"{RESULTS}/masks/{{split}}"),
    params:
        classes=config["classes"],
        assemble=pick("reseg", "bg_score", "band"),
        code=code_version("export_masks"),
    log:
        log_path("export_masks", "{split}"),
    benchmark:
        bench_path("export_masks", "{split}")
    script:
        "../scripts/export_masks.py"


rule export_deeplab_pytorch:
    """The pseudo masks as deeplab-pytorch reads them: train_aug.txt + single-channel index PNGs."""
    input:
        masks=rules.export_masks.output.masks.format(split=SPLITS["pseudo"]),
        split=split_file(SPLITS["pseudo"]),
    output:
        root=directory(f"{RESULTS}/export/deeplab-pytorch"),
    params:
        split=SPLITS["pseudo"],
        classes=config["classes"],
        data=lambda wc: data_version(SPLITS["pseudo"], "images"),
        code=code_version("export_deeplab_pytorch"),
    log:
        log_path("export_deeplab_pytorch"),
    benchmark:
        bench_path("export_deeplab_pytorch")
    script:
        "../scripts/export_deeplab_pytorch.py"
