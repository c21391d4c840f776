"""Streaming pieces shared by the per-image stages (extract_cams, resegment).

    size_order (image headers) -> decode (DataLoader workers, in that order) -> same-size buckets
        -> model (one forward per bucket) -> BackgroundWriter (a thread: validation, float16 rounding,
        gzip, HDF5) -> StoreWriter

A shard is processed in `size_order` (by run size, input order within a size), so images that can share a
forward pass are consecutive. What they share is set by config `inference.canvas`:

- off (the default): an image runs at its own size, so only images of identical size share a pass. Exact
  results, but on real datasets, which mix dozens (VOC) to hundreds (COCO) of sizes, most passes hold one
  image.
- on: every image is padded, bottom and right, with the mean colour (0 after normalisation) to its
  *canvas* (each side rounded up, see `canvas`), and the maps are cropped back, so batches fill: VOC's
  500x375, 500x333 and their neighbours all share the 384x512 canvas. The padding changes the maps
  (mostly near the right and bottom border), so it is a result-changing choice, not a speed setting.

A batch (up to `inference.batch_size` images of one run size) is one forward pass on CUDA; on CPU it runs as
passes of at most CPU_PASS_PIXELS pixels, which is faster there (see that constant).

Memory stays flat whatever the shard size: at most `workers * PREFETCH` decoded items wait ahead of the
model, one bucket (<= batch_size images) is on the model, and at most `max_pending` images' maps wait
for the writer thread.

The run size and the order depend on the image sizes (and `canvas`) only, so a store's content and byte
layout do not depend on batch_size or workers. Only the model's arithmetic can: on CPU, batch_size 1 runs
exactly the per-image computation; larger batches agree to float rounding (within one float16 step of
the store).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Self

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from locseg.data.transforms import MEAN, STD, normalize
from locseg.data.voc import read_image
from locseg.runtime import progress

log = logging.getLogger("locseg.batching")

PREFETCH = 2  # decoded items per DataLoader worker waiting ahead of the model
CANVAS_MIN_STEP = 16  # the backbones' output stride


def _canvas_side(n: int) -> int:
    """n rounded up to a multiple of a quarter of the largest power of two <= n (at least 16): 256-511 px
    sides step by 64, so VOC's 333 to 375 px sides all share 384; 96-127 px sides step by 16. The padding
    stays below a quarter of the side, mostly far below."""
    step = max(CANVAS_MIN_STEP, (1 << (max(n, 1).bit_length() - 1)) // 4)
    return -(-n // step) * step


def canvas(h: int, w: int) -> tuple[int, int]:
    """The padded size an (h, w) image runs at with `inference.canvas` (see `_canvas_side`)."""
    return _canvas_side(h), _canvas_side(w)


def speed_settings(config: dict) -> dict:
    """Config `inference` without `canvas`: the keys that change speed, never what is written (so they are
    no Snakemake params; `canvas` changes the maps and is one)."""
    return {k: v for k, v in config["inference"].items() if k != "canvas"}


def run_size(h: int, w: int, pad: bool) -> tuple[int, int]:
    """The size an (h, w) image runs at: its canvas when padding (`inference.canvas`), else its own size."""
    return canvas(h, w) if pad else (h, w)


def size_order(sizes: Sequence[tuple[int, int]], pad: bool) -> list[int]:
    """Indices of `sizes` ((h, w) per image) by `run_size`, input order within a size: images that can share
    a forward pass become consecutive. Depends on the sizes and `pad` only, never on batch_size or workers."""
    return sorted(range(len(sizes)), key=lambda i: (run_size(*sizes[i], pad), i))


# On CPU a forward pass over many large images is slower per image than one image at a time: the
# activations outgrow the caches and the convolutions turn memory-bound. Measured with the small models,
# 2 threads, 4 scales + flip (images/s at 1 / 4 / 16 images per pass): 375x500 CAMs 3.9 / 2.7 / 2.2,
# 240x320 11.4 / 8.4 / 6.1, but 120x128 37 / 41 / 47. So on CPU a batch runs as model calls of at most this
# many run-size pixels (at least one image); on CUDA a batch is one call.
CPU_PASS_PIXELS = 64 * 1024


@dataclass(frozen=True)
class Compute:
    """How a stage runs its model. On CUDA: bf16 autocast, and the accelerated input path (uint8 pixels
    moved and normalised on the device, channels_last). On CPU both are off by default (exact fp32), and
    tests turn them on to run the code path a GPU takes. `canvas`: pad images to their canvas (see the
    module docstring); off, every image runs at its own size. `pass_pixels`: the most run-size pixels of
    one model call (None: a batch is one call), see CPU_PASS_PIXELS."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    canvas: bool = False
    pass_pixels: int | None = None

    @classmethod
    def on(cls, device: torch.device, bf16: bool | None = None, channels_last: bool | None = None,
           canvas: bool = False) -> Compute:
        """None follows the device: on for CUDA, off elsewhere. CPU calls hold at most CPU_PASS_PIXELS."""
        cuda = device.type == "cuda"
        return cls(device, cuda if bf16 is None else bf16, cuda if channels_last is None else channels_last, canvas,
                   None if cuda else CPU_PASS_PIXELS)

    def calls(self, batch: list, size: tuple[int, int]) -> Iterator[list]:
        """A batch of images of run size `size` in the model calls it runs as (one unless `pass_pixels`)."""
        n = len(batch) if self.pass_pixels is None else max(1, self.pass_pixels // (size[0] * size[1]))
        for start in range(0, len(batch), n):
            yield batch[start:start + n]

    def shared_size(self, sizes: Sequence[tuple[int, int]]) -> tuple[int, int]:
        """The one size a batch of images of `sizes` runs at; they must share it (see `size_order`)."""
        size = run_size(*sizes[0], self.canvas)
        if any(run_size(h, w, self.canvas) != size for h, w in sizes):
            raise ValueError(f"images of sizes {sorted(set(sizes))} do not share one run size (canvas {self.canvas})")
        return size

    def autocast(self):
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.bf16)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in the memory format the inputs will have."""
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


def _identity(item):
    return item


def prefetch(dataset: Dataset, workers: int = 0, pin_memory: bool = False) -> Iterator:
    """Items of `dataset` in index order, decoded by `workers` processes ahead of the caller.

    Create the iterator *before* opening any HDF5 file for writing or starting a writer thread: the workers
    are forked when it starts, and a fork must not copy a lock held by another thread.
    """
    if workers < 0:
        raise ValueError(f"workers must be >= 0, got {workers}")
    if workers == 0:
        return (dataset[i] for i in range(len(dataset)))
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_identity,
                        pin_memory=pin_memory, prefetch_factor=PREFETCH, persistent_workers=False)
    return iter(loader)


def buckets(items: Iterable, batch_size: int, key: Callable) -> Iterator[list]:
    """Runs of consecutive items with equal `key` (e.g. image size), each at most `batch_size` long."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    bucket, bucket_key = [], None
    for item in items:
        k = key(item)
        if bucket and (k != bucket_key or len(bucket) == batch_size):
            yield bucket
            bucket = []
        bucket.append(item)
        bucket_key = k
    if bucket:
        yield bucket


