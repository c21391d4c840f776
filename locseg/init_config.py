"""`locseg init-config`: a complete, commented config for your own VOC-layout tree and COCO-layout file.

What the data decides is read from it: the mask directory and split lists present, the classes (PASCAL
VOC's names when the masks hold exactly its 21 indices, otherwise the names you give, checked against the
largest index in the masks), and a COCO category -> class map proposed from matching names. Everything else
comes from a base config (the paper's setting by default). Comments are the schema's descriptions, so the
file explains itself and says what the workflow checks. A complete config must be run alone
(`--replace-workflow-config`): merged into the demo default, the demo's category map would survive.
"""

from __future__ import annotations

import copy
import json
import re
import textwrap
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from locseg.data.voc import IGNORE, VOC_CLASSES, VocLayout, read_split
from locseg.fsutil import atomic_path

MASK_DIRS = ("SegmentationClassAug", "SegmentationClass")  # SBD's augmented GT first, as papers train on it
# Split keys -> split lists to try after the base config's own choice, in order.
SPLIT_FALLBACKS = {"cam": ("train_aug", "train"), "pseudo": ("train_aug", "train"), "pseudo_eval": ("train",),
                   "val": ("val",)}
_WIDTH = 100


class InitConfigError(ValueError):
    pass


def run_command(out) -> str:
    """The one command that runs a config written here (documented in README and printed by the CLI)."""
    return f"snakemake --cores 8 --configfile {out} --replace-workflow-config"


def _norm(name: str) -> str:
    return re.sub(r"[\s_-]+", "", name.lower())


def propose_category_map(categories: list[str], classes: list[str], known: dict[str, str]
                         ) -> tuple[dict[str, str], list[str]]:
    """COCO category -> class where the names match (case, spaces, '_' and '-' aside) or `known` maps it to
    one of the classes; returns the map and the categories left unmapped."""
    by_norm = {_norm(c): c for c in classes[1:]}
    mapping, unmatched = {}, []
    for cat in categories:
        cls = by_norm.get(_norm(cat)) or (known.get(cat) if known.get(cat) in classes[1:] else None)
        if cls:
            mapping[cat] = cls
        else:
            unmatched.append(cat)
    return mapping, unmatched


def max_mask_index(layout: VocLayout, ids: list[str]) -> int:
    """The largest class index (255 = ignore aside) in the GT masks of these ids."""
    top = 0
    for image_id in ids:
        path = layout.mask_path(image_id)
        if not path.is_file():
            raise InitConfigError(f"{path}: GT mask of {image_id!r} not found")
        with Image.open(path) as img:
            values = np.unique(np.asarray(img))
        values = values[values != IGNORE]
        if values.size:
            top = max(top, int(values.max()))
    return top


def choose_classes(given: list[str] | None, max_index: int, mask_dir: Path) -> list[str]:
    if given is None:
        if max_index == len(VOC_CLASSES) - 1:
            return list(VOC_CLASSES)
        raise InitConfigError(f"{mask_dir}: the masks hold class indices 0..{max_index}; name them with --classes "
                              f"(background first, then {max_index} object classes in index order)")
    classes = given if given[:1] == ["background"] else ["background", *given]
    if len(classes) <= max_index:
        raise InitConfigError(f"{mask_dir}: the masks hold class index {max_index}, but --classes names only "
                              f"{len(classes)} classes (0..{len(classes) - 1}, background included)")
    return classes


def choose_splits(available: set[str], base: dict[str, str], split_dir: Path) -> dict[str, str]:
    splits = {}
    for key, fallbacks in SPLIT_FALLBACKS.items():
        found = [s for s in (base.get(key), *fallbacks) if s in available]
        if not found:
            raise InitConfigError(f"{split_dir}: no split list for dataset.splits.{key} "
                                  f"(looked for {', '.join(f'{s}.txt' for s in fallbacks)})")
        splits[key] = found[0]
    return splits


