"""Data and code fingerprints: they change exactly when what a stage reads or runs changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from locseg import fingerprint
from locseg.fingerprint import code_fingerprint, stat_files, stats_fingerprint, tree_files

REPO = Path(__file__).resolve().parents[1]


def test_data_fingerprint_follows_size_mtime_and_presence(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    a.write_bytes(b"1234")
    b.write_bytes(b"xy")
    stats = stat_files([a, b])
    first, present = stats_fingerprint(stats), stats_fingerprint(stats, contents=False)
    assert stats_fingerprint(stat_files([b, a])) == first  # order-free
    st = a.stat()
    a.write_bytes(b"4321")  # same size, new content: the mtime tells
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    edited = stat_files([a, b])
    assert stats_fingerprint(edited) != first
    assert stats_fingerprint(edited, contents=False) == present  # an edit is no addition or removal
    b.unlink()
    removed = stat_files([a, b])
    assert removed[str(b)] is None
    assert stats_fingerprint(removed, contents=False) != present


def test_tree_files_lists_nested_files(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub/x.jpg").write_bytes(b"x")
    (tmp_path / "y.jpg").write_bytes(b"y")
    assert sorted(tree_files(tmp_path)) == [str(tmp_path / "sub/x.jpg"), str(tmp_path / "y.jpg")]
    assert tree_files(tmp_path / "absent") == []


@pytest.fixture()
def package(tmp_path, monkeypatch):
    """A copy of locseg that the code fingerprint reads instead of the real one."""
    copy = tmp_path / "locseg"
    shutil.copytree(REPO / "locseg", copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", copy)
    return copy


def _edit(path: Path, old: str, new: str):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


SCRIPTS = REPO / "workflow" / "scripts"


def test_code_fingerprint_ignores_comments_docstrings_and_layout(package):
    before = code_fingerprint(SCRIPTS / "eval_cams.py")
    module = package / "evaluate.py"
    module.write_text('"""Another docstring."""\n# a comment\n' + module.read_text().split('"""', 2)[2] + "\n\n")
    assert code_fingerprint(SCRIPTS / "eval_cams.py") == before


def test_code_fingerprint_follows_imports_transitively(package):
    """eval_cams imports locseg.evaluate, which imports locseg.metrics: both count; locseg.cam does not."""
    before = {s: code_fingerprint(SCRIPTS / f"{s}.py") for s in ("eval_cams", "train_cam")}
    _edit(package / "metrics.py", "def ", "def _new():\n    return 0\n\n\ndef ")
    after = {s: code_fingerprint(SCRIPTS / f"{s}.py") for s in ("eval_cams", "train_cam")}
    assert after["eval_cams"] != before["eval_cams"]
    assert after["train_cam"] == before["train_cam"]


def test_code_fingerprint_sees_submodules_imported_by_from(package, tmp_path):
    script = tmp_path / "script.py"
    script.write_text("from locseg.models import backbones\n")
    before = code_fingerprint(script)
    _edit(package / "models/backbones.py", "def ", "def _new():\n    return 0\n\n\ndef ")
    assert code_fingerprint(script) != before
