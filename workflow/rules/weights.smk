# Pretrained weights: torchvision's ImageNet ResNets into torch's cache (TORCH_HOME), before any training job.

from locseg.weights import IMAGENET_BACKBONES


localrules:
    fetch_weights,


rule fetch_weights:
    """Local rule (on a cluster it runs on the login node, which has internet): download a backbone's
    ImageNet weights into torch's cache unless they are there; training jobs only read the cache. The
    output is a note of where the file is, so a rerun never deletes or re-downloads the cache."""
    output:
        note=f"{RESULTS}/weights/{{backbone}}.json",
    log:
        log_path("fetch_weights", "{backbone}"),
    benchmark:
        bench_path("fetch_weights", "{backbone}")
    wildcard_constraints:
        backbone="|".join(IMAGENET_BACKBONES),
    script:
        "../scripts/fetch_weights.py"
