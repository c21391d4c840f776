"""The `locseg` command: help, store info, IRN/SEAM round trip, dataset validation, one-image overlay."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from locseg.cli import main
from locseg.data.demo import generate
from locseg.data.voc import read_split, write_mask
from locseg.store import StoreReader, StoreWriter
from tests.conftest import CLASSES

REPO = Path(__file__).resolve().parents[1]
SUBCOMMANDS = ["info", "show", "import-npy", "export-npy", "validate-dataset", "init-config"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    generate(out, seed=0, size="tiny")
    return out


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as e:  # argparse: --help and usage errors
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_module_entry_point():
    proc = subprocess.run([sys.executable, "-m", "locseg.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for name in SUBCOMMANDS:
        assert name in proc.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help(capsys, name):
    rc, out, _ = run(capsys, name, "--help")
    assert rc == 0
    assert f"locseg {name}" in out


def test_usage_errors_exit_2(capsys):
    assert run(capsys, "info")[0] == 2  # missing positional
    rc, _, err = run(capsys, "import-npy", "d", "--ids", "x.txt", "--out", "s.h5", "--classes", "background,a")
    assert rc == 2 and "--allow-pickle" in err


def _write_store(path: Path, images: dict[str, tuple[int, int]], classes=(1, 3)) -> None:
    rng = np.random.default_rng(0)
    with StoreWriter(path, "cam", CLASSES, scales=[1.0, 0.5], model_sha256="ab" * 32,
                     config={"cam": {"backbone": "small"}, "seed": 0}) as w:
        for image_id, (h, w_) in images.items():
            w.write(image_id, rng.random((len(classes), h, w_)), list(classes))


def test_info(tmp_path, capsys):
    store = tmp_path / "s.h5"
    _write_store(store, {"a": (10, 12), "b": (20, 8), "c": (15, 15)})
    rc, out, err = run(capsys, "info", str(store))
    assert rc == 0, err
    assert ", ".join(CLASSES) in out
    assert "images:       3" in out
    assert "H 10..20, W 8..15" in out
    assert "maps:         6 in all" in out
    assert "ab" * 32 in out and "seed: 0" in out


def test_info_errors_are_one_line(tmp_path, capsys):
    rc, out, err = run(capsys, "info", str(tmp_path / "missing.h5"))
    assert rc == 1 and "missing.h5" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    rc, _, err = run(capsys, "info", str(bad))
    assert rc == 1 and "bad.h5" in err and "Traceback" not in err


def test_import_export_round_trip(tmp_path, capsys):
    rng = np.random.default_rng(1)
    npy_dir, ids = tmp_path / "irn", ["img_a", "img_b"]
    npy_dir.mkdir()
    saved = {}
    for image_id, keys in zip(ids, ([0, 2], [3])):
        high_res = rng.random((len(keys), 9, 11)).astype(np.float32)
        saved[image_id] = (np.array(keys), high_res)
        np.save(npy_dir / f"{image_id}.npy", {"keys": np.array(keys), "high_res": high_res}, allow_pickle=True)
    split = tmp_path / "split.txt"
    split.write_text("\n".join(ids) + "\n")
    store = tmp_path / "cams.h5"

    rc, out, err = run(capsys, "import-npy", str(npy_dir), "--ids", str(split), "--out", str(store),
                       "--classes", ",".join(CLASSES), "--allow-pickle")
    assert rc == 0, err
    with StoreReader(store, kind="cam", class_names=CLASSES) as r:
        assert r.ids == ids
        assert r.read("img_a")[1].tolist() == [1, 3]

    out_dir = tmp_path / "back"
    rc, _, err = run(capsys, "export-npy", str(store), "--out", str(out_dir), "--style", "irn")
    assert rc == 0, err
    for image_id, (keys, high_res) in saved.items():
        obj = np.load(out_dir / f"{image_id}.npy", allow_pickle=True).item()
        assert obj["keys"].tolist() == keys.tolist()
        np.testing.assert_allclose(obj["high_res"], high_res, atol=1e-3)  # float16 storage
    assert not list(out_dir.glob("*.tmp"))

    rc, _, err = run(capsys, "export-npy", str(store), "--out", str(tmp_path / "seam"), "--style", "seam")
    assert rc == 0, err
    assert sorted(np.load(tmp_path / "seam" / "img_a.npy", allow_pickle=True).item()) == [0, 2]


def test_import_classes_from_config(tmp_path, capsys, monkeypatch):
    npy_dir = tmp_path / "seam"
    npy_dir.mkdir()
    np.save(npy_dir / "x.npy", {1: np.full((4, 5), 0.5, np.float32)}, allow_pickle=True)
    (tmp_path / "ids.txt").write_text("x\n")
    monkeypatch.chdir(tmp_path)  # the demo config's paths are relative; none has to exist
    rc, _, err = run(capsys, "import-npy", "seam", "--ids", "ids.txt", "--out", "s.h5", "--allow-pickle",
                     "--config", str(REPO / "config" / "config.yaml"))
    assert rc == 0, err
    with StoreReader(tmp_path / "s.h5") as r:
        assert r.attrs["class_names"] == CLASSES and r.read("x")[1].tolist() == [2]


def test_import_missing_file_is_clean_error(tmp_path, capsys):
    (tmp_path / "npy").mkdir()
    (tmp_path / "ids.txt").write_text("nothere\n")
    rc, _, err = run(capsys, "import-npy", str(tmp_path / "npy"), "--ids", str(tmp_path / "ids.txt"),
                     "--out", str(tmp_path / "s.h5"), "--classes", "background,a", "--allow-pickle")
    assert rc == 1 and "nothere" in err and "Traceback" not in err
    assert not (tmp_path / "s.h5").exists() and not (tmp_path / "s.h5.tmp").exists()


def test_validate_good_tree(demo, capsys):
    rc, out, err = run(capsys, "validate-dataset", str(demo / "voc"), "--classes", str(len(CLASSES)),
                       "--coco-annotations", str(demo / "coco/annotations/instances_train.json"),
                       "--coco-images", str(demo / "coco/images"))
    assert rc == 0, out + err
    assert out.startswith("OK:") and len(out.strip().splitlines()) == 1
    assert "train 12" in out and "val 6" in out


def test_validate_broken_tree_lists_every_problem(demo, tmp_path, capsys):
    root = tmp_path / "voc"
    shutil.copytree(demo / "voc", root)
    ids = read_split(root / "ImageSets/Segmentation/train.txt")
    images, masks = root / "JPEGImages", root / "SegmentationClass"
    deleted, rgb, truncated, resized = ids[0], ids[1], ids[2], ids[3]
    (images / f"{deleted}.jpg").unlink()
    Image.open(masks / f"{rgb}.png").convert("RGB").save(masks / f"{rgb}.png")
    data = (images / f"{truncated}.jpg").read_bytes()
    (images / f"{truncated}.jpg").write_bytes(data[: len(data) // 2])
    small = np.asarray(Image.open(masks / f"{resized}.png"))[:-3, :-2].copy()
    write_mask(masks / f"{resized}.png", small)

    rc, out, err = run(capsys, "validate-dataset", str(root), "--classes", str(len(CLASSES)))
    assert rc == 1
    assert "Traceback" not in out + err
    lines = out.strip().splitlines()
    for path in (images / f"{deleted}.jpg", masks / f"{rgb}.png", images / f"{truncated}.jpg",
                 masks / f"{resized}.png"):
        assert any(str(path) in line for line in lines), f"{path} not reported in:\n{out}"
    assert any("colour-encoded" in line for line in lines)
    assert any("differs from image size" in line for line in lines)
    assert len(lines) == 4, out


def test_validate_bad_class_range_and_coco(demo, tmp_path, capsys):
    coco_images = tmp_path / "images"
    shutil.copytree(demo / "coco/images", coco_images)
    first = sorted(coco_images.iterdir())[0]
    first.unlink()
    rc, out, _ = run(capsys, "validate-dataset", str(demo / "voc"), "--split", "val", "--classes", "2",
                     "--coco-annotations", str(demo / "coco/annotations/instances_train.json"),
                     "--coco-images", str(coco_images))
    assert rc == 1
    assert "outside 0..1" in out  # demo masks use classes up to 4
    assert first.name in out
    assert "train.txt" not in out  # only the requested split was checked


def test_validate_missing_split(tmp_path, capsys):
    rc, out, _ = run(capsys, "validate-dataset", str(tmp_path), "--split", "train")
    assert rc == 1 and "train.txt" in out and "split list not found" in out


def test_show_writes_png(demo, tmp_path, capsys, monkeypatch):
    # The demo config's relative paths (results/demo/...) resolve against the working directory.
    work = tmp_path / "run"
    (work / "results").mkdir(parents=True)
    shutil.copytree(demo, work / "results" / "demo")
    monkeypatch.chdir(work)
    image_id = read_split(work / "results/demo/voc/ImageSets/Segmentation/train.txt")[4]
    h, w = np.asarray(Image.open(work / "results/demo/voc/SegmentationClass" / f"{image_id}.png")).shape
    _write_store(work / "results/cams/train/000.h5", {"other": (5, 5)})
    _write_store(work / "results/cams/train/001.h5", {image_id: (h, w)})
    write_mask(work / "results/masks/train" / f"{image_id}.png", np.zeros((h, w), np.uint8))

    out_png = tmp_path / "show.png"
    rc, out, err = run(capsys, "show", "--image", image_id, "--config", str(REPO / "config" / "config.yaml"),
                       "--out", str(out_png))
    assert rc == 0, err
    assert "CAM (max over classes)" in out and "pseudo mask" in out
    img = Image.open(out_png)
    assert img.format == "PNG" and img.width > img.height
    assert not (tmp_path / "show.png.tmp").exists()

    rc, _, err = run(capsys, "show", "--image", "no_such_id", "--config", str(REPO / "config" / "config.yaml"))
    assert rc == 1 and "no_such_id" in err and "Traceback" not in err


def test_show_reads_the_configs_outdir(demo, tmp_path, capsys, monkeypatch):
    # A run with `outdir: runs/a` keeps its stores there; show must look there without --results.
    work = tmp_path / "run"
    shutil.copytree(demo, work / "results" / "demo")
    monkeypatch.chdir(work)
    image_id = read_split(work / "results/demo/voc/ImageSets/Segmentation/train.txt")[0]
    h, w = np.asarray(Image.open(work / "results/demo/voc/SegmentationClass" / f"{image_id}.png")).shape
    _write_store(work / "runs/a/cams/train/000.h5", {image_id: (h, w)})
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["outdir"] = "runs/a"
    (work / "mine.yaml").write_text(yaml.safe_dump(config))

    rc, out, err = run(capsys, "show", "--image", image_id, "--config", "mine.yaml", "--out", "a.png")
    assert rc == 0, err
    assert "CAM (max over classes)" in out and "runs/a/cams" not in out
    rc, out, err = run(capsys, "show", "--image", image_id, "--config", "mine.yaml", "--out", "b.png",
                       "--results", "results")
    assert rc == 0, err
    assert "CAM (max over classes)" not in out and "results/cams/train" in out
