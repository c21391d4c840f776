"""Rule train_deeplab: DeepLabV3 on pseudo masks or on GT masks (the fully supervised bound)."""

from pathlib import Path

from locseg.logs import log_to
from locseg.resume import TrainState
from locseg.retrain import train_deeplab
from locseg.sources import gt_paths, image_paths
from locseg.config import config_hash
from locseg.runtime import set_threads

with log_to(snakemake.log[0]):
    workers = set_threads(snakemake.threads, snakemake.config["num_workers"])
    cfg, split, labels = snakemake.config, snakemake.params.split, snakemake.wildcards.labels
    images = image_paths(cfg, split, snakemake.input.split)
    if labels == "pseudo":
        masks = {i: Path(snakemake.input.masks) / f"{i}.png" for i in images}
    else:
        masks = gt_paths(cfg, snakemake.input.split)
    state = TrainState(snakemake.params.resume, dict(snakemake.params.items()), snakemake.input)
    train_deeplab(
        images, masks, snakemake.params.classes, snakemake.output.model,
        **snakemake.params.train,
        seed=snakemake.params.seed, device=cfg["device"], num_workers=workers, resume=state,
        tensorboard_dir=snakemake.params.tensorboard,
        meta={"labels": labels, "split": split, "config_hash": config_hash(snakemake.params.train)},
    )
    state.remove()  # the checkpoint is written
