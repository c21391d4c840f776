"""Rule train_segmenter: the class-agnostic segmenter on COCO-layout masks."""

from locseg.logs import log_to
from locseg.resume import TrainState
from locseg.reseg import train_segmenter
from locseg.sources import coco_split
from locseg.config import config_hash
from locseg.runtime import set_threads

with log_to(snakemake.log[0]):
    workers = set_threads(snakemake.threads, snakemake.config["num_workers"])
    cfg = snakemake.config
    params = dict(snakemake.params.train)
    params.pop("cue")  # the cue is decided by which stores come in
    state = TrainState(snakemake.params.resume, dict(snakemake.params.items()), snakemake.input)
    train_segmenter(
        coco_split(cfg, snakemake.input.split),
        list(snakemake.input.cams) or None,
        snakemake.params.classes,
        snakemake.output.model,
        **params,
        seed=snakemake.params.seed, device=cfg["device"], num_workers=workers, resume=state,
        tensorboard_dir=snakemake.params.tensorboard,
        meta={"config_hash": config_hash(snakemake.params.train)},
    )
    state.remove()  # the checkpoint is written
