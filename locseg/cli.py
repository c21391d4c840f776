"""`locseg`: look into stores, look at one image, convert IRN/SEAM CAMs, check a dataset or a machine before a run,
compare two runs.

Expected failures (a missing file, a bad store, a wrong id) end with one line on stderr and exit code 1;
usage errors exit 2 (argparse). Tracebacks are kept for real bugs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import locseg
from locseg.config import SCHEMA

DEFAULT_CONFIG = "config/config.yaml"
# init-config's default base: the paper setting of a source checkout (pass --base from an installed wheel).
PAPER_CONFIG = Path(locseg.__file__).resolve().parents[1] / "config" / "voc12_coco.yaml"


class UsageError(Exception):
    """A wrong combination of arguments that argparse cannot express; exits 2 like argparse's own."""


def _load_config(path) -> dict:
    from locseg.config import load_config

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: config file not found")
    return load_config(path, SCHEMA)


# --------------------------------------------------------------------------- info


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _summarise_config(config: dict, width: int = 100) -> list[str]:
    lines = []
    for key, value in config.items():
        if isinstance(value, dict):
            text = ", ".join(f"{k}={json.dumps(v)}" for k, v in value.items())
        else:
            text = json.dumps(value)
        lines.append(f"  {key}: {text if len(text) <= width else text[:width - 3] + '...'}")
    return lines or ["  (empty)"]


def cmd_info(args) -> int:
    import h5py

    from locseg.store import StoreReader
    from locseg.config import config_hash

    path = Path(args.store)
    with StoreReader(path) as reader:
        a = reader.attrs
        heights, widths, maps = [], [], []
        with h5py.File(path, "r") as f:  # shapes only: no map is decompressed
            for image_id in reader.ids:
                k, h, w = f[image_id]["maps"].shape
                heights.append(h)
                widths.append(w)
                maps.append(k)
    out = [
        f"file:         {path} ({_human(path.stat().st_size)})",
        f"format:       {a['format']} version {a['version']}",
        f"kind:         {a['kind']}",
        f"classes ({len(a['class_names'])}):  {', '.join(a['class_names'])}",
        f"images:       {len(heights)}",
    ]
    if heights:
        out += [f"map size:     H {min(heights)}..{max(heights)}, W {min(widths)}..{max(widths)}",
                f"maps:         {sum(maps)} in all, {min(maps)}..{max(maps)} per image"]
    out += [
        f"model sha256: {a['model_sha256'] or 'n/a'}",
        f"scales:       {', '.join(f'{s:g}' for s in a['scales']) or 'n/a'}",
        f"config (hash {config_hash(a['config'])}):",
        *_summarise_config(a["config"]),
    ]
    print("\n".join(out))
    return 0


# --------------------------------------------------------------------------- show


def _find_in_stores(paths: list[Path], image_id: str) -> Path | None:
    from locseg.store import StoreReader

    for p in paths:
        with StoreReader(p) as r:  # opening reads attributes and the id list only
            if image_id in r:
                return p
    return None


def cmd_show(args) -> int:
    from locseg import viz
    from locseg.data.voc import read_image, read_mask
    from locseg.overlays import cam_panel
    from locseg.sources import voc_layout
    from locseg.store import StoreReader

    config = _load_config(args.config)
    n = len(config["classes"])
    layout = voc_layout(config)
    image_id = args.image
    results = Path(args.results if args.results is not None else config["outdir"])
    image = read_image(layout.image_path(image_id))
    hw = image.shape[:2]
    titles, panels, missing = ["image"], [image], []

    def add_mask(title: str, path: Path):
        if path.is_file():
            titles.append(title)
            panels.append(viz.blend(image, read_mask(path, n, hw)))
        else:
            missing.append(f"{title} ({path})")

    add_mask("ground truth", layout.mask_path(image_id))
    cam_dir = results / "cams" / args.split
    store = _find_in_stores(sorted(cam_dir.glob("*.h5")), image_id)
    if store is not None:
        with StoreReader(store, kind="cam") as r:
            maps, _ = r.read(image_id)
        titles.append("CAM (max over classes)")
        panels.append(cam_panel(image, maps))
    else:
        missing.append(f"CAM ({cam_dir}/*.h5)")
    add_mask("pseudo mask", results / "masks" / args.split / f"{image_id}.png")
    for labels in ("pseudo", "gt"):
        pred = results / "predictions" / f"deeplab_{labels}" / args.split / f"{image_id}.png"
        if pred.is_file():  # DeepLab is scored on val only: not finding it elsewhere is normal
            add_mask(f"DeepLab ({labels} labels)", pred)
    out = Path(args.out) if args.out else Path(f"{image_id}_{args.split}.png")
    viz.save_grid(out, [panels], titles, [image_id])
    print(f"{out}: {' | '.join(titles)}")
    if missing:
        print(f"not found for {image_id!r}: {'; '.join(missing)}")
    return 0


