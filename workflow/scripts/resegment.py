"""Rule resegment: CAMs of one shard through the segmenter (or SAM), round after round."""

from locseg.batching import speed_settings
from locseg.logs import log_to
from locseg.reseg import resegment
from locseg.sources import image_paths
from locseg.runtime import set_threads
from locseg.weights import sam_checkpoint

with log_to(snakemake.log[0]):
    workers = set_threads(snakemake.threads, snakemake.config["inference"]["workers"])
    cfg = snakemake.config
    sam = snakemake.params.sam
    resegment(
        snakemake.input.model if sam is None else sam_checkpoint(sam["model"], sam["checkpoint"]),
        snakemake.input.cams,
        image_paths(cfg, snakemake.wildcards.split, snakemake.input.split),
        snakemake.params.classes,
        snakemake.output.store,
        **snakemake.params.reseg,
        canvas=snakemake.params.canvas,
        device=cfg["device"],
        config={"reseg": cfg["reseg"], "segmenter": cfg["segmenter"], "split": snakemake.wildcards.split,
                "canvas": snakemake.params.canvas},
        **{**speed_settings(cfg), "workers": workers},  # speed only: never changes what is written
        sam=sam,
    )
