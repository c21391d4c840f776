"""Peak GPU memory of each GPU stage per batch, estimated without a GPU (what `locseg doctor` checks).

Each stage's real model runs one batch on fake tensors (torch's FakeTensorMode: shapes and dtypes, no data,
no arithmetic; a ResNet-101 step takes seconds) under a dispatch mode that follows every tensor storage from
its creation to its release: the peak of the live bytes is what a GPU's allocator would have to hold for the
tensors themselves. A training step is the stage's real loss,
backward and optimizer step; inference is the stage's largest model call. Measured against torch.profiler's
memory records of the same step run on CPU, the trace agrees within a few percent
(`benchmarks/bench_paper_path.py`).

bf16 is traced under CPU autocast, which for these models lowers the same ops as CUDA autocast
(convolutions, matrix products) and caches the same bf16 weight copies; weights, gradients and optimizer
state stay fp32, as on a GPU. Not traced: the CUDA context and library handles (`CONTEXT_BYTES`), cuDNN workspaces and the caching
allocator's fragmentation (`MARGIN`); `needed_bytes` adds both.
"""

from __future__ import annotations

import functools
import json
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.weak import WeakIdKeyDictionary

from locseg.batching import canvas
from locseg.data.transforms import inference_scale

CONTEXT_BYTES = 768 * 2**20  # CUDA context, cuDNN and cuBLAS handles: typically 0.4-0.8 GiB
MARGIN = 1.25                # cuDNN workspaces, allocator fragmentation, autocast's fp32 ops
CLASSES_PER_IMAGE = 2        # (image, class) pairs per image in a resegmentation batch (VOC: 1.5 on average)
VOC_HW, COCO_HW = (375, 500), (480, 640)  # the datasets' commonest large images (height, width)


class LiveBytes(TorchDispatchMode):
    """Live and peak bytes of every storage created while active (plus those `track`ed by hand)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen = WeakIdKeyDictionary()

    def track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:  # a view, or an output that is an input
            return
        n = storage.nbytes()
        self._seen[storage] = n
        self.live += n
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, n)

    def _release(self, n: int) -> None:
        self.live -= n

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.track(t)
        return out


def trace_peak(step, tensors: list[torch.Tensor]) -> int:
    """Peak live bytes while `step()` runs, counting `tensors` (what is already allocated) as live."""
    tracker = LiveBytes()
    with tracker:
        for t in tensors:
            tracker.track(t)
        step()
    return tracker.peak


def _autocast(bf16: bool):
    """CPU autocast: on fake CPU tensors it lowers the same ops to bf16 as CUDA autocast does for these
    models (convolutions, matrix products), and caches the bf16 weight copies as CUDA autocast does."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)


