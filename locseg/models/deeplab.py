"""torchvision DeepLabV3 for the retraining step, on a ResNet or the small demo backbone."""

from __future__ import annotations

from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50, deeplabv3_resnet101
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

from locseg.models.backbones import SmallBackbone, _load_rgb_weights
from locseg.train import load_weights_file
from locseg.weights import resolve

RESNET_DEEPLABS = {"resnet50": deeplabv3_resnet50, "resnet101": deeplabv3_resnet101}


class _OutOnly(nn.Module):
    """DeepLabV3 wants a backbone returning {'out': ...}."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x):
        return {"out": self.backbone(x)["out"]}


def build_deeplab(num_classes: int, backbone: str = "small", weights: str | None = None) -> DeepLabV3:
    """`weights` is an optional backbone state dict: a file, or `imagenet` (torch's cache; never downloaded)."""
    if backbone in RESNET_DEEPLABS:
        model = RESNET_DEEPLABS[backbone](weights=None, weights_backbone=None, num_classes=num_classes)
        if weights:
            weights = resolve(weights, backbone)
            state = load_weights_file(weights, f"{backbone} backbone")
            state = {k: v for k, v in state.items() if not k.startswith("fc.")}
            missing, unexpected = model.backbone.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f"{weights}: backbone keys missing {missing[:8]}, unexpected {unexpected[:8]}")
        return model
    if backbone != "small":
        raise ValueError(f"unknown DeepLab backbone {backbone!r}; choose small, {', '.join(RESNET_DEEPLABS)}")
    trunk = SmallBackbone(3)
    if weights:
        weights = resolve(weights, "small")
        _load_rgb_weights(trunk, load_weights_file(weights, "small backbone"), weights)
    width = 64
    head = nn.Sequential(
        ASPP(trunk.out_channels, [2, 4, 6], out_channels=width),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, num_classes, 1),
    )
    return DeepLabV3(_OutOnly(trunk), head)
