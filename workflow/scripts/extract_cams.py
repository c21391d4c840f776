"""Rule extract_cams: CAMs of one shard of one split into the HDF5 store."""

from locseg.cam import extract_cams
from locseg.logs import log_to
from locseg.shards import shard_ids
from locseg.sources import image_labels, image_paths
from locseg.train import set_threads

with log_to(snakemake.log[0]):
    set_threads(snakemake.threads)
    cfg, split = snakemake.config, snakemake.wildcards.split
    paths = image_paths(cfg, split)
    extract_cams(
        snakemake.input.model,
        paths,
        image_labels(cfg, split, snakemake.input.get("labels")),
        shard_ids(list(paths), int(snakemake.wildcards.shard), snakemake.params.shards),
        cfg["classes"],
        snakemake.output.store,
        **snakemake.params.infer,
        device=cfg["device"],
        config={"cam": cfg["cam"], "seed": cfg["seed"], "split": split},
    )
