"""Compute estimate of the paper setting (config/voc12_coco.yaml): FLOPs per rule, and GPU-hours at an
assumed sustained throughput. Counted, not timed: the models run on the meta device (no weights, no data).

    python benchmarks/flops.py [--tflops 30]

Forward FLOPs come from torch's FlopCounterMode on the real models at the stated input sizes; a training
step is counted as 3x its forward (forward + backward). The workload numbers below are the basis; the
COCO ones are approximations (see README, "Reproduce the paper").
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from locseg.models.cam import CamNet
from locseg.models.deeplab import build_deeplab
from locseg.models.segmenter import Segmenter

VOC_HW = (375, 500)        # the usual VOC image
COCO_HW = (480, 640)       # the usual COCO image (max_side 640)
TRAIN_AUG, TRAIN = 10_582, 1_464
COCO_IMAGES = 90_000       # train2017 images holding one of the 20 mapped categories (approximate)
COCO_PAIRS = 160_000       # (image, mapped category) pairs: the segmenter's samples (approximate)
VOC_CLASSES_PER_IMAGE = 1.5
CAM_VIEWS = 2 * (1.0 + 0.5**2 + 1.5**2 + 2.0**2)  # scales 1, .5, 1.5, 2 and flips, in units of scale-1 pixels


def forward_flops(model, *shapes) -> float:
    with torch.device("meta"):
        inputs = [torch.empty(s) for s in shapes]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.to("meta").eval()(*inputs)
    return counter.get_total_flops()


def rule_flops() -> dict[str, float]:
    with torch.device("meta"):
        cam, seg = CamNet(20, "resnet50", 16), Segmenter("resnet101", 16, None, 256)
        deeplab = build_deeplab(21, "resnet101")
    cam_train = forward_flops(cam, (1, 3, 512, 512))
    cam_voc, cam_coco = forward_flops(cam, (1, 3, *VOC_HW)), forward_flops(cam, (1, 3, *COCO_HW))
    seg_train = forward_flops(seg, (1, 3, 448, 448), (1, 1, 448, 448))
    seg_voc = forward_flops(seg, (1, 3, *VOC_HW), (1, 1, *VOC_HW))
    dl_train, dl_val = forward_flops(deeplab, (1, 3, 321, 321)), forward_flops(deeplab, (1, 3, *VOC_HW))
    return {
        "train_cam (10,582 images x 5 epochs, crop 512)": 3 * cam_train * TRAIN_AUG * 5,
        "extract_cams train_aug + train (4 scales + flip)": CAM_VIEWS * cam_voc * (TRAIN_AUG + TRAIN),
        "extract_cams coco (4 scales + flip)": CAM_VIEWS * cam_coco * COCO_IMAGES,
        "train_segmenter (pairs x 3 epochs, crop 448)": 3 * seg_train * COCO_PAIRS * 3,
        "resegment train_aug + train (3 rounds)": seg_voc * 3 * VOC_CLASSES_PER_IMAGE * (TRAIN_AUG + TRAIN),
        "train_deeplab pseudo + gt (2 x 10,582 x 20 epochs, crop 321)": 2 * 3 * dl_train * TRAIN_AUG * 20,
        "evaluate_deeplab pseudo + gt (2 x 1,449 val)": 2 * dl_val * 1_449,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tflops", type=float, default=30.0, help="assumed sustained TFLOP/s per GPU")
    args = parser.parse_args()
    flops = rule_flops()
    total = sum(flops.values())
    for what, f in {**flops, "total": total}.items():
        print(f"{what:<64} {f / 1e15:7.1f} PFLOP  {f / (args.tflops * 1e12) / 3600:5.1f} GPU-h")


if __name__ == "__main__":
    main()
