"""HDF5 CAM / probability store: the one format passed between pipeline stages.

Layout (docs/formats.md, "CAM / probability store"):

    /                     attrs: format="locseg.store", version=1, kind="cam"|"prob", class_names, rounds,
                                 scales, model_sha256, config (JSON string)
    /_ids                 str [N]: image ids in insertion order (HDF5 lists groups alphabetically,
                                   so the order a stage wrote them in is recorded explicitly)
    /<image id>/maps      float16 [k, H, W], values in [0, 1], original image size
    /<image id>/classes   int16 [k]: project class index of each map (1..K-1; background is never a map)
    /<image id>/<extra>   optional float16 [..., H, W] (e.g. "rounds" [R, k, H, W])
    /<image id>           attrs: height, width

Every map dataset is chunked one H x W plane per chunk, so reading an image touches only its own chunks
and a reader's memory stays flat whatever the number of images.

Compression, measured (h5py 3.16, 40 images x 3 maps x 375x500 float16, ratio vs float32 .npy bytes,
ms per image on this 2-core CPU box; benchmark kept out of the package):

    data                                  gzip1+shuffle      gzip4+shuffle      lzf                lzf+shuffle
    CAM-like (stride-16 ReLU, bilinear)   4.1x  11.1w 3.2r   4.4x  13.5w 3.0r   2.7x  4.3w 1.7r    3.6x  4.4w 2.5r
    smooth blobs in [0,1]                 13.0x  3.9w 1.5r   13.8x  5.3w 2.4r   7.9x  2.1w 1.8r    11.8x 2.2w 2.1r
    masks-like probabilities (sigmoid)    29.3x  2.4w 1.1r   33.2x  3.7w 2.4r   20.6x 1.5w 1.8r    26.7x 1.7w 2.1r
    (no compression: 2.0x, gzip4 without shuffle on CAMs: 3.1x, gzip9+shuffle on CAMs: 4.5x at 78 ms/img write)

The ratio on CAMs is set by how much of the map is exactly 0 (float16 mantissas of smooth non-zero
values look random to any lossless coder): with gzip4+shuffle, 4.4x at ~25% zeros, 3.5x at ~8% zeros,
3.2x for a multi-scale average with no zeros. So values are first rounded to a grid of 1/1024
(QUANTUM; absolute error <= 4.9e-4, twice float16's own rounding error near 1, far below any threshold
step): on the demo's dense multi-scale CAMs this takes the store from 0.31 to 0.22 of float32 .npy bytes
(0.25 with a 1/2048 grid; 0.19-0.20 on the final demo CAMs).

Choice: gzip level 4 with the shuffle filter. It is 1.6-1.8x smaller than lzf on CAMs, reads at the same
few ms per image (stores are read many times: threshold sweep, segmenter training, resegmentation), and
its extra write cost (~10 ms per image) is small next to the network inference that produced the maps.
gzip is also built into every HDF5 library (MATLAB, h5dump, C), whereas lzf is an h5py-only filter.
Level 1 would save ~20% write time for 5-12% more bytes; levels above 4 cost a lot of write time for ~2%.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import h5py
import numpy as np

from locseg.fsutil import atomic_path

FORMAT = "locseg.store"
VERSION = 1
KINDS = ("cam", "prob")
IDS_DATASET = "_ids"  # reserved root name; cannot be an image id
COMPRESSION = dict(compression="gzip", compression_opts=4, shuffle=True)
# float32 rounding and float16 storage can put a value a hair outside [0, 1]; more than this is a bug upstream.
RANGE_TOL = 1e-3
# Stored precision (see the module docstring): the noisy low mantissa bits of small values are what
# a lossless coder cannot compress, and no consumer of [0, 1] maps needs them.
QUANTUM = 1 / 1024
_RESERVED_DATASETS = ("maps", "classes")


def _as_str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _check_image_id(image_id) -> str:
    # ids become HDF5 link names: '/' would create nested groups and '.' is the group itself.
    if not isinstance(image_id, str) or not image_id or "/" in image_id or image_id in (".", IDS_DATASET):
        raise ValueError(f"image id {image_id!r} is not usable: expected a non-empty str without '/', "
                         f"not '.' or {IDS_DATASET!r}")
    return image_id


def _unit_float16(arr, what: str) -> np.ndarray:
    """Check values are finite and within [0, 1] (up to RANGE_TOL), clip, round to QUANTUM, cast to float16."""
    arr = np.asarray(arr)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{what}: expected a numeric array, got dtype {arr.dtype}")
    if arr.size:
        if not np.isfinite(arr).all():
            raise ValueError(f"{what}: contains NaN or inf")
        lo, hi = float(arr.min()), float(arr.max())
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise ValueError(f"{what}: values must lie in [0, 1], found range [{lo:.4g}, {hi:.4g}]")
    return (np.round(np.clip(arr, 0, 1) / QUANTUM) * QUANTUM).astype(np.float16)


def _create_maps(group: h5py.Group, name: str, data: np.ndarray) -> None:
    """One chunk per [H, W] plane, compressed (see the module docstring for the measurement).

    Leading dimensions are declared resizable only because HDF5 refuses a (1, H, W) chunk on a
    fixed-size dataset with k = 0; it keeps every map dataset chunked and compressed the same way.
    """
    lead = data.ndim - 2
    group.create_dataset(name, data=data, chunks=(1,) * lead + data.shape[-2:],
                         maxshape=(None,) * lead + data.shape[-2:], **COMPRESSION)


class StoreWriter:
    """Write a store to `<path>.tmp`; it is renamed onto `path` only when the writer closes cleanly.

    A reader (or Snakemake) never sees a half-written store: an exception inside the `with` block, or
    `abort()`, removes the temporary and leaves no file at `path`. A full disk raises `fsutil.DiskFull`,
    which estimates the store's size from the `expected` number of images.
    """

    def __init__(self, path, kind: str, class_names: list[str], scales=(), model_sha256: str = "",
                 config: dict | None = None, expected: int | None = None, rounds: int = 0):
        self.path = Path(path)
        if kind not in KINDS:
            raise ValueError(f"{self.path}: kind must be one of {KINDS}, got {kind!r}")
        class_names = list(class_names)
        if len(class_names) < 2 or not all(isinstance(c, str) for c in class_names):
            raise ValueError(f"{self.path}: class_names must be background plus at least one class name (str), "
                             f"got {class_names!r}")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"{self.path}: class_names has duplicates: {class_names!r}")
        try:
            config_json = json.dumps({} if config is None else config, sort_keys=True)
        except TypeError as e:
            raise ValueError(f"{self.path}: config is not JSON-serialisable ({e})") from None
        self.kind, self.class_names = kind, class_names
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._expected = expected
        self._atomic = atomic_path(self.path, needs=self._needs)
        self._tmp = self._atomic.__enter__()
        try:
            # No chunk cache: every chunk is written once, and a write that fails (disk full) raises here
            # instead of later, in h5py's object destructors, as a wall of ignored exceptions.
            self._h5 = h5py.File(self._tmp, "w", rdcc_nbytes=0)
            a = self._h5.attrs
            a["format"], a["version"], a["kind"] = FORMAT, VERSION, kind
            a["class_names"] = class_names
            a["scales"] = np.asarray([float(s) for s in scales], dtype=np.float64)
            a["model_sha256"] = str(model_sha256)
            a["config"] = config_json
            a["rounds"] = int(rounds)
        except BaseException as e:
            self._finish(e)
            raise

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._finish(exc)
        return False

    @property
    def closed(self) -> bool:
        return self._h5 is None

    def write(self, image_id: str, maps: np.ndarray, classes, extra: dict[str, np.ndarray] | None = None) -> None:
        """Add one image: `maps` [k, H, W] in [0, 1] at original size, `classes` [k] project indices."""
        if self.closed:
            raise ValueError(f"{self.path}: writer is closed")
        image_id = _check_image_id(image_id)
        where = f"{self.path}: image {image_id!r}"
        if image_id in self._seen:
            raise ValueError(f"{where}: duplicate image id")
        maps = np.asarray(maps)
        if maps.ndim != 3 or maps.shape[1] == 0 or maps.shape[2] == 0:
            raise ValueError(f"{where}: maps must be [k, H, W] with H, W > 0, got shape {maps.shape}")
        classes = np.asarray(classes).reshape(-1) if np.size(classes) else np.zeros(0, np.int64)
        if not np.issubdtype(classes.dtype, np.integer):
            raise ValueError(f"{where}: classes must be integers, got dtype {classes.dtype}")
        if len(classes) != maps.shape[0]:
            raise ValueError(f"{where}: {len(classes)} classes for {maps.shape[0]} maps")
        n = len(self.class_names)
        bad = [int(c) for c in classes if not 1 <= c <= n - 1]
        if bad:
            raise ValueError(f"{where}: class indices {bad} outside 1..{n - 1} "
                             f"(0 is background and never has a map; {n} class names)")
        if len(np.unique(classes)) != len(classes):
            raise ValueError(f"{where}: repeated class indices {classes.tolist()}")
        maps16 = _unit_float16(maps, f"{where}: maps")
        h, w = maps.shape[1:]
        extras16 = {}
        for name, arr in (extra or {}).items():
            if not isinstance(name, str) or not name or "/" in name or name in _RESERVED_DATASETS:
                raise ValueError(f"{where}: extra dataset name {name!r} is not usable")
            arr = np.asarray(arr)
            if arr.ndim < 2 or arr.shape[-2:] != (h, w):
                raise ValueError(f"{where}: extra {name!r} must be [..., {h}, {w}], got shape {arr.shape}")
            extras16[name] = _unit_float16(arr, f"{where}: extra {name!r}")

        g = self._h5.create_group(image_id)
        g.attrs["height"], g.attrs["width"] = int(h), int(w)
        _create_maps(g, "maps", maps16)
        g.create_dataset("classes", data=classes.astype(np.int16))
        for name, arr in extras16.items():
            _create_maps(g, name, arr)
        self._ids.append(image_id)
        self._seen.add(image_id)

    def close(self) -> None:
        """Finish the file and move it onto `path`."""
        self._finish(None)

    def abort(self) -> None:
        """Drop everything written so far; no file appears at `path`."""
        self._finish(_Aborted())

    def _needs(self, written: int) -> int | None:
        """The whole store's size, extrapolated from the images written so far."""
        return written * self._expected // len(self._ids) if self._expected and self._ids else None

    def _finish(self, error: BaseException | None) -> None:
        """Close the file, then rename it onto `path`, or remove it if `error` (or closing) failed the store."""
        if self._atomic is None:
            return
        atomic, self._atomic = self._atomic, None
        h5, self._h5 = getattr(self, "_h5", None), None
        closing_error = None
        try:
            if h5 is not None:
                if error is None:
                    h5.create_dataset(IDS_DATASET, data=np.array(self._ids, dtype=object),
                                      dtype=h5py.string_dtype())
                h5.close()
        except Exception as e:  # noqa: BLE001 - reported below, after the temporary is gone
            closing_error = e
        error = error or closing_error
        if error is None:
            atomic.__exit__(None, None, None)  # renames <path>.tmp onto path
            return
        atomic.__exit__(type(error), error, error.__traceback__)  # removes <path>.tmp; DiskFull if disk full
        if closing_error is not None and error is closing_error:
            raise closing_error


