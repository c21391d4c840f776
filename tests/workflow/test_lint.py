"""`snakemake --lint` finds nothing but the conda/container lint (locseg installs with pip; see README)."""

from __future__ import annotations

from tests.workflow.conftest import snakemake

CONDA_LINT = "Specify a conda environment or container for each rule."


def test_lint_only_asks_for_conda(tmp_path):
    proc = snakemake(tmp_path, "--lint", check=False)
    out = proc.stdout + proc.stderr
    lints = [line.strip() for line in out.splitlines() if line.startswith("    * ")]
    assert lints, out[-3000:]  # the lint ran
    assert {lint.removeprefix("* ").removesuffix(":") for lint in lints} == {CONDA_LINT}, out[-3000:]
