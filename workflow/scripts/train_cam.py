"""Rule train_cam: the multi-label CAM classifier (trained, or taken as released from a weights file)."""

from locseg.cam import cam_from_weights, train_cam
from locseg.logs import log_to
from locseg.resume import TrainState
from locseg.sources import images_and_labels
from locseg.config import config_hash
from locseg.runtime import set_threads

with log_to(snakemake.log[0]):
    workers = set_threads(snakemake.threads, snakemake.config["num_workers"])
    cfg, split, params = snakemake.config, snakemake.params.split, snakemake.params.train
    meta = {"split": split, "config_hash": config_hash(params)}
    if snakemake.params.source == "weights":
        cam_from_weights(snakemake.params.classes, snakemake.output.model, backbone=params["backbone"],
                         weights=params["weights"], output_stride=params["output_stride"], meta=meta)
    else:
        state = TrainState(snakemake.params.resume, dict(snakemake.params.items()), snakemake.input)
        train_cam(
            *images_and_labels(cfg, split, snakemake.input.split, snakemake.input.labels),
            snakemake.params.classes,
            snakemake.output.model,
            **params,
            seed=snakemake.params.seed, device=cfg["device"], num_workers=workers, resume=state,
            tensorboard_dir=snakemake.params.tensorboard,
            meta=meta,
        )
        state.remove()  # the checkpoint is written
