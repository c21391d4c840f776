"""Rule extract_cams: CAMs of one shard of one split into the HDF5 store (or imported from .npy)."""

from locseg.batching import speed_settings
from locseg.cam import extract_cams
from locseg.logs import log_to
from locseg.shards import shard_ids
from locseg.sources import image_paths, images_and_labels
from locseg.store import import_npy
from locseg.runtime import set_threads

with log_to(snakemake.log[0]):
    workers = set_threads(snakemake.threads, snakemake.config["inference"]["workers"])
    cfg, split, imported = snakemake.config, snakemake.wildcards.split, snakemake.params.imported
    if imported:
        paths = image_paths(cfg, split, snakemake.input.split)
    else:
        paths, labels = images_and_labels(cfg, split, snakemake.input.split, snakemake.input.get("labels"))
    ids = shard_ids(list(paths), int(snakemake.wildcards.shard), snakemake.params.shards)
    config = {"cam": cfg["cam"], "seed": cfg["seed"], "split": split}
    if imported:
        import_npy(cfg["cam"]["import_dir"], ids, snakemake.output.store, snakemake.params.classes,
                   allow_pickle=cfg["cam"]["allow_pickle"], config=config)
    else:
        extract_cams(
            snakemake.input.model,
            paths,
            labels,
            ids,
            snakemake.params.classes,
            snakemake.output.store,
            **snakemake.params.infer,
            canvas=snakemake.params.canvas,
            device=cfg["device"],
            config={**config, "canvas": snakemake.params.canvas},
            **{**speed_settings(cfg), "workers": workers},  # speed only: never changes what is written
        )
