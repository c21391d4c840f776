"""DeepLabv3+ decoder pieces shared by the segmenter and the small DeepLab: stride-4 features sharpen the
coarse ASPP output, so object boundaries survive the stride-8/16 encoder."""

from __future__ import annotations

from torch import nn


def low_projection(cin: int, width: int) -> nn.Sequential:
    """1x1 conv squeezing the stride-4 features to width // 2 channels (they must not swamp the ASPP's)."""
    return nn.Sequential(nn.Conv2d(cin, width // 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(inplace=True))


def decoder_head(cin: int, width: int, out: int) -> nn.Sequential:
    """Two 3x3 conv-BN-ReLU on the concatenated (upsampled ASPP, projected low-level) features, then logits."""
    return nn.Sequential(
        nn.Conv2d(cin, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, width, 3, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.Conv2d(width, out, 1),
    )
