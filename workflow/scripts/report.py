"""Rule report: the numbers, plots, overlays, run times and config in one HTML file and its Markdown twin."""

from locseg.data.voc import read_split
from locseg.logs import log_to
from locseg.overlays import overlay_grid, sample_ids
from locseg.report import write_report
from locseg.sources import gt_paths, image_paths

with log_to(snakemake.log[0]):
    cfg, inp, out, params = snakemake.config, snakemake.input, snakemake.output, snakemake.params
    pe, val = params.pseudo_eval, params.val
    ids = sample_ids(read_split(inp.split), params.overlay_images)
    overlay_grid(out.overlay, ids, image_paths(cfg, val, inp.split), gt_paths(cfg, inp.split), snakemake.params.classes,
                 cam_stores=list(inp.get("grid_cams", [])), mask_dir=inp.get("grid_masks"),
                 pred_dirs={"pseudo": inp.pred_pseudo, "gt": inp.pred_gt})
    write_report(
        out.html, out.md,
        cams_json=inp.cams, masks_json=inp.masks,
        deeplab_jsons={"pseudo": inp.deeplab_pseudo, "gt": inp.deeplab_gt}, gap_json=inp.gap,
        plots={
            f"CAM baseline: mIoU vs background threshold ({pe})": inp.cams_curve,
            f"IoU per class: CAM baseline and pseudo masks ({pe})": inp.masks_per_class,
            f"image | GT | CAM | pseudo mask ({pe})": inp.masks_overlay,
            f"IoU per class: DeepLab trained on pseudo labels ({val})": inp.deeplab_pseudo_per_class,
            f"IoU per class: DeepLab trained on GT labels ({val})": inp.deeplab_gt_per_class,
            f"image | GT | DeepLab predictions ({val})": out.overlay,
        },
        benchmarks_dir=params.benchmarks, logs_dir=params.logs, config=cfg, validation_json=inp.validation,
    )
