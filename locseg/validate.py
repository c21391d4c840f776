"""Dataset checks before a long run: every problem of a VOC (and optional COCO) tree, one message each.

A missing or broken file found hours into a run wastes the run; found here, all of them are reported at
once so one pass over the data fixes everything. Used by `locseg validate-dataset`; returns messages
rather than raising so a Snakemake rule (or a test) can use it too.
"""

from __future__ import annotations

from pathlib import Path

from locseg.data.voc import VOC_CLASSES, VocLayout, image_size, read_image, read_mask, read_split
from locseg.fsutil import read_json


def validate_voc(layout: VocLayout, splits: list[str] | None = None, num_classes: int = len(VOC_CLASSES),
                 masks: bool = True) -> tuple[list[str], dict[str, int]]:
    """(problems, images checked per split). `splits=None` checks every list in the split directory."""
    problems: list[str] = []
    counts: dict[str, int] = {}
    root = Path(layout.root)
    if not root.is_dir():
        return [f"{root}: dataset root not found"], counts
    for d in (layout.image_dir, *((layout.mask_dir,) if masks else ())):
        if not (root / d).is_dir():
            problems.append(f"{root / d}: directory not found")
    if splits is None:
        split_dir = root / layout.split_dir
        splits = sorted(p.stem for p in split_dir.glob("*.txt")) if split_dir.is_dir() else []
        if not splits:
            problems.append(f"{split_dir}: no split lists (<split>.txt) found")
    for split in splits:
        split_file = layout.split_file(split)
        try:
            ids = read_split(split_file)
        except (FileNotFoundError, ValueError) as e:
            problems.append(str(e))
            continue
        counts[split] = len(ids)
        for image_id in ids:
            problems += [f"{split_file} [{image_id}]: {p}" for p in _check_pair(layout, image_id, num_classes, masks)]
    return problems, counts


def _check_pair(layout: VocLayout, image_id: str, num_classes: int, masks: bool) -> list[str]:
    """Image decodes fully (a truncated JPEG fails here); the mask is an index PNG of its size and range."""
    try:
        hw = read_image(layout.image_path(image_id)).shape[:2]
    except (FileNotFoundError, ValueError) as e:
        hw, image_problem = None, [str(e)]
    else:
        image_problem = []
    if not masks:
        return image_problem
    try:
        read_mask(layout.mask_path(image_id), num_classes, hw)
    except (FileNotFoundError, ValueError) as e:
        return image_problem + [str(e)]
    return image_problem


def validate_coco(annotations, image_dir) -> tuple[list[str], int]:
    """(problems, images listed): the JSON parses as a COCO instances file and its images are on disk."""
    from locseg.data.coco import CocoSplit

    annotations = Path(annotations)
    try:
        data = read_json(annotations)
    except (FileNotFoundError, ValueError) as e:
        return [str(e)], 0
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        return [f"{annotations}: not a COCO instances file (no 'categories' list)"], 0
    try:
        names = sorted({str(c["name"]) for c in data["categories"]})
        # Identity map: every category is a class, so every annotated image is checked.
        split = CocoSplit(annotations, image_dir, {n: n for n in names}, ["background", *names])
    except (KeyError, TypeError, ValueError) as e:
        return [f"{annotations}: not a usable COCO instances file ({e})"], 0
    problems = [p for found in split.annotation_problems().values() for p in found]
    if not Path(image_dir).is_dir():
        problems.append(f"{image_dir}: COCO image directory not found")
    return problems + split.check_images(), len(split.ids)


def gate_splits(layout: VocLayout, splits: list[str], num_classes: int, coco=None,
                on_bad_image: str = "fail") -> tuple[dict[str, list[str]], dict]:
    """The DAG's first step: check every image (and GT mask) of the configured splits, and every COCO
    annotation, once.

    Returns (ids that passed per split, report). With on_bad_image 'fail' any problem raises, listing all
    of them; with 'skip' bad ids are left out of the lists and named in the report. A split left empty
    always raises. `coco` (a CocoSplit) adds the external split under the name 'coco'; a COCO image with
    a bad annotation is skipped whole (its region is never silently made background).
    """
    if on_bad_image not in ("fail", "skip"):
        raise ValueError(f"on_bad_image must be 'fail' or 'skip', got {on_bad_image!r}")
    kept, skipped, problems = {}, {}, []
    for split in splits:
        split_file = layout.split_file(split)
        kept[split], skipped[split] = [], []
        for image_id in read_split(split_file):
            found = _check_pair(layout, image_id, num_classes, masks=True)
            problems += [f"{split_file} [{image_id}]: {p}" for p in found]
            (skipped if found else kept)[split].append(image_id)
    if coco is not None:
        kept["coco"], skipped["coco"] = [], []
        bad_annotations = coco.annotation_problems()
        # Bad annotations of images no stage uses (or of ids with no image) have nothing to skip: listed only.
        used = set(coco.ids)
        problems += [p for image_id, found in bad_annotations.items() if image_id not in used for p in found]
        for image_id in coco.ids:
            found = bad_annotations.get(image_id, []) + [
                f"{coco.annotation_file} [{image_id}]: {p}" for p in _check_external(coco, image_id)]
            problems += found
            (skipped if found else kept)["coco"].append(image_id)
    if problems and on_bad_image == "fail":
        raise ValueError(f"{len(problems)} dataset problem(s) (set on_bad_image: skip to leave such images "
                         "out):\n" + "\n".join(problems))
    empty = [s for s, ids in kept.items() if not ids]
    if empty:
        raise ValueError(f"no usable image left in split(s) {empty}:\n" + "\n".join(problems))
    return kept, {"problems": problems, "skipped": skipped, "kept": {s: len(v) for s, v in kept.items()}}


def _check_external(coco, image_id: str) -> list[str]:
    """Header only (COCO has 118k images): the file opens and has the size its annotations assume."""
    try:
        hw = image_size(coco.image_path(image_id))
    except (FileNotFoundError, ValueError) as e:
        return [str(e)]
    return [] if hw == coco.size(image_id) else [f"image is {hw[0]}x{hw[1]}, annotations say "
                                                  f"{coco.size(image_id)[0]}x{coco.size(image_id)[1]}"]
