"""Rule eval_cams: the CAM-only baseline over a background-threshold sweep."""

from locseg.evaluate import eval_cams
from locseg.logs import log_to
from locseg.sources import gt_paths

with log_to(snakemake.log[0]):
    cfg, split = snakemake.config, snakemake.wildcards.split
    eval_cams(list(snakemake.input.cams), gt_paths(cfg, snakemake.input.split), snakemake.params.classes, split,
              snakemake.output.json, snakemake.output.curve, thresholds=snakemake.params.thresholds)
