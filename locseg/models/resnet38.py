"""ResNet-38 ("wider ResNet", Wu et al.) trunk laid out like SEAM's CAM network, so its weights load as-is.

SEAM (Wang et al., CVPR 2020) and PSA (Ahn & Kwak, CVPR 2018) share one trunk definition. This module
re-implements that trunk with the same module names, so the trunk part of a released ``resnet38_SEAM.pth``
loads with ``strict=True``; :func:`seam_key_map` splits a checkpoint into trunk and head entries, and
:func:`load_seam_weights` loads a file with a readable error when it does not fit. Nothing is downloaded.

Layout (pre-activation residual units: BN -> ReLU sits at the *start* of each unit; the input stem
``conv1a`` has no BN of its own, the next unit's ``bn_branch2a`` normalises it):

    conv1a            3x3 conv 3 -> 64                          stride 1
    b2, b2_1, b2_2    two 3x3 convs -> 128                      stride 2
    b3, b3_1, b3_2    two 3x3 convs -> 256                      stride 4
    b4, b4_1..b4_5    two 3x3 convs -> 512                      stride 8
    b5, b5_1, b5_2    two 3x3 convs -> 1024 (mid 512), dil 2    stride 8 (b5's first conv undilated)
    b6                1x1 / 3x3 / 1x1 bottleneck -> 2048, dil 4, dropout 0.3
    b7                1x1 / 3x3 / 1x1 bottleneck -> 4096, dil 4, dropout 0.5
    bn7               BN + ReLU on b7's output (4096 channels, stride 8)

A unit whose input and output shapes differ has a 1x1 projection shortcut ``conv_branch1`` applied to the
*normalised* input; the others add the raw input. All convs are bias-free.

SEAM's heads are *not* part of :class:`ResNet38`: ``fc8`` (1x1 conv 4096 -> 21, bias-free, row 0 is the
background score; PSA's classifier has the 20 foreground rows only), and the PCM branch ``f8_3``
(512 -> 64), ``f8_4`` (1024 -> 128) and ``f9`` (195 -> 192), all 1x1 and bias-free.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from locseg.checkpoints import load_weights_file

# First name component of every checkpoint entry that belongs to a SEAM/PSA head rather than the trunk.
CLASSIFIER_KEY = "fc8.weight"
PCM_PREFIXES = ("f8_3", "f8_4", "f9")
HEAD_PREFIXES = ("fc8",) + PCM_PREFIXES
BACKGROUND_KEY = "fc8.weight[background]"  # head entry holding SEAM's background row of fc8, unused here
_SHOW = 10  # keys listed per category in error messages


class _WideUnit(nn.Module):
    """Pre-activation unit with two 3x3 convs (conv_branch2a may stride; its dilation can differ)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, dilation: int = 1, first_dilation=None):
        super().__init__()
        d0 = dilation if first_dilation is None else first_dilation
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, mid, 3, stride, padding=d0, dilation=d0, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(mid)
        self.conv_branch2b1 = nn.Conv2d(mid, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.conv_branch1 = None
        if cin != cout or stride != 1:
            self.conv_branch1 = nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns (unit output, the unit's normalised input relu(bn(x)))."""
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.conv_branch1 is None else self.conv_branch1(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(self.conv_branch2a(pre))))
        return shortcut + y, pre


class _BottleneckUnit(nn.Module):
    """Pre-activation 1x1 (cout/4) -> 3x3 dilated (cout/2) -> 1x1 (cout) unit, channel dropout before the
    3x3 and the last 1x1 conv; always a projection shortcut in ResNet-38 (channels grow)."""

    def __init__(self, cin: int, cout: int, dilation: int, dropout: float):
        super().__init__()
        q, h = cout // 4, cout // 2
        self.bn_branch2a = nn.BatchNorm2d(cin)
        self.conv_branch2a = nn.Conv2d(cin, q, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(q)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(q, h, 3, padding=dilation, dilation=dilation, bias=False)
        self.bn_branch2b2 = nn.BatchNorm2d(h)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(h, cout, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = F.relu(self.bn_branch2a(x))
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return self.conv_branch1(pre) + y, pre


class ResNet38(nn.Module):
    """ResNet-38 trunk, output stride 8, state-dict names identical to SEAM's trunk.

    forward(x) -> {"low": relu(b4.bn_branch2a(.)) at stride 4 (256 ch; SEAM's 'conv3'),
                   "out": relu(bn7(b7(.))) at stride 8 (4096 ch; SEAM's 'conv6', what fc8 sees)}.

    Note SEAM trains with every BatchNorm in eval mode and conv1a/b2* frozen; that policy is the
    caller's (this module behaves like any nn.Module under train()/eval()).
    """

    low_channels = 256
    out_channels = 4096

    def __init__(self, in_channels: int = 3, dropout6: float = 0.3, dropout7: float = 0.5):
        super().__init__()
        self.conv1a = nn.Conv2d(in_channels, 64, 3, padding=1, bias=False)
        self.b2 = _WideUnit(64, 128, 128, stride=2)
        self.b2_1 = _WideUnit(128, 128, 128)
        self.b2_2 = _WideUnit(128, 128, 128)
        self.b3 = _WideUnit(128, 256, 256, stride=2)
        self.b3_1 = _WideUnit(256, 256, 256)
        self.b3_2 = _WideUnit(256, 256, 256)
        self.b4 = _WideUnit(256, 512, 512, stride=2)
        for i in range(1, 6):
            setattr(self, f"b4_{i}", _WideUnit(512, 512, 512))
        self.b5 = _WideUnit(512, 512, 1024, dilation=2, first_dilation=1)
        self.b5_1 = _WideUnit(1024, 512, 1024, dilation=2)
        self.b5_2 = _WideUnit(1024, 512, 1024, dilation=2)
        self.b6 = _BottleneckUnit(1024, 2048, dilation=4, dropout=dropout6)
        self.b7 = _BottleneckUnit(2048, 4096, dilation=4, dropout=dropout7)
        self.bn7 = nn.BatchNorm2d(4096)
        self._units = ["b2", "b2_1", "b2_2", "b3", "b3_1", "b3_2", "b4"] + [f"b4_{i}" for i in range(1, 6)]
        self._units += ["b5", "b5_1", "b5_2", "b6", "b7"]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.conv1a(x)
        low = None
        for name in self._units:
            x, pre = getattr(self, name)(x)
            if name == "b4":
                low = pre  # b3_2's output, normalised: stride 4, 256 channels
        return {"low": low, "out": F.relu(self.bn7(x))}


def _is_head_key(key: str) -> bool:
    return key.split(".", 1)[0] in HEAD_PREFIXES


def seam_key_map(state: dict, num_foreground: int = 20) -> tuple[dict, dict]:
    """Split a SEAM (or PSA) CAM checkpoint into (trunk state dict for ResNet38, head dict).

    The head dict holds ``classifier.weight`` ([num_foreground, 4096, 1, 1], for locseg's CamNet) taken
    from ``fc8.weight``: SEAM's fc8 has a background row 0 (dropped, kept as ``fc8.weight[background]``),
    PSA's has the foreground rows only. Every other head entry (PCM: f8_3, f8_4, f9, ...) is returned
    under its original name: locseg does not use them, the caller should log them. A ``module.``
    prefix (DataParallel) is stripped. Anything not recognised as a head goes to the trunk dict, so a
    strict load reports it instead of it vanishing silently.
    """
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    trunk, head = {}, {}
    for key, value in state.items():
        if key == CLASSIFIER_KEY:
            rows = value.shape[0] if value.ndim else -1
            if value.ndim != 4 or rows not in (num_foreground, num_foreground + 1):
                raise ValueError(
                    f"{key} has shape {tuple(value.shape)}; expected [{num_foreground} or "
                    f"{num_foreground + 1}, C, 1, 1] for {num_foreground} foreground classes"
                )
            if rows == num_foreground + 1:  # SEAM: row 0 scores the background
                head[BACKGROUND_KEY] = value[:1]
                value = value[1:]
            head["classifier.weight"] = value
        elif _is_head_key(key):
            head[key] = value
        else:
            trunk[key] = value
    return trunk, head


def _shape(value) -> tuple | str:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__


def _listing(what: str, keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return f"{len(keys)} {what} key(s): {', '.join(keys[:_SHOW])}{more}"


def load_seam_weights(trunk: ResNet38, path, num_foreground: int = 20) -> dict:
    """Load the trunk of a SEAM/PSA checkpoint file strictly into ``trunk``; return the head dict.

    Raises ValueError naming the file, with counts and the first keys of each missing/unexpected set and
    of the wrongly shaped ones (key, found and expected shape). BatchNorm ``num_batches_tracked`` counters
    are optional (old or converted checkpoints lack them); they keep the module's value when absent.
    """
    path = Path(path)
    state = load_weights_file(path, "SEAM ResNet-38")
    try:
        weights, head = seam_key_map(state, num_foreground)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    own = trunk.state_dict()
    missing = sorted(k for k in own if k not in weights and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in weights if k not in own)
    mismatched = sorted(
        f"{k} {_shape(weights[k])} (expected {tuple(own[k].shape)})"
        for k in own
        if k in weights and _shape(weights[k]) != tuple(own[k].shape)
    )
    problems = []
    if missing:
        problems.append(_listing("missing", missing))
    if unexpected:
        problems.append(_listing("unexpected", unexpected))
    if mismatched:
        problems.append(_listing("wrongly shaped", mismatched))
    if problems:
        raise ValueError(f"{path}: not a SEAM ResNet-38 trunk; " + "; ".join(problems))
    for key, value in own.items():
        weights.setdefault(key, value)  # only absent num_batches_tracked counters reach here
    trunk.load_state_dict(weights, strict=True)
    return head