def to_input(images: Sequence[torch.Tensor | np.ndarray], size: tuple[int, int], compute: Compute) -> torch.Tensor:
    """uint8 [h,w,3] images -> normalised float [B,3,H,W] on the device, each padded bottom/right with
    zeros (the mean colour) to `size` (their canvas; no padding when it is their own size).

    Default path: exactly `normalize` per image. Accelerated path (compute.channels_last, on by default on
    CUDA): the uint8 pixels are moved (4x fewer bytes than float; pinned by the DataLoader) and normalised
    on the device, the batch in channels_last for the convolutions.
    """
    dev = compute.device
    x = torch.zeros(len(images), 3, *size, device=dev)
    for i, im in enumerate(images):
        if compute.channels_last:
            t = torch.as_tensor(im).to(dev, non_blocking=True).permute(2, 0, 1).float().div_(255.0)
            t = (t - MEAN.to(dev)) / STD.to(dev)
        else:
            t = normalize(np.asarray(im)).to(dev)
        x[i, :, :t.shape[1], :t.shape[2]] = t
    return x.contiguous(memory_format=torch.channels_last) if compute.channels_last else x


def crop_rows(maps: torch.Tensor, ks: Sequence[int], sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Split run-size maps [..., sum(ks), H, W] into one array per image, cropped to that image's (h, w).
    Returns float32 numpy arrays [..., k_i, h_i, w_i]."""
    maps = maps.float().cpu().numpy()  # one transfer off the device
    out, start = [], 0
    for k, (h, w) in zip(ks, sizes):
        out.append(np.ascontiguousarray(maps[..., start:start + k, :h, :w]))
        start += k
    return out


class PassCounter:
    """Images per batch and per forward pass of one job (logged: a batch that does not fill costs GPU time).
    Only images with a class count: the others need no pass."""

    def __init__(self):
        self.images = self.batches = self.passes = 0

    def add(self, calls: list[int]) -> None:
        """One batch, as the images of each of its model calls."""
        calls = [n for n in calls if n]
        if calls:
            self.images += sum(calls)
            self.batches += 1
            self.passes += len(calls)

    @property
    def mean(self) -> float:
        return self.images / self.passes if self.passes else 0.0

    def summary(self) -> dict:
        per_batch = self.images / self.batches if self.batches else 0.0
        return {"images": self.images, "batches": self.batches, "images_per_batch": round(per_batch, 2),
                "forward_passes": self.passes, "images_per_pass": round(self.mean, 2)}

    def describe(self) -> str:
        s = self.summary()
        return (f"{s['images_per_batch']:.2f} images per batch, {s['images_per_pass']:.2f} per forward pass "
                f"({s['batches']} batches, {s['forward_passes']} passes)")


def maybe_compile(fn: Callable, device: torch.device, enabled: bool) -> Callable:
    """torch.compile `fn` on CUDA; on other devices the flag is ignored (with a log line)."""
    if not enabled:
        return fn
    if device.type != "cuda":
        log.info("inference.compile ignored on %s: torch.compile is used on CUDA only", device)
        return fn
    log.info("torch.compile on %s (the first batches of each new shape compile)", device)
    return torch.compile(fn, dynamic=None)


class BackgroundWriter:
    """Calls `store.write` on a thread, so HDF5 validation / compression runs beside the model.

    `write` queues (blocking while `max_pending` writes wait: memory stays bounded) and re-raises, in the
    caller's thread, the first error the thread met; `close` waits for every queued write and re-raises too.
    Used as a context manager inside `with StoreWriter(...)`: any error leaves the block with an exception,
    so the StoreWriter discards its temporary and nothing appears at the store path.
    """

    _STOP = object()

    def __init__(self, store, max_pending: int = 4):
        self.store = store
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._error: BaseException | None = None
        self._cancel = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="locseg-store-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._STOP:
                return
            if self._error is not None or self._cancel:
                continue  # keep draining so a producer blocked on put() always wakes up
            try:
                self.store.write(*item)
            except BaseException as e:  # noqa: BLE001 - handed to the producer thread
                self._error = e

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error

    def write(self, image_id: str, maps, classes, extra=None) -> None:
        if self._closed:
            raise ValueError("BackgroundWriter is closed")
        self._raise()
        self._queue.put((image_id, maps, classes, extra))

    def _stop(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(self._STOP)
            self._thread.join()

    def close(self) -> None:
        """Wait for every queued write; raise the thread's error if it met one."""
        self._stop()
        self._raise()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:  # the caller failed: drop what is queued, keep the caller's exception
            self._cancel = True
            self._stop()
        return False


class StageItems(Dataset):
    """What `run_stage` reads: (image id, decoded uint8 image, cue, classes) in the order of `ids`, read in
    DataLoader workers. A stage says what its cue is in `cue`."""

    def __init__(self, ids: list[str], image_paths: dict):
        self.ids, self.image_paths = ids, image_paths

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        image = read_image(self.image_paths[image_id])
        cue, classes = self.cue(image_id, image)
        return image_id, torch.from_numpy(image), cue, classes

    def cue(self, image_id: str, image: np.ndarray) -> tuple:
        """(cue, classes) of one image."""
        raise NotImplementedError


def run_stage(data: Dataset, open_store: Callable, infer: Callable, compute: Compute, *, batch_size: int,
              workers: int, desc: str, to_write: Callable = lambda result: (result, None)) -> PassCounter:
    """The loop of a per-image stage. `data` yields (image id, uint8 image, cue, classes) in `size_order`
    (the cue: what `infer` needs besides the image, e.g. the classes or their CAMs). Runs of one run size
    form batches of up to `batch_size`, each run through `infer(images, cues)` (one result per image) in the
    model calls `compute.calls` splits it into; `to_write(result)` gives the (maps, extra) written for the
    image into the store that `open_store()` opens. Returns the images per batch and per forward pass."""
    key = partial(_item_run_size, canvas=compute.canvas)
    # forks before the store file and the writer thread exist
    items = prefetch(data, workers, pin_memory=compute.device.type == "cuda")
    bar = progress(total=len(data), desc=desc)
    passes = PassCounter()
    with open_store() as store, BackgroundWriter(store, max_pending=max(2, batch_size)) as writer:
        for batch in buckets(items, batch_size, key=key):
            calls = list(compute.calls(batch, key(batch[0])))
            passes.add([sum(1 for *_, classes in call if len(classes)) for call in calls])
            for call in calls:
                results = infer([image for _, image, _, _ in call], [cue for _, _, cue, _ in call])
                for (image_id, _, _, classes), result in zip(call, results):
                    maps, extra = to_write(result)
                    writer.write(image_id, maps, classes, extra)
            bar.update(len(batch))
    bar.close()
    return passes


def _item_run_size(item, canvas: bool) -> tuple[int, int]:
    return run_size(*item[1].shape[:2], canvas)
