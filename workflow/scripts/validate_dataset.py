"""Rule validate_dataset: check the dataset once, write the lists of usable ids per split."""

from pathlib import Path

from locseg.fsutil import atomic_path, write_json
from locseg.logs import log_to
from locseg.sources import EXTERNAL, coco_split, voc_layout
from locseg.validate import gate_splits

with log_to(snakemake.log[0]):
    cfg = snakemake.config
    splits = [Path(p).stem for p in snakemake.output.splits]
    kept, report = gate_splits(voc_layout(cfg), [s for s in splits if s != EXTERNAL], len(snakemake.params.classes),
                               coco_split(cfg), snakemake.params.on_bad_image)
    for path in snakemake.output.splits:
        with atomic_path(path) as tmp:
            tmp.write_text("".join(f"{i}\n" for i in kept[Path(path).stem]))
    write_json(snakemake.output.report, report)