# --------------------------------------------------------------------------- import / export


def cmd_import_npy(args) -> int:
    from locseg.data.voc import read_split
    from locseg.store import import_npy

    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    elif args.config:
        classes = _load_config(args.config)["classes"]
    else:
        raise UsageError("give the class names: --classes background,a,b,... or --config CONFIG.yaml")
    if not args.allow_pickle:
        raise UsageError("IRN/SEAM .npy CAM files are pickled dicts and unpickling can run code: "
                         "pass --allow-pickle if you trust them")
    if not Path(args.npy_dir).is_dir():
        raise FileNotFoundError(f"{args.npy_dir}: directory not found")
    ids = read_split(args.ids)
    import_npy(args.npy_dir, ids, args.out, classes, allow_pickle=True,
               config={"imported_from": str(Path(args.npy_dir).resolve()), "ids": str(args.ids)})
    print(f"{args.out}: {len(ids)} images, classes {', '.join(classes)}")
    return 0


def cmd_export_npy(args) -> int:
    from locseg.store import ShardedStore, export_npy

    with ShardedStore(args.stores) as s:
        n = len(s)
    export_npy(args.stores, args.out, style=args.style)
    print(f"{args.out}: {n} {args.style}-style .npy files")
    return 0


# --------------------------------------------------------------------------- validate-dataset


def cmd_validate_dataset(args) -> int:
    from locseg.data.voc import VocLayout
    from locseg.validate import validate_coco, validate_voc

    if (args.coco_annotations is None) != (args.coco_images is None):
        raise UsageError("--coco-annotations and --coco-images go together")
    if args.classes < 2:
        raise UsageError(f"--classes must be at least 2 (background + one class), got {args.classes}")
    layout = VocLayout(Path(args.root), args.image_dir, args.mask_dir, args.split_dir)
    problems, counts = validate_voc(layout, args.split, args.classes, masks=not args.no_masks)
    coco_n = None
    if args.coco_annotations is not None:
        coco_problems, coco_n = validate_coco(args.coco_annotations, args.coco_images)
        problems += coco_problems
    if problems:
        for p in problems:
            print(p)
        print(f"{len(problems)} problem(s) in {args.root}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{s} {n}" for s, n in counts.items())
    coco = f"; COCO: {coco_n} annotated images found" if coco_n is not None else ""
    print(f"OK: {args.root}: {sum(counts.values())} images with masks ({summary}){coco}")
    return 0


# --------------------------------------------------------------------------- doctor


def cmd_doctor(args) -> int:
    from locseg.doctor import FAIL, diagnose, render

    findings = diagnose(args.configfile, SCHEMA)
    print(render(findings))
    return 1 if any(level == FAIL for level, _ in findings) else 0


# --------------------------------------------------------------------------- compare


def cmd_compare(args) -> int:
    from locseg.report import compare_reports

    print(compare_reports(args.run_a, args.run_b), end="")
    return 0


# --------------------------------------------------------------------------- init-config


