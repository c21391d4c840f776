"""Rule export_masks: label assembly into one palette PNG per image."""

from locseg.logs import log_to
from locseg.masks import export_masks

with log_to(snakemake.log[0]):
    export_masks(list(snakemake.input.probs), snakemake.params.classes, snakemake.output.masks,
                 **snakemake.params.assemble)
