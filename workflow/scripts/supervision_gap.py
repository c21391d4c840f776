"""Rule supervision_gap: mIoU(pseudo) / mIoU(gt) on one split."""

from locseg.evaluate import supervision_gap
from locseg.logs import log_to

with log_to(snakemake.log[0]):
    supervision_gap(snakemake.input.pseudo, snakemake.input.gt, snakemake.output.json)