def cmd_init_config(args) -> int:
    from locseg.init_config import init_config, run_command

    base = args.base or PAPER_CONFIG
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    config, unmatched = init_config(args.out, args.voc_root, args.coco_images, args.coco_annotations,
                                    base_path=base, schema_path=SCHEMA, classes=classes)
    mapped = config["coco"]["category_map"]
    print(f"wrote {args.out}: {len(config['classes'])} classes, splits {config['dataset']['splits']}, "
          f"{len(mapped)} COCO categories mapped" + (f", {len(unmatched)} left out" if unmatched else ""))
    if not mapped:
        print(f"no COCO category name matches a class: map some in coco.category_map of {args.out}", file=sys.stderr)
    print(f"run it with:\n  {run_command(args.out)}")
    return 0


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="locseg", description=__doc__.splitlines()[0].replace("`", ""))
    p.add_argument("--version", action="version", version=f"locseg {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("info", help="what a CAM / probability store holds",
                       description="Format, kind, classes, images, map sizes and provenance of one store file.")
    s.add_argument("store", metavar="STORE.h5")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("show", help="overlay PNG of one image: image | GT | CAM | pseudo mask | DeepLab",
                       description="Find one image's CAM, pseudo mask and DeepLab predictions under a results "
                                   "directory and write them side by side as one PNG.")
    s.add_argument("--image", required=True, metavar="ID", help="image id (file name without extension)")
    s.add_argument("--results", metavar="DIR", help="results directory of a run (default: the config's outdir)")
    s.add_argument("--split", default="train", help="split the image belongs to (default: %(default)s)")
    s.add_argument("--out", metavar="PNG", help="output file (default: <id>_<split>.png)")
    s.add_argument("--config", default=DEFAULT_CONFIG, help="config giving the dataset paths (default: %(default)s)")
    s.set_defaults(func=cmd_show)

    s = sub.add_parser("import-npy", help="IRN/SEAM per-image CAM .npy files -> one store",
                       description="Build a kind='cam' store from IRN-style {'keys','high_res'} or SEAM-style "
                                   "{class index: HxW} .npy dicts (project class = saved key + 1).")
    s.add_argument("npy_dir", metavar="NPY_DIR")
    s.add_argument("--ids", required=True, metavar="SPLIT.txt", help="split list of the image ids to import")
    s.add_argument("--out", required=True, metavar="STORE.h5")
    s.add_argument("--classes", metavar="NAMES", help="comma-separated class names, background first")
    s.add_argument("--config", help="take the class names from this config instead of --classes")
    s.add_argument("--allow-pickle", action="store_true",
                   help="required: the .npy files are pickles, only load files you trust")
    s.set_defaults(func=cmd_import_npy)

    s = sub.add_parser("export-npy", help="store(s) -> IRN/SEAM per-image CAM .npy files",
                       description="Write one <id>.npy CAM dict per image for IRN or SEAM/PSA code.")
    s.add_argument("stores", nargs="+", metavar="STORE.h5")
    s.add_argument("--out", required=True, metavar="DIR")
    s.add_argument("--style", choices=("irn", "seam"), default="irn", help="dict layout (default: %(default)s)")
    s.set_defaults(func=cmd_export_npy)

    s = sub.add_parser("validate-dataset", help="check a VOC (and COCO) tree, listing every problem",
                       description="Split lists present and non-empty, every image readable, every GT mask an "
                                   "index/palette PNG of the image's size with values in range; optionally a COCO "
                                   "annotation file and its images. Exit 1 if anything is wrong.")
    s.add_argument("root", metavar="ROOT", help="VOC-layout dataset root")
    s.add_argument("--split", action="append", metavar="NAME",
                   help="split to check (repeatable; default: every list in the split directory)")
    s.add_argument("--classes", type=int, default=21, metavar="N",
                   help="number of classes incl. background; mask values must be < N or 255 (default: %(default)s)")
    s.add_argument("--image-dir", default="JPEGImages")
    s.add_argument("--mask-dir", default="SegmentationClass")
    s.add_argument("--split-dir", default="ImageSets/Segmentation")
    s.add_argument("--no-masks", action="store_true", help="image-level labels only: do not require GT masks")
    s.add_argument("--coco-annotations", metavar="JSON", help="COCO instances file to check")
    s.add_argument("--coco-images", metavar="DIR", help="directory of the COCO images")
    s.set_defaults(func=cmd_validate_dataset)

    s = sub.add_parser("doctor", help="pre-flight: torch, GPUs, weights cache, dataset, free disk",
                       description="Checks a machine and a config before a long run, one line per finding "
                                   "(ok / warn / FAIL). Exit 1 if anything would stop the run.")
    s.add_argument("--configfile", default=DEFAULT_CONFIG, help="config to check (default: %(default)s)")
    s.set_defaults(func=cmd_doctor)

    s = sub.add_parser("compare", help="the Numbers tables of two runs next to each other",
                       description="Read RUN/report.md of two runs (e.g. the learned segmenter and SAM on the same "
                                   "CAMs, two outdirs) and print their Numbers tables side by side, row by row.")
    s.add_argument("run_a", metavar="RUN_A", help="outdir of the first run")
    s.add_argument("run_b", metavar="RUN_B", help="outdir of the second run")
    s.set_defaults(func=cmd_compare)

    s = sub.add_parser("init-config", help="a complete, commented config for your own VOC + COCO data",
                       description="Read a VOC-layout tree and a COCO-layout annotation file and write a complete "
                                   "config: mask directory, splits and classes from the tree, a COCO category map "
                                   "proposed from matching names, every other value from --base.")
    s.add_argument("--voc-root", required=True, metavar="DIR", help="VOC-layout root (JPEGImages/, masks, ImageSets/)")
    s.add_argument("--coco-images", required=True, metavar="DIR", help="directory of the COCO-layout images")
    s.add_argument("--coco-annotations", required=True, metavar="JSON", help="COCO instances file")
    s.add_argument("--classes", metavar="NAMES",
                   help="comma-separated class names in mask-index order (background is added first unless "
                        "given); default: PASCAL VOC's names when the masks hold indices 0..20")
    s.add_argument("--base", metavar="YAML",
                   help="config the other values come from (default: config/voc12_coco.yaml, the paper's setting)")
    s.add_argument("--out", default="config/mine.yaml", metavar="YAML", help="config to write (default: %(default)s)")
    s.set_defaults(func=cmd_init_config)
    return p


def _version() -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version("locseg")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        parser.exit(2, f"locseg {args.command}: error: {e}\n")
    except (ValueError, FileNotFoundError, KeyError, OSError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"locseg {args.command}: error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
