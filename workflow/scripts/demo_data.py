"""Rule demo_data: write the synthetic VOC/COCO-layout dataset."""

from locseg.data.demo import generate
from locseg.logs import log_to

with log_to(snakemake.log[0]):
    generate(snakemake.params.out, seed=snakemake.params.seed, size=snakemake.params.size)
