# locseg: locate (CAMs), then segment (class-agnostic resegmentation) -> pseudo labels -> DeepLab.
# This file only wires: config, includes and the default target. Stages live in workflow/rules/.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


# gpu=N (profiles/default caps it locally) is tallied per job, not across jobs, on a cluster executor:
# there each job gets its own GPUs from SLURM, so a local cap left on never serialises GPU jobs.
resource_scopes:
    gpu="local",


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/weights.smk"
include: "workflow/rules/cam.smk"
include: "workflow/rules/segmenter.smk"
include: "workflow/rules/masks.smk"
include: "workflow/rules/deeplab.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        rules.eval_cams.output.json.format(split=SPLITS["pseudo_eval"]),
        rules.evaluate_masks.output.json.format(split=SPLITS["pseudo_eval"]),
        rules.export_masks.output.masks.format(split=SPLITS["pseudo"]),
        rules.supervision_gap.output.json.format(split=SPLITS["val"]),
        rules.export_deeplab_pytorch.output.root,
        rules.report.output.html,
