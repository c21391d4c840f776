"""Rule evaluate_masks: pseudo masks vs GT, per round, with plots and overlays."""

from locseg.evaluate import evaluate_masks
from locseg.logs import log_to
from locseg.sources import gt_paths, image_paths

with log_to(snakemake.log[0]):
    cfg, split = snakemake.config, snakemake.wildcards.split
    evaluate_masks(
        snakemake.input.masks, image_paths(cfg, split, snakemake.input.split), gt_paths(cfg, snakemake.input.split),
        snakemake.params.classes, split,
        snakemake.output.json, snakemake.output.per_class, snakemake.output.overlay,
        prob_store_paths=list(snakemake.input.probs), cam_store_paths=list(snakemake.input.cams),
        cam_baseline=snakemake.input.cam_baseline, n_overlay=snakemake.params.overlay_images,
        **snakemake.params.assemble,
    )
