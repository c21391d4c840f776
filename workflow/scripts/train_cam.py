"""Rule train_cam: the multi-label CAM classifier."""

from locseg.cam import train_cam
from locseg.logs import log_to
from locseg.sources import image_labels, image_paths
from locseg.train import config_hash, set_threads

with log_to(snakemake.log[0]):
    set_threads(snakemake.threads)
    cfg, split = snakemake.config, snakemake.params.split
    train_cam(
        image_paths(cfg, split),
        image_labels(cfg, split, snakemake.input.labels),
        cfg["classes"],
        snakemake.output.model,
        **snakemake.params.train,
        seed=snakemake.params.seed,
        device=cfg["device"],
        num_workers=cfg["num_workers"],
        meta={"split": split, "config_hash": config_hash(snakemake.params.train)},
    )
