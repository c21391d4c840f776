# Evaluation: the CAM baseline sweep, pseudo masks (per round) and DeepLab, with plots and overlays.


rule eval_cams:
    """CAM-only baseline: mIoU over a background-threshold sweep; the best threshold is reported."""
    input:
        cams=lambda wc: cam_shards(wc.split),
        split=lambda wc: split_file(wc.split),
    output:
        json=report(f"{RESULTS}/eval/cams_{{split}}.json", caption="../report/cams.rst", category="CAM baseline",
                    labels={"split": "{split}", "figure": "metrics (JSON)"}),
        curve=report(f"{RESULTS}/eval/cams_{{split}}_threshold.png", caption="../report/cams_threshold.rst",
                     category="CAM baseline", labels={"split": "{split}", "figure": "mIoU vs threshold"}),
    params:
        classes=config["classes"],
        thresholds=config["cam"]["thresholds"],
        data=lambda wc: data_version(wc.split, "masks"),
        code=code_version("eval_cams"),
    log:
        log_path("eval_cams", "{split}"),
    benchmark:
        bench_path("eval_cams", "{split}")
    script:
        "../scripts/eval_cams.py"


rule evaluate_masks:
    """Pseudo masks vs GT (metrics JSON), mIoU per resegmentation round, bars and an overlay grid."""
    input:
        masks=lambda wc: rules.export_masks.output.masks.format(split=wc.split),
        probs=lambda wc: expand(rules.resegment.output.store, split=wc.split, shard=SHARDS),
        cams=lambda wc: cam_shards(wc.split),
        cam_baseline=rules.eval_cams.output.json,
        split=lambda wc: split_file(wc.split),
    output:
        json=report(f"{RESULTS}/eval/masks_{{split}}.json", caption="../report/masks.rst", category="Pseudo masks",
                    labels={"split": "{split}", "figure": "metrics (JSON)"}),
        per_class=report(f"{RESULTS}/eval/masks_{{split}}_per_class.png", caption="../report/masks_per_class.rst",
                         category="Pseudo masks", labels={"split": "{split}", "figure": "IoU per class"}),
        overlay=report(f"{RESULTS}/eval/masks_{{split}}_overlay.png", caption="../report/masks_overlay.rst",
                       category="Pseudo masks", labels={"split": "{split}", "figure": "overlays"}),
    params:
        classes=config["classes"],
        assemble=pick("reseg", "bg_score", "band"),
        overlay_images=config["report"]["overlay_images"],
        data=lambda wc: data_version(wc.split, "images", "masks"),
        code=code_version("evaluate_masks"),
    log:
        log_path("evaluate_masks", "{split}"),
    benchmark:
        bench_path("evaluate_masks", "{split}")
    script:
        "../scripts/evaluate_masks.py"


rule evaluate_deeplab:
    """DeepLab predictions on a split (PNG), their metrics JSON and per-class bars."""
    input:
        model=rules.train_deeplab.output.model,
        split=lambda wc: split_file(wc.split),
    output:
        json=report(f"{RESULTS}/eval/deeplab_{{labels}}_{{split}}.json", caption="../report/deeplab.rst",
                    category="DeepLab",
                    labels={"split": "{split}", "trained on": "{labels}", "figure": "metrics (JSON)"}),
        per_class=report(f"{RESULTS}/eval/deeplab_{{labels}}_{{split}}_per_class.png",
                         caption="../report/deeplab_per_class.rst", category="DeepLab",
                         labels={"split": "{split}", "trained on": "{labels}", "figure": "IoU per class"}),
        predictions=directory(f"{RESULTS}/predictions/deeplab_{{labels}}/{{split}}"),
    params:
        classes=config["classes"],
        infer=pick("deeplab", "eval_scales", "eval_flip"),
        data=lambda wc: data_version(wc.split, "images", "masks"),
        code=code_version("evaluate_deeplab"),
    threads: 1
    resources:
        gpu=GPUS_PER_JOB,
        mem_mb=4000,
        runtime=60,
    log:
        log_path("evaluate_deeplab", "{labels}_{split}"),
    benchmark:
        bench_path("evaluate_deeplab", "{labels}_{split}")
    script:
        "../scripts/evaluate_deeplab.py"


rule supervision_gap:
    """mIoU(pseudo) / mIoU(gt): the share of full supervision the pseudo labels recover."""
    input:
        pseudo=rules.evaluate_deeplab.output.json.replace("{labels}", "pseudo"),
        gt=rules.evaluate_deeplab.output.json.replace("{labels}", "gt"),
    output:
        json=report(f"{RESULTS}/eval/supervision_gap_{{split}}.json", caption="../report/supervision_gap.rst",
                    category="DeepLab",
                    labels={"split": "{split}", "trained on": "pseudo / gt", "figure": "ratio (JSON)"}),
    params:
        code=code_version("supervision_gap"),
    log:
        log_path("supervision_gap", "{split}"),
    benchmark:
        bench_path("supervision_gap", "{split}")
    script:
        "../scripts/supervision_gap.py"