class _Aborted(Exception):
    """Thrown into fsutil.atomic_path so that it discards the temporary instead of renaming it."""


class StoreReader:
    """Lazy reader: opening reads only attributes and the id list; `read` loads one image.

    The HDF5 handle is opened per process (and dropped when pickled), so a reader can be handed to
    DataLoader workers: h5py handles must not be shared across fork.
    """

    def __init__(self, path, kind: str | None = None, class_names: list[str] | None = None):
        self.path = Path(path)
        self._h5 = None
        self._pid = None
        f = self._file()
        a = f.attrs
        fmt = _as_str(a["format"]) if "format" in a else None
        if fmt != FORMAT:
            self.close()
            raise ValueError(f"{self.path}: not a {FORMAT} file (format attribute: {fmt!r})")
        version = a.get("version")
        try:
            version_ok = int(version) == VERSION
        except (TypeError, ValueError):
            version_ok = False
        if not version_ok:
            self.close()
            found = version.item() if isinstance(version, np.generic) else version
            raise ValueError(f"{self.path}: {FORMAT} version {found!r} found, version {VERSION} expected")
        try:
            self.attrs = self._parse_attrs(a, fmt, version)
        except (KeyError, ValueError) as e:
            self.close()
            raise ValueError(f"{self.path}: {FORMAT} file with missing or bad attributes ({e})") from None
        if kind is not None and self.attrs["kind"] != kind:
            self.close()
            raise ValueError(f"{self.path}: store kind is {self.attrs['kind']!r}, expected {kind!r}")
        if class_names is not None and list(class_names) != self.attrs["class_names"]:
            self.close()
            raise ValueError(f"{self.path}: class_names differ: file has {self.attrs['class_names']}, "
                             f"expected {list(class_names)}")
        if IDS_DATASET not in f:
            self.close()
            raise ValueError(f"{self.path}: {FORMAT} file without its {IDS_DATASET!r} id list (damaged)")
        self.ids: list[str] = [_as_str(i) for i in f[IDS_DATASET][()]]
        self._idset = set(self.ids)

    @staticmethod
    def _parse_attrs(a, fmt: str, version) -> dict:
        return {
            "format": fmt,
            "version": int(version),
            "kind": _as_str(a["kind"]),
            "class_names": [_as_str(c) for c in a["class_names"]],
            "scales": [float(s) for s in np.atleast_1d(a["scales"])],
            "model_sha256": _as_str(a["model_sha256"]),
            "config": json.loads(_as_str(a["config"])),
            "rounds": int(a.get("rounds", 0)),
        }

    def _file(self) -> h5py.File:
        if self._h5 is None or self._pid != os.getpid():
            if not self.path.exists():
                raise FileNotFoundError(f"{self.path}: store file not found")
            try:
                self._h5 = h5py.File(self.path, "r")
            except OSError as e:
                raise ValueError(f"{self.path}: not a readable HDF5 file ({e})") from None
            self._pid = os.getpid()
        return self._h5

    def _group(self, image_id: str) -> h5py.Group:
        if image_id not in self._idset:
            raise KeyError(f"{self.path}: no image id {image_id!r}")
        return self._file()[image_id]

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id) -> bool:
        return image_id in self._idset

    def __iter__(self):
        return iter(self.ids)

    def read(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """(maps float32 [k, H, W], classes int64 [k]) of one image."""
        g = self._group(image_id)
        return g["maps"][()].astype(np.float32), g["classes"][()].astype(np.int64)

    def read_extra(self, image_id: str, name: str) -> np.ndarray | None:
        """An optional per-image float16 dataset (e.g. "rounds") as float32, or None if absent."""
        g = self._group(image_id)
        if name in _RESERVED_DATASETS or name not in g:
            return None
        return g[name][()].astype(np.float32)

    def size(self, image_id: str) -> tuple[int, int]:
        """(height, width) of one image, without reading its maps."""
        g = self._group(image_id)
        return int(g.attrs["height"]), int(g.attrs["width"])

    def close(self) -> None:
        if self._h5 is not None:
            if self._pid == os.getpid():
                self._h5.close()
            self._h5 = None

    def __enter__(self) -> "StoreReader":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_h5"], state["_pid"] = None, None
        return state

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


class ShardedStore:
    """Read-only view over the shard files of one split, as if they were one store.

    All shards must have the same kind and class names, and no image id may be in two shards.
    """

    def __init__(self, paths, kind: str | None = None, class_names: list[str] | None = None):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        paths = [Path(p) for p in paths]
        if not paths:
            raise ValueError("ShardedStore: no shard files given")
        self.readers: list[StoreReader] = []
        self._where: dict[str, StoreReader] = {}
        try:
            for p in paths:
                r = StoreReader(p, kind=kind, class_names=class_names)
                self.readers.append(r)
                first = self.readers[0]
                for key in ("kind", "class_names", "rounds"):
                    if r.attrs[key] != first.attrs[key]:
                        raise ValueError(f"{key} differs between shards: {first.path} has {first.attrs[key]!r}, "
                                         f"{r.path} has {r.attrs[key]!r}")
                for i in r.ids:
                    other = self._where.get(i)
                    if other is not None:
                        raise ValueError(f"image id {i!r} is in two shards: {other.path} and {r.path}")
                    self._where[i] = r
        except BaseException:
            self.close()
            raise
        self.ids: list[str] = [i for r in self.readers for i in r.ids]
        self.attrs = self.readers[0].attrs

    def _reader(self, image_id: str) -> StoreReader:
        r = self._where.get(image_id)
        if r is None:
            raise KeyError(f"{', '.join(str(x.path) for x in self.readers)}: no image id {image_id!r}")
        return r

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id) -> bool:
        return image_id in self._where

    def __iter__(self):
        return iter(self.ids)

    def read(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        return self._reader(image_id).read(image_id)

    def read_extra(self, image_id: str, name: str) -> np.ndarray | None:
        return self._reader(image_id).read_extra(image_id, name)

    def size(self, image_id: str) -> tuple[int, int]:
        return self._reader(image_id).size(image_id)

    def close(self) -> None:
        for r in self.readers:
            r.close()

    def __enter__(self) -> "ShardedStore":
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def file_sha256(path, chunk_size: int = 1 << 20) -> str:
    """sha256 of a file, streamed so that large checkpoints never sit in memory (model provenance)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------- IRN / SEAM interop

def _to_numpy(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor (IRN saves some entries as tensors)
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise ValueError(f"{what}: expected a numeric array, got an object array")
    return arr.astype(np.float32)


def _normalise(m: np.ndarray) -> np.ndarray:
    """Max-normalise one CAM into [0, 1]; a map already in [0, 1] is kept as it is.

    IRN's high_res and SEAM's saved CAMs are already divided by their max (+1e-5), so their values are
    kept and a round trip gives them back; raw CAMs get ReLU then division by their maximum.
    """
    lo, hi = (float(m.min()), float(m.max())) if m.size else (0.0, 0.0)
    if lo >= -RANGE_TOL and hi <= 1 + RANGE_TOL:
        return np.clip(m, 0, 1)
    m = np.maximum(m, 0)
    top = float(m.max())
    return m / top if top > 0 else m


def _load_npy_cams(path: Path, image_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one IRN or SEAM/PSA CAM dict; returns (maps [k, H, W] float32, project classes [k])."""
    where = f"{path} (image {image_id!r})"
    obj = np.load(path, allow_pickle=True)
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a pickled dict (IRN or SEAM style), got {type(obj).__name__}")
    if not obj:
        raise ValueError(f"{where}: empty CAM dict (SEAM style with no class), so the image size is unknown")
    if "keys" in obj:  # IRN: {"keys": 0-based fg indices, "cam": stride-4, "high_res": [k, H, W]}
        if "high_res" not in obj:
            raise ValueError(f"{where}: IRN-style CAM dict has no 'high_res' (found keys {sorted(obj)}); "
                             f"the stride-4 'cam' is not at image size")
        keys = np.asarray(obj["keys"].detach().cpu() if hasattr(obj["keys"], "detach") else obj["keys"]).reshape(-1)
        maps = _to_numpy(obj["high_res"], f"{where}: 'high_res'")
        if maps.ndim == 2 and len(keys) == 1:
            maps = maps[None]
        if maps.ndim != 3 or maps.shape[0] != len(keys):
            raise ValueError(f"{where}: 'high_res' shape {maps.shape} does not match {len(keys)} keys")
    elif obj and all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in obj):
        keys = np.array(sorted(int(k) for k in obj), dtype=np.int64)  # SEAM/PSA: {0-based fg index: HxW}
        planes = [_to_numpy(obj[k], f"{where}: key {k}") for k in keys]
        shapes = {p.shape for p in planes}
        if len(shapes) != 1 or planes[0].ndim != 2:
            raise ValueError(f"{where}: SEAM-style maps must all be HxW of one size, got shapes "
                             f"{[p.shape for p in planes]}")
        maps = np.stack(planes)
    else:
        raise ValueError(f"{where}: not an IRN dict (with 'keys'/'high_res') nor a SEAM dict "
                         f"({{0-based class index: HxW}}); keys: {list(obj)[:10]}")
    if not np.issubdtype(keys.dtype, np.integer):
        if keys.size and not np.all(np.equal(np.mod(keys, 1), 0)):
            raise ValueError(f"{where}: class keys must be integers, got {keys.tolist()}")
        keys = keys.astype(np.int64)
    if not np.isfinite(maps).all():
        raise ValueError(f"{where}: CAM contains NaN or inf")
    maps = np.stack([_normalise(m) for m in maps]) if len(maps) else maps
    return maps, keys.astype(np.int64) + 1


