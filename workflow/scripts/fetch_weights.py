"""Rule fetch_weights: one backbone's ImageNet weights into torch's cache (a no-op when already there)."""

from locseg.fsutil import write_json
from locseg.logs import log_to
from locseg.weights import fetch

with log_to(snakemake.log[0]):
    backbone = snakemake.wildcards.backbone
    write_json(snakemake.output.note, {"backbone": backbone, "path": str(fetch(backbone))})
