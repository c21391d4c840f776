"""Class-agnostic segmenter: RGB + one CAM cue in, one object-mask logit out (DeepLabv3+-style)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.segmentation.deeplabv3 import ASPP

from locseg.models.backbones import build_backbone
from locseg.models.decoder import decoder_head, low_projection


class Segmenter(nn.Module):
    """The cue enters twice, as in the paper's code: as a fourth input channel and again in front of the
    ASPP (and of the decoder), so deep layers still see where the object is after striding.
    It never sees a class id: the same weights serve every class."""

    def __init__(self, backbone: str = "small", output_stride: int = 16, weights=None, width: int = 64):
        super().__init__()
        self.encoder = build_backbone(backbone, 4, output_stride, weights)
        rates = [6, 12, 18] if output_stride == 16 else [12, 24, 36]
        if backbone == "small":
            rates = [2, 4, 6]
        self.aspp = ASPP(self.encoder.out_channels + 1, rates, out_channels=width)
        self.low_proj = low_projection(self.encoder.low_channels, width)
        self.decoder = decoder_head(width + width // 2 + 1, width, 1)

    def forward(self, image: torch.Tensor, cue: torch.Tensor) -> torch.Tensor:
        """image [B,3,H,W] normalised, cue [B,1,H,W] in [0,1] -> logits [B,1,H,W]."""
        feats = self.encoder(torch.cat([image, cue], 1))
        out = feats["out"]
        x = self.aspp(torch.cat([out, _resize(cue, out)], 1))
        low = feats["low"]
        x = torch.cat([_resize(x, low), self.low_proj(low), _resize(cue, low)], 1)
        return F.interpolate(self.decoder(x), size=image.shape[-2:], mode="bilinear", align_corners=False)


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
