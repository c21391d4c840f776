# Pretrained weights: torchvision's ImageNet ResNets and the released SAM checkpoints into torch's cache
# (TORCH_HOME), before any job that reads them.

from locseg.weights import IMAGENET_BACKBONES, SAM_CHECKPOINTS, SAM_PREFIX


localrules:
    fetch_weights,


rule fetch_weights:
    """Local rule (on a cluster it runs on the login node, which has internet): download a backbone's
    ImageNet weights (`sam_<model>`: a SAM checkpoint, SHA-256 checked) into torch's cache unless they are
    there; the jobs that use them only read the cache. The
    output is a note of where the file is, so a rerun never deletes or re-downloads the cache."""
    output:
        note=f"{RESULTS}/weights/{{backbone}}.json",
    log:
        log_path("fetch_weights", "{backbone}"),
    benchmark:
        bench_path("fetch_weights", "{backbone}")
    wildcard_constraints:
        backbone="|".join([*IMAGENET_BACKBONES, *(SAM_PREFIX + m for m in SAM_CHECKPOINTS)]),
    script:
        "../scripts/fetch_weights.py"
