"""GPU memory estimates: the live-bytes trace against hand-counted cases, the batch line, bf16 against fp32,
and the trace against a direct one at a batch size the line was not fitted on."""

from __future__ import annotations

import torch
import yaml

from locseg import gpu_memory
from locseg.gpu_memory import CONTEXT_BYTES, MARGIN, LiveBytes, StageMemory, stage_estimates, trace_peak
from tests.workflow.conftest import REPO

GIB = 2**30


def test_live_bytes_follow_creation_and_release():
    with LiveBytes() as tracker:
        a = torch.ones(1000)           # 4,000 bytes
        b = a * 2                      # 8,000 live
        view = b.view(10, 100)         # a view allocates nothing
        del a                          # 4,000 live
        c = torch.zeros(500, dtype=torch.float64)  # 8,000 live
        assert tracker.live == 8000
    assert tracker.peak == 8000
    assert view.shape == (10, 100) and c.numel() == 500


def test_trace_counts_parameters_inputs_and_outputs():
    model = torch.nn.Linear(10, 10, bias=False)  # 100 weights: 400 bytes
    x = torch.ones(4, 10)
    with torch.no_grad():
        peak = trace_peak(lambda: model(x), [model.weight, x])
    assert peak == 400 + 160 + 160  # weight, input [4, 10], output [4, 10]


def test_batch_line_and_what_fits():
    est = StageMemory("train_x", "x.batch_size", 8, "crop image", fixed=GIB, per_item=GIB // 2, minimum=2)
    assert est.bytes_at(8) == 5 * GIB
    assert est.needed_bytes() == int(MARGIN * 5 * GIB) + CONTEXT_BYTES
    gpu = est.needed_bytes(4) + 1  # room for 4 items, not 5
    assert est.largest_batch(gpu) == 4
    assert est.needed_bytes(est.largest_batch(gpu)) <= gpu < est.needed_bytes(5)
    assert est.largest_batch(CONTEXT_BYTES) == 0


def _config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_estimates_cover_every_gpu_stage_and_grow_with_the_batch():
    stages = {e.stage: e for e in stage_estimates(_config())}
    assert set(stages) == {"train_cam", "extract_cams", "train_segmenter", "resegment", "train_deeplab",
                           "evaluate_deeplab"}
    config = _config()
    assert stages["train_deeplab"].batch == config["deeplab"]["batch_size"]
    assert all(e.per_item > 0 and e.fixed > 0 for e in stages.values())


def test_sam_runs_estimate_no_learned_segmenter():
    config = _config()
    config["segmenter"]["kind"] = "sam"
    assert {e.stage for e in stage_estimates(config)} == {"train_cam", "extract_cams", "train_deeplab",
                                                         "evaluate_deeplab"}


def test_line_predicts_a_batch_it_was_not_fitted_on(monkeypatch):
    """The line comes from traces at 2 and 3 items; at 5 a direct trace must land on it (activations are per
    item), within a few bytes of rounding."""
    config = _config()
    est = {e.stage: e for e in stage_estimates(config)}["train_deeplab"]
    config["deeplab"]["batch_size"] = 5
    seen = []
    real = gpu_memory._linear

    def at_five(stage, key, batch, item, traced, minimum=1):
        if stage == "train_deeplab":
            seen.append(max(traced[0](5), traced[1]))
        return real(stage, key, batch, item, traced, minimum)

    monkeypatch.setattr(gpu_memory, "_linear", at_five)
    gpu_memory._cached_estimates.cache_clear()
    stage_estimates(config)
    assert abs(seen[0] - est.bytes_at(5)) <= 0.01 * seen[0]


def test_bf16_activations_take_about_half_of_fp32():
    fp32 = {e.stage: e for e in stage_estimates(_config(), bf16=False)}
    bf16 = {e.stage: e for e in stage_estimates(_config(), bf16=True)}
    for stage in ("train_cam", "train_deeplab"):  # inference keeps its maps in fp32 either way
        ratio = bf16[stage].per_item / fp32[stage].per_item
        assert 0.4 < ratio < 0.75, (stage, ratio)