def coco_categories(annotations: Path) -> list[str]:
    try:
        data = json.loads(Path(annotations).read_text())
        return [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise InitConfigError(f"{annotations}: not a readable COCO instances file ({e})") from None


def build_config(base: dict, voc_root, coco_images, coco_annotations, classes: list[str] | None = None
                 ) -> tuple[dict, list[str]]:
    """The config for this data (base values elsewhere) and the COCO categories left out of the map."""
    # Absolute: the config may be run from another directory than the one it was written in.
    voc_root, coco_images, coco_annotations = (Path(p).resolve() for p in (voc_root, coco_images, coco_annotations))
    for path in (voc_root, coco_images):
        if not path.is_dir():
            raise InitConfigError(f"{path}: directory not found")
    ds = base["dataset"]
    mask_dir = next((d for d in MASK_DIRS if (voc_root / d).is_dir()), None)
    if mask_dir is None:
        raise InitConfigError(f"{voc_root}: no GT mask directory ({' or '.join(MASK_DIRS)})")
    layout = VocLayout(voc_root, ds["image_dir"], mask_dir, ds["split_dir"])
    split_dir = voc_root / ds["split_dir"]
    splits = choose_splits({p.stem for p in split_dir.glob("*.txt")}, ds["splits"], split_dir)
    ids = sorted({i for s in set(splits.values()) for i in read_split(layout.split_file(s))})
    classes = choose_classes(classes, max_mask_index(layout, ids), voc_root / mask_dir)
    category_map, unmatched = propose_category_map(coco_categories(coco_annotations), classes,
                                                   base["coco"]["category_map"])
    config = copy.deepcopy(base)
    config["demo"]["enabled"] = False
    config["classes"] = classes
    config["dataset"].update(root=str(voc_root), mask_dir=mask_dir, splits=splits)
    config["coco"] = {"image_dir": str(coco_images), "annotations": str(coco_annotations),
                      "category_map": category_map}
    return config, unmatched


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**9).removesuffix("\n...\n").strip()


def _comment(text: str, indent: str) -> list[str]:
    return textwrap.wrap(text, _WIDTH, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")


def _resolve(schema: dict, node: dict) -> dict:
    ref = node.get("$ref", "")
    return {**schema["$defs"][ref.split("/")[-1]], **node} if ref.startswith("#/$defs/") else node


def render(config: dict, schema: dict, notes: dict[str, list[str]] | None = None) -> str:
    """YAML of config in the schema's key order, each key under its schema description; `notes` adds
    comment lines at the end of a mapping, by dotted key."""
    notes = notes or {}

    def emit(values: dict, props: dict, indent: str, where: str) -> list[str]:
        lines = []
        for key in [*[k for k in props if k in values], *[k for k in values if k not in props]]:
            node = _resolve(schema, props.get(key, {}))
            value = values[key]
            lines += _comment(node["description"], indent) if node.get("description") else []
            if isinstance(value, dict) and value:
                lines.append(f"{indent}{_flow(key)}:")
                lines += emit(value, node.get("properties", {}), indent + "  ", f"{where}{key}.")
            elif isinstance(value, list) and len(indent) + len(key) + len(_flow(value)) > _WIDTH:
                lines += [f"{indent}{_flow(key)}:"] + [f"{indent}  - {_flow(v)}" for v in value]
            else:
                lines.append(f"{indent}{_flow(key)}: {_flow(value)}")
            for note in notes.get(f"{where}{key}", []):
                lines += _comment(note, indent + "  ")
        return lines

    return "\n".join(emit(config, schema["properties"], "", "")) + "\n"


def write_config(out, config: dict, schema: dict, unmatched: list[str], header: list[str]) -> None:
    notes = {}
    if unmatched:
        notes["coco.category_map"] = [
            "COCO categories whose names match no class, left out (their objects are not used); map one "
            f"to a class by adding '<category>: <class>' above: {', '.join(unmatched)}"]
    text = "".join(f"# {line}\n" for line in header) + "\n" + render(config, schema, notes)
    yaml.safe_load(text)  # what we write must read back
    with atomic_path(out) as tmp:
        tmp.write_text(text)


def init_config(out, voc_root, coco_images, coco_annotations, *, base_path, schema_path,
                classes: list[str] | None = None) -> tuple[dict, list[str]]:
    """Write the config for this data to `out`; returns it and the unmapped COCO categories."""
    base = yaml.safe_load(Path(base_path).read_text())
    schema = yaml.safe_load(Path(schema_path).read_text())
    config, unmatched = build_config(base, voc_root, coco_images, coco_annotations, classes)
    header = [
        f"locseg config for {voc_root} and {coco_annotations}, written by `locseg init-config`.",
        "Read from the data: dataset.root/mask_dir/splits, classes and coco.*; everything else from "
        f"{base_path}.",
        "Complete: run it alone (merged into the demo default, the demo's category map would survive):",
        f"  {run_command(out)}",
    ]
    write_config(out, config, schema, unmatched, header)
    return config, unmatched
