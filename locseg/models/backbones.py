"""Feature extractors shared by the CAM net, the segmenter and DeepLab.

Every backbone returns {"low": stride-4 features, "out": final features}, so heads never need to know
which backbone they sit on. Weights come from a file path or `imagenet` (torch's cache, see locseg.weights):
nothing is downloaded here.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter

from locseg.models.resnet38 import ResNet38
from locseg.checkpoints import load_weights_file
from locseg.weights import resolve

RESNETS = {"resnet18": resnet.resnet18, "resnet50": resnet.resnet50, "resnet101": resnet.resnet101}
SMALL_WIDTHS = (16, 32, 64, 128)


def _conv_bn(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SmallBackbone(nn.Module):
    """A four-stage plain CNN for the demo: fast on CPU, output stride 8.

    The last stage is dilated (wide context) for dense heads; the CAM net uses `last_dilation=1`, since a
    smaller receptive field keeps class evidence where it is (measured on the demo train split: CAM
    baseline 46.1% mIoU vs 44.5% with dilation 2)."""

    def __init__(self, in_channels: int = 3, widths=SMALL_WIDTHS, last_dilation: int = 2):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.stem = _conv_bn(in_channels, w1, stride=2)
        self.stage1 = nn.Sequential(_conv_bn(w1, w2, stride=2), _conv_bn(w2, w2))
        self.stage2 = nn.Sequential(_conv_bn(w2, w3, stride=2), _conv_bn(w3, w3))
        self.stage3 = nn.Sequential(_conv_bn(w3, w4, dilation=last_dilation),
                                    _conv_bn(w4, w4, dilation=last_dilation))
        self.low_channels, self.out_channels = w2, w4

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        low = self.stage1(self.stem(x))
        return {"low": low, "out": self.stage3(self.stage2(low))}


class ResNetBackbone(nn.Module):
    """torchvision ResNet trunk with dilation: output stride 16 (IRN) or 8 (DeepLab)."""

    def __init__(self, name: str, in_channels: int = 3, output_stride: int = 16):
        super().__init__()
        dilate = {16: [False, False, True], 8: [False, True, True]}[output_stride]
        if name == "resnet18":  # torchvision's BasicBlock refuses replace_stride_with_dilation
            net = RESNETS[name](weights=None)
            _dilate_basic_blocks(net, dilate)
        else:
            net = RESNETS[name](weights=None, replace_stride_with_dilation=dilate)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        self.body = IntermediateLayerGetter(net, return_layers={"layer1": "low", "layer4": "out"})
        self.low_channels = 64 if name == "resnet18" else 256
        self.out_channels = 512 if name == "resnet18" else 2048

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.body(x)


def _dilate_basic_blocks(net, dilate) -> None:
    """Stride -> dilation for BasicBlock layers, as torchvision's _make_layer does for Bottlenecks: the first
    block of a dilated layer keeps the previous dilation, later blocks use the new one (same state dict)."""
    dilation = 1
    for layer, on in zip((net.layer2, net.layer3, net.layer4), dilate):
        if not on:
            continue
        previous, dilation = dilation, dilation * 2
        for i, block in enumerate(layer):
            d = previous if i == 0 else dilation
            for conv in (block.conv1, block.conv2):
                conv.stride, conv.dilation, conv.padding = (1, 1), (d, d), (d, d)
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)


def build_backbone(name: str, in_channels: int = 3, output_stride: int = 16, weights: str | None = None,
                   small_dilation: int = 2):
    """Config name -> backbone module, optionally initialised from an RGB state dict (a file or `imagenet`).

    With extra input channels (the segmenter's CAM cue) the RGB filters of the first conv are kept and
    the extra channels start at zero, so pretrained features are undisturbed at the start of training.
    """
    if name == "small":
        model = SmallBackbone(in_channels, last_dilation=small_dilation)
    elif name == "resnet38_seam":
        if weights:
            raise ValueError("resnet38_seam weights are SEAM checkpoints: load them through CamNet")
        return ResNet38(in_channels)
    elif name in RESNETS:
        model = ResNetBackbone(name, in_channels, output_stride)
    else:
        raise ValueError(f"unknown backbone {name!r}; choose small, resnet38_seam, {', '.join(RESNETS)}")
    if weights:
        path = resolve(weights, name)
        _load_rgb_weights(model, load_weights_file(path, f"{name} backbone"), path)
    return model


def _load_rgb_weights(model: nn.Module, state: dict, path: str) -> None:
    target = model.body if isinstance(model, ResNetBackbone) else model
    own = target.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}  # classifier of ImageNet nets
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(
            f"{path}: backbone weights do not match; missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
    for key, value in state.items():
        if own[key].shape != value.shape:
            if value.ndim == 4 and value.shape[1] == 3 and own[key].shape[1] > 3:
                padded = torch.zeros_like(own[key])
                padded[:, :3] = value
                state[key] = padded
            else:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(own[key].shape)}")
    target.load_state_dict(state, strict=True)
