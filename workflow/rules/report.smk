# Report: every number with its split, the plots, overlays, run times and the config, in one file.


rule report:
    """results/report.html (self-contained) and its Markdown twin, plus a DeepLab overlay grid on val."""
    input:
        unpack(report_grid_inputs),
        cams=rules.eval_cams.output.json.format(split=SPLITS["pseudo_eval"]),
        cams_curve=rules.eval_cams.output.curve.format(split=SPLITS["pseudo_eval"]),
        masks=rules.evaluate_masks.output.json.format(split=SPLITS["pseudo_eval"]),
        masks_per_class=rules.evaluate_masks.output.per_class.format(split=SPLITS["pseudo_eval"]),
        masks_overlay=rules.evaluate_masks.output.overlay.format(split=SPLITS["pseudo_eval"]),
        deeplab_pseudo=rules.evaluate_deeplab.output.json.format(labels="pseudo", split=SPLITS["val"]),
        deeplab_gt=rules.evaluate_deeplab.output.json.format(labels="gt", split=SPLITS["val"]),
        deeplab_pseudo_per_class=rules.evaluate_deeplab.output.per_class.format(labels="pseudo", split=SPLITS["val"]),
        deeplab_gt_per_class=rules.evaluate_deeplab.output.per_class.format(labels="gt", split=SPLITS["val"]),
        pred_pseudo=rules.evaluate_deeplab.output.predictions.format(labels="pseudo", split=SPLITS["val"]),
        pred_gt=rules.evaluate_deeplab.output.predictions.format(labels="gt", split=SPLITS["val"]),
        gap=rules.supervision_gap.output.json.format(split=SPLITS["val"]),
        split=split_file(SPLITS["val"]),
        validation=rules.validate_dataset.output.report,
    output:
        html=report(f"{RESULTS}/report.html", caption="../report/report.rst", category="Report"),
        md=f"{RESULTS}/report.md",
        overlay=report(f"{RESULTS}/eval/deeplab_{SPLITS['val']}_overlay.png", caption="../report/overlay.rst",
                       category="DeepLab", labels={"split": SPLITS["val"], "trained on": "pseudo and gt",
                                                   "figure": "overlays"}),
    params:
        classes=config["classes"],
        # The report prints the whole config, so any config change makes it stale (a cheap rule).
        config=config,
        benchmarks=f"{RESULTS}/benchmarks",
        logs=f"{RESULTS}/logs",  # each job's device line: the device each GPU rule ran on
        overlay_images=config["report"]["overlay_images"],
        pseudo_eval=SPLITS["pseudo_eval"],
        val=SPLITS["val"],
        data=lambda wc: data_version(SPLITS["val"], "images", "masks"),
        code=code_version("report"),
    log:
        log_path("report"),
    benchmark:
        bench_path("report")
    script:
        "../scripts/report.py"
