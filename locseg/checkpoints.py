"""Checkpoints (docs/formats.md, "Checkpoints") and user-supplied weights files: plain state dicts plus
metadata, always loaded with weights_only=True."""

from __future__ import annotations

from pathlib import Path

import torch

from locseg import __version__
from locseg.fsutil import atomic_path

CHECKPOINT_FORMAT = "locseg.checkpoint"
# Version 1 was written both before and after the small DeepLab got its decoder (0cefcf0), so it does not say
# which layout a file holds: version-1 files load only where their tensors fit the model (docs/formats.md).
CHECKPOINT_VERSION = 2


def save_checkpoint(path, model: torch.nn.Module, kind: str, meta: dict) -> None:
    """State dict plus plain metadata, loadable with weights_only=True; written atomically."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "kind": kind,
        "locseg_version": __version__,
        "meta": meta,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    size = sum(v.nbytes for v in payload["state_dict"].values())
    with atomic_path(path, needs=lambda written: max(size, written)) as tmp:
        with open(tmp, "wb") as f:
            torch.save(payload, f)


def load_checkpoint(path, kind: str, class_names: list[str] | None = None) -> dict:
    """Load a locseg checkpoint, refusing other formats, kinds, versions or class lists."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise ValueError(f"{path}: not a readable checkpoint ({e})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a locseg checkpoint (no format={CHECKPOINT_FORMAT!r})")
    _check_version(path, payload)
    if payload.get("kind") != kind:
        raise ValueError(f"{path}: a {payload.get('kind')!r} checkpoint where a {kind!r} one is expected")
    found = payload["meta"].get("class_names")
    if class_names is not None and found != list(class_names):
        raise ValueError(f"{path}: trained for classes {found}, config has {list(class_names)}")
    return payload


def load_model(path, kind: str, class_names: list[str] | None, build) -> tuple[torch.nn.Module, dict]:
    """The model `build(meta)` makes, with the checkpoint's tensors, and its meta. A state dict that does not
    fit the model is one error naming the file and its format version, never load_state_dict's traceback."""
    payload = load_checkpoint(path, kind, class_names)
    model = build(payload["meta"])
    misfit = _misfit(model.state_dict(), payload["state_dict"])
    if misfit:
        version = payload["version"]
        why = (f"format version {version} found, version {CHECKPOINT_VERSION} expected: written by an older locseg "
               f"whose {kind} model differs" if version != CHECKPOINT_VERSION
               else f"format version {version}, but its tensors do not fit the {kind} model its meta describes")
        raise ValueError(f"{path}: {why} ({misfit}); train it again (snakemake --forcerun train_{kind})")
    model.load_state_dict(payload["state_dict"])
    return model, payload["meta"]


def _check_version(path: Path, payload: dict) -> None:
    """Version 1 is read too: load_model then checks that its tensors fit (see CHECKPOINT_VERSION)."""
    found = payload.get("version")
    if found not in (1, CHECKPOINT_VERSION):
        raise ValueError(f"{path}: checkpoint format version {found} found, version {CHECKPOINT_VERSION} expected "
                         f"(this locseg also reads version 1)")


def _misfit(expected: dict, found: dict) -> str:
    """'' when `found` has exactly `expected`'s tensor names and shapes, else what differs, briefly."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    reshaped = [k for k in expected if k in found and tuple(expected[k].shape) != tuple(found[k].shape)]
    parts = [f"{len(names)} tensors {what}, e.g. {names[0]!r}"
             for names, what in ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape"))
             if names]
    return "; ".join(parts)


def load_weights_file(path, what: str) -> dict:
    """A user-supplied pretrained state dict (never downloaded). Accepts {'state_dict': ...} wrappers, and a
    locseg CAM checkpoint, whose trained backbone it returns as a plain backbone state dict (`weights: cam`:
    where no ImageNet weights exist, as for the demo's small backbone, the CAM net is the best start)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} weights file not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT and state.get("kind") == "cam":
        _check_version(path, state)
        trunk = {k.removeprefix("backbone."): v for k, v in state["state_dict"].items() if k.startswith("backbone.")}
        return {k.removeprefix("body."): v for k, v in trunk.items()}  # a ResNet's torchvision names
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: {what} weights must be a state dict, found {type(state).__name__}")
    return state
