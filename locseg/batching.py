"""Streaming pieces shared by the per-image stages (extract_cams, resegment).

    decode (DataLoader workers, in order) -> same-size buckets -> model (one forward per bucket)
        -> BackgroundWriter (a thread: validation, float16 rounding, gzip, HDF5) -> StoreWriter

Memory stays flat whatever the shard size: at most `workers * PREFETCH` decoded items wait ahead of the
model, one bucket (<= batch_size images) is on the model, and at most `max_pending` images' maps wait
for the writer thread.

Order is the input order everywhere (no shuffling, buckets are runs of *consecutive* same-size images),
so a store's content and byte layout do not depend on batch_size or workers. Only the model's arithmetic
can: on CPU, batch_size 1 runs exactly the per-image computation; larger batches agree to float rounding.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Self

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from locseg.data.transforms import MEAN, STD, normalize

log = logging.getLogger("locseg.batching")

PREFETCH = 2  # decoded items per DataLoader worker waiting ahead of the model


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


def to_input(images: Sequence[torch.Tensor | np.ndarray], device: torch.device) -> torch.Tensor:
    """uint8 [H,W,3] images of one size -> normalised float [B,3,H,W] on `device`.

    On CPU this is exactly `normalize` (results unchanged); on CUDA the uint8 pixels are moved (4x fewer
    bytes than float) and normalised there, in channels_last for the convolutions.
    """
    if device.type != "cuda":
        return torch.stack([normalize(np.asarray(im)) for im in images])
    x = torch.stack([torch.as_tensor(im) for im in images]).to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    x = (x - MEAN.to(device)) / STD.to(device)
    return x.contiguous(memory_format=torch.channels_last)


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