def import_npy(npy_dir, ids: list[str], out_path, class_names, allow_pickle: bool = False,
               config: dict | None = None) -> None:
    """Build a kind='cam' store from a directory of IRN- or SEAM/PSA-style `<id>.npy` CAM dicts.

    The style is detected per file. Project class = saved 0-based foreground key + 1.
    """
    npy_dir = Path(npy_dir)
    if not allow_pickle:
        raise ValueError(f"{npy_dir}: IRN/SEAM CAM .npy files are pickled dicts, and unpickling can run "
                         f"arbitrary code; pass allow_pickle=True only if you trust the files")
    with StoreWriter(out_path, kind="cam", class_names=class_names, config=config, expected=len(ids)) as w:
        for image_id in ids:
            path = npy_dir / f"{image_id}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: no CAM file for image id {image_id!r}")
            maps, classes = _load_npy_cams(path, image_id)
            try:
                w.write(image_id, maps, classes)
            except ValueError as e:
                raise ValueError(f"{path}: {e}") from None


def export_npy(store_paths: list, out_dir, style: str = "irn") -> None:
    """Write one `<id>.npy` CAM dict per image for IRN or SEAM/PSA code.

    irn: {"keys": classes - 1 (int64), "high_res": float32 [k, H, W]}. IRN's stride-4 "cam" entry is
    not written (the store has only image-size maps): IRN's eval_cam and cam_to_ir_label read high_res,
    but make_sem_seg_labels reads "cam". seam: {class - 1: float32 HxW}.
    """
    if style not in ("irn", "seam"):
        raise ValueError(f"export style must be 'irn' or 'seam', got {style!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with ShardedStore(store_paths) as store:
        for image_id in store:
            maps, classes = store.read(image_id)
            keys = classes - 1
            if style == "irn":
                obj = {"keys": keys.astype(np.int64), "high_res": maps.astype(np.float32)}
            else:
                obj = {int(k): m.astype(np.float32) for k, m in zip(keys, maps)}
            # Write through a handle: np.save on a path not ending in .npy would append ".npy".
            with atomic_path(out_dir / f"{image_id}.npy") as tmp, open(tmp, "wb") as fh:
                np.save(fh, obj, allow_pickle=True)
