"""benchmarks/bench_method.py on tiny held-out data: the table it prints is what it measured, it says which
commit and command made it, and a rerun reuses its cache instead of training again."""

import json
import os
import subprocess
import sys

import pytest

from tests.workflow.conftest import REPO

pytestmark = pytest.mark.slow

ARGS = ["--datasets", "slim", "--settings", "now", "--size", "tiny", "--cam-epochs", "1", "--cam-scales", "1.0",
        "--epoch-scale", "0.04", "--rounds", "2", "--bg-scores", "0.5", "--threads", "1"]


def _bench(work):
    return subprocess.run([sys.executable, "benchmarks/bench_method.py", "--work", str(work), *ARGS], cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=600)


def test_table_reports_the_cached_scores_with_commit_and_command(tmp_path):
    first = _bench(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    entry = json.loads((tmp_path / "results/slim.json").read_text())
    run = entry["settings"]["now"]
    assert run["segmenter"]["epochs"] == 1 and run["segmenter"]["feedback"] == "cam_mean"
    mious = run["flip"]["false"]["0.5"]["miou"]
    assert len(mious) == 2 and all(0.0 <= m <= 1.0 for m in mious)

    table = (tmp_path / "table.md").read_text()
    assert table.startswith("bench_method at commit ") and "--settings now" in table.splitlines()[0]
    row = next(line for line in table.splitlines() if line.startswith("| now | false |"))
    assert f"{100 * mious[0]:.1f} / {100 * mious[1]:.1f}" in row
    assert f"CAM baseline: slim {100 * entry['cam']['miou']:.1f}" in table

    second = _bench(tmp_path)  # everything cached: no training, same table
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train_segmenter" not in second.stderr and "dataset slim, setting now" not in second.stderr
    assert (tmp_path / "table.md").read_text() == table
