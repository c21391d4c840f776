"""Rule export_deeplab_pytorch: pseudo masks in the layout deeplab-pytorch reads."""

from locseg.masks import export_deeplab_pytorch
from locseg.logs import log_to
from locseg.sources import image_paths

with log_to(snakemake.log[0]):
    export_deeplab_pytorch(snakemake.input.masks,
                           image_paths(snakemake.config, snakemake.params.split, snakemake.input.split),
                           len(snakemake.params.classes), snakemake.output.root)
