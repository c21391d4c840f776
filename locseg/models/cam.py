"""Multi-label classifier whose 1x1 classifier weights double as the CAM head (as in IRN)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from locseg.models.backbones import build_backbone
from locseg.models.resnet38 import load_seam_weights


class CamNet(nn.Module):
    """Backbone -> global average pooling -> bias-free 1x1 conv over foreground classes.

    Because the classifier is linear and bias-free, the same weights applied before pooling give the
    class activation map: CAM_c = ReLU(w_c . features).
    """

    def __init__(self, num_foreground: int, backbone: str = "small", output_stride: int = 16, weights=None):
        super().__init__()
        seam = backbone == "resnet38_seam"
        self.backbone = build_backbone(backbone, 3, output_stride, None if seam else weights, small_dilation=1)
        self.classifier = nn.Conv2d(self.backbone.out_channels, num_foreground, 1, bias=False)
        if seam and weights:
            # A SEAM checkpoint holds the trunk and the classifier: CAMs come out without any training.
            head = load_seam_weights(self.backbone, weights, num_foreground)
            self.classifier.weight.data.copy_(head["classifier.weight"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(x)["out"]
        return self.classifier(F.adaptive_avg_pool2d(feats, 1)).flatten(1)

    def cams(self, x: torch.Tensor) -> torch.Tensor:
        """Raw (un-normalised) CAMs [B, C, h, w] at the backbone's output stride."""
        return F.relu(self.classifier(self.backbone(x)["out"]))
