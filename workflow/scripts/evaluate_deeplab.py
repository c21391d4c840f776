"""Rule evaluate_deeplab: predictions and metrics of one DeepLab model on one split."""

from locseg.evaluate import evaluate_deeplab
from locseg.logs import log_to
from locseg.sources import gt_paths, image_paths
from locseg.runtime import set_threads

with log_to(snakemake.log[0]):
    set_threads(snakemake.threads)
    cfg, split = snakemake.config, snakemake.wildcards.split
    evaluate_deeplab(
        snakemake.input.model, image_paths(cfg, split, snakemake.input.split), gt_paths(cfg, snakemake.input.split),
        snakemake.params.classes, split,
        snakemake.output.json, snakemake.output.per_class, snakemake.output.predictions,
        scales=snakemake.params.infer["eval_scales"], flip=snakemake.params.infer["eval_flip"],
        device=cfg["device"],
    )