@dataclass(frozen=True)
class StageMemory:
    """Peak bytes of one stage as a function of its batch size: `fixed + per_item * batch`."""

    stage: str
    key: str | None   # the config key of the batch size (None: not configurable)
    batch: int        # the configured batch size
    item: str         # what one batch item is
    fixed: int
    per_item: int
    minimum: int = 1  # the smallest batch the key allows
    floor: int = 0    # a peak that does not depend on the batch (the optimizer step's)

    def bytes_at(self, batch: int) -> int:
        return max(self.fixed + self.per_item * batch, self.floor)

    def needed_bytes(self, batch: int | None = None) -> int:
        """What a GPU must have free for this batch: the traced peak with margin, plus the context."""
        return int(MARGIN * self.bytes_at(self.batch if batch is None else batch)) + CONTEXT_BYTES

    def largest_batch(self, gpu_bytes: int) -> int:
        """The largest batch whose needed bytes fit in `gpu_bytes` (0 if not even one item fits)."""
        room = (gpu_bytes - CONTEXT_BYTES) / MARGIN
        if room < self.floor:
            return 0
        return max(0, int((room - self.fixed) // self.per_item)) if self.per_item > 0 else self.batch


def _linear(stage, key, batch, item, traced, minimum=1) -> StageMemory:
    """Activations are per item, so the peak is linear in the batch: two traces give the line (at 2 and 3
    items: training's batch norm needs two). `traced` is (peak at a batch size, batch-independent floor)."""
    peak_of, floor = traced
    two, three = peak_of(2), peak_of(3)
    return StageMemory(stage, key, batch, item, fixed=3 * two - 2 * three, per_item=three - two, minimum=minimum,
                       floor=floor)


def _training(model, loss_fn, optimizer: str, make_batch, bf16: bool) -> tuple:
    """A training step as `locseg.train.fit` runs it, in the steady state (the optimizer state and the last
    step's gradients exist while the forward runs): forward, zero_grad, backward are traced per batch size;
    the optimizer step, whose peak does not depend on the batch, once."""
    from locseg.train import make_optimizer

    model.train()
    opt = make_optimizer(optimizer, model.parameters(), lr=1e-3, weight_decay=1e-4)

    def forward_backward(batch):
        with _autocast(bf16):
            loss = loss_fn(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()

    forward_backward(make_batch(2))
    opt.step()  # creates the optimizer state

    def held() -> list[torch.Tensor]:
        return [*model.parameters(), *model.buffers(), *(p.grad for p in model.parameters() if p.grad is not None),
                *(t for state in opt.state.values() for t in state.values() if isinstance(t, torch.Tensor))]

    def peak_of(b: int) -> int:
        batch = make_batch(b)
        return trace_peak(lambda: forward_backward(batch), held() + batch)

    return peak_of, trace_peak(opt.step, held())


def _inference(model, call, make_batch, bf16: bool) -> tuple:
    model.eval()

    def peak_of(b: int) -> int:
        batch = make_batch(b)
        with torch.no_grad(), _autocast(bf16):
            return trace_peak(lambda: call(model, batch), [*model.parameters(), *model.buffers(), *batch])

    return peak_of, 0


def _input(*shape, dtype=torch.float32) -> torch.Tensor:
    return torch.empty(*shape)


def _run_size(hw: tuple[int, int], canvas_on: bool, max_side: int | None, scale: float = 1.0) -> tuple[int, int]:
    h, w = canvas(*hw) if canvas_on else hw
    s = inference_scale(h, w, max_side) * scale
    return max(1, round(h * s)), max(1, round(w * s))


def stage_estimates(config: dict, voc_hw=VOC_HW, coco_hw=COCO_HW, bf16: bool = True) -> list[StageMemory]:
    """Peak memory per batch of every GPU stage of `config` (a validated locseg config) on images of
    `voc_hw` (VOC splits) and `coco_hw` (the COCO split, the larger), under bf16 autocast (what CUDA runs)
    or in fp32; the learned segmenter's two stages only where segmenter.kind is learned (SAM is not traced).
    Remembered per config within a process (a ResNet-101 config takes seconds)."""
    relevant = {key: config[key] for key in ("classes", "cam", "segmenter", "reseg", "inference", "deeplab")}
    return list(_cached_estimates(json.dumps(relevant, sort_keys=True), tuple(voc_hw), tuple(coco_hw), bf16))


@functools.lru_cache(maxsize=8)
def _cached_estimates(config_json: str, voc_hw, coco_hw, bf16) -> tuple[StageMemory, ...]:
    with FakeTensorMode():  # every model and tensor below is fake: shapes and dtypes, no memory, no work
        return tuple(_estimates(json.loads(config_json), voc_hw, coco_hw, bf16))


def _estimates(config, voc_hw, coco_hw, bf16) -> list[StageMemory]:
    from locseg.cam import _bce
    from locseg.models.cam import CamNet
    from locseg.models.deeplab import build_deeplab
    from locseg.retrain import _cross_entropy

    cam, seg, dl = config["cam"], config["segmenter"], config["deeplab"]
    n_fg = len(config["classes"]) - 1
    canvas_on, infer_batch = config["inference"]["canvas"], config["inference"]["batch_size"]
    cam_net = CamNet(n_fg, cam["backbone"], cam["output_stride"])
    deeplab = build_deeplab(n_fg + 1, dl["backbone"])
    estimates = []

    c = cam["crop"]
    estimates.append(_linear("train_cam", "cam.batch_size", cam["batch_size"], "crop image", _training(
        cam_net, _bce, cam["optimizer"], lambda b: [_input(b, 3, c, c), _input(b, n_fg)], bf16),
        minimum=2))

    # extract_cams: the largest scale's call over the batch and its flipped views, plus the maps it sums into
    h, w = _run_size(coco_hw, canvas_on, cam["max_side"], max(cam["scales"]))
    views = 2 if cam["flip"] else 1
    full = _run_size(coco_hw, canvas_on, None)

    def cam_call(m, batch):
        total = torch.zeros(batch[0].shape[0] // views * CLASSES_PER_IMAGE, *full)
        raw = m.cams(batch[0])[:, :CLASSES_PER_IMAGE].float()
        return total, F.interpolate(raw, size=full, mode="bilinear")  # the views' maps at run size

    estimates.append(_linear("extract_cams", "inference.batch_size", infer_batch,
                             f"image ({w}x{h} run size at scale {max(cam['scales']):g}, {views} view(s))",
                             _inference(cam_net, cam_call, lambda b: [_input(views * b, 3, h, w)], bf16)))

    if seg["kind"] == "learned":  # SAM (segmenter.kind: sam) is not traced: it trains nothing here
        estimates += _segmenter_estimates(config, voc_hw, canvas_on, infer_batch, bf16)

    c = dl["crop"]
    estimates.append(_linear("train_deeplab", "deeplab.batch_size", dl["batch_size"], "crop image", _training(
        deeplab, _cross_entropy, dl["optimizer"],
        lambda b: [_input(b, 3, c, c), torch.zeros(b, c, c, dtype=torch.long)], bf16),
        minimum=2))

    h, w = (round(s * max(dl["eval_scales"])) for s in voc_hw)
    views = 2 if dl["eval_flip"] else 1
    estimates.append(_linear("evaluate_deeplab", None, 1,
                             f"image ({w}x{h} at scale {max(dl['eval_scales']):g})",
                             _inference(deeplab, lambda m, batch: m(batch[0]),
                                        lambda b: [_input(views * b, 3, h, w)], bf16)))
    return estimates


def _segmenter_estimates(config, voc_hw, canvas_on, infer_batch, bf16) -> list[StageMemory]:
    """train_segmenter and resegment of the learned segmenter (segmenter.kind: learned)."""
    from locseg.models.segmenter import Segmenter
    from locseg.reseg import segmenter_loss

    seg = config["segmenter"]
    segmenter = Segmenter(seg["backbone"], seg["output_stride"], None, seg["width"])
    estimates = []
    c = seg["crop"]
    two_pass = seg["passes"] == 2 and bool(seg["second_cues"])

    def seg_batch(b):
        batch = [_input(b, 3, c, c), _input(b, 1, c, c), torch.zeros(b, c, c, dtype=torch.long)]
        return batch + ([_input(b, 1, c, c), _input(b)] if two_pass else [])

    def seg_loss(m, batch):
        return segmenter_loss(m, batch, seg["consistency"], seg["feedback"])

    estimates.append(_linear("train_segmenter", "segmenter.batch_size", seg["batch_size"],
                             f"(image, class) pair, {'2 passes' if two_pass else '1 pass'}",
                             _training(segmenter, seg_loss, seg["optimizer"], seg_batch, bf16), minimum=2))

    rounds, flip = config["reseg"]["rounds"], config["reseg"]["flip"]
    h, w = _run_size(voc_hw, canvas_on, config["reseg"]["max_side"])

    def reseg_call(m, batch):  # the last round: every earlier round's probabilities are held
        x, cue = batch
        held = torch.zeros(rounds - 1, x.shape[0], h, w)
        probs = torch.sigmoid(m(x, cue).float())
        if flip:
            probs = 0.5 * (probs + torch.sigmoid(m(x.flip(-1), cue.flip(-1)).float()))
        return held, probs

    pairs = lambda b: [_input(CLASSES_PER_IMAGE * b, 3, h, w),  # noqa: E731
                       _input(CLASSES_PER_IMAGE * b, 1, h, w)]
    estimates.append(_linear("resegment", "inference.batch_size", infer_batch,
                             f"image ({w}x{h}, {CLASSES_PER_IMAGE} classes, {rounds} rounds)",
                             _inference(segmenter, reseg_call, pairs, bf16)))
    return estimates
