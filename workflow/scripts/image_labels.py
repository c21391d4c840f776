"""Rule image_labels: present classes per image of one split."""

from locseg.data.labels import labels_from_masks, read_labels_file, write_labels
from locseg.logs import log_to
from locseg.data.voc import read_split
from locseg.sources import voc_layout

with log_to(snakemake.log[0]):
    classes = snakemake.params.classes
    layout = voc_layout(snakemake.config)
    ids = read_split(snakemake.input.split)
    if snakemake.input.labels_file:
        labels = read_labels_file(snakemake.input.labels_file[0], ids, len(classes),
                                  allow_pickle=snakemake.params.allow_pickle)
    else:
        labels = labels_from_masks(layout, ids, len(classes))
    write_labels(snakemake.output.json, labels, classes)
