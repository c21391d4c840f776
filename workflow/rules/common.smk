# Validation before any job runs, shared names and small input functions.

import os
from functools import cache

from locseg.config import SCHEMA, ConfigError, validate_config
from locseg.fingerprint import code_fingerprint, stat_files, stats_fingerprint, tree_files
from locseg.shards import shard_names
from locseg.sources import EXTERNAL, dataset_files
from locseg.weights import CAM_NET, IMAGENET, SAM_PREFIX


try:
    # Found next to this file, so the workflow also works as a Snakemake module from another directory.
    validate_config(config, SCHEMA)
except ConfigError as err:
    raise WorkflowError(str(err)) from None


DATASET = config["dataset"]
SPLITS = DATASET["splits"]
SHARDS = shard_names(config["shards"])
RESULTS = config["outdir"]
CAM_MODEL = f"{RESULTS}/models/cam.pt"  # written by train_cam; loaded by the stages whose weights are "cam"
# The GPUs a GPU stage's job asks for (resources: gpu): none with device: cpu, so on a CPU-only run the
# workstation's one-GPU cap (profiles/default) does not serialise jobs that use no GPU, and a cluster
# job asks SLURM for none.
GPUS_PER_JOB = 0 if config["device"] == "cpu" else 1


wildcard_constraints:
    split=r"[^/]+",
    shard=r"\d{3}",
    labels=r"pseudo|gt",


def raw_split_file(split):
    """A split list as the dataset ships it; only validate_dataset (and demo_data) touch these."""
    return f"{DATASET['root']}/{DATASET['split_dir']}/{split}.txt"


def split_file(split):
    """The ids of a split that passed validate_dataset: what every other stage reads, never the raw list,
    so a skipped image is skipped everywhere."""
    return f"{RESULTS}/splits/{split}.txt"


def _patch_snakemake_params_reset():
    """Snakemake 9 (up to 9.27.1 at least) evaluates every script job's params when it builds the DAG and,
    once the job's inputs are ready, resets `params` but not the `non_derived_params` it records in
    .snakemake/metadata. The local executor reads `params` again and so refreshes both; a cluster
    executor (SLURM) does not, and recorded the digest of a demo that did not exist yet: every SLURM job
    downstream then saw "params changed" and reran its upstream stages inside its own allocation
    (tests/workflow/test_slurm.py). Resetting both makes the recorded params those the job ran with.
    A no-op where Snakemake's Job lacks these attributes, and applied once per process (module use)."""
    from snakemake.jobs import Job

    reset = Job.reset_params_and_resources
    if getattr(reset, "locseg_patched", False) or not all(
            hasattr(Job, a) for a in ("_non_derived_params", "_params_and_resources_resetted")):
        return

    def reset_params_and_resources(job):
        if not job._params_and_resources_resetted:
            job._non_derived_params = None
        reset(job)

    reset_params_and_resources.locseg_patched = True
    Job.reset_params_and_resources = reset_params_and_resources


_patch_snakemake_params_reset()


# Dataset files are params, not inputs (~130k files at VOC + COCO scale): a digest of their stats. Use
# these as lambdas, so they are computed when needed: after demo_data has written the files.


def data_version(split, *kinds):
    """Param of every job that reads a split's dataset files of these kinds ('images', 'masks'): a digest
    of their (path, size, mtime), so editing, replacing or deleting one reruns exactly those jobs."""
    return _version(split, kinds, _list_mtime(split))


def presence_version(split):
    """Param of validate_dataset: which of the split's files exist. It checks each file once, so it
    reruns (and everything after it) when a listed file appears or disappears; a content edit reruns
    only the stages that read the file (data_version), which check it again on read."""
    return _version(split, None, _list_mtime(split))


def _list_mtime(split):
    path = config["coco"]["annotations"] if split == EXTERNAL else raw_split_file(split)
    return os.stat(path).st_mtime_ns if os.path.exists(path) else None


@cache
def _version(split, kinds, list_mtime):
    """Once per split, kinds and DAG build (many jobs share them). The list's mtime is in the key because
    demo_data rewrites the lists with the data: jobs that run after it see the new files."""
    files, stats = _stats(split, list_mtime)
    if kinds is None:
        return stats_fingerprint(stats, contents=False)
    return stats_fingerprint({p: stats[p] for kind in kinds for p in files.get(kind, [])})


@cache
def _stats(split, list_mtime):
    files = dataset_files(config, split)
    return files, stat_files(p for paths in files.values() for p in paths)


def code_version(script):
    """Param of every stage: digest of the locseg code its script imports (locseg.fingerprint), so a
    library change reruns exactly the stages that import the changed module (and what follows)."""
    return code_fingerprint(workflow.source_path(f"../scripts/{script}.py"))  # next to this file: module-ready


def pick(section, *keys):
    """The subset of a config section that a rule's result depends on (its params trigger reruns).
    `weights: cam` becomes the CAM net's checkpoint file (an input too, see weights_input)."""
    picked = {k: config[section][k] for k in keys}
    if picked.get("weights") == CAM_NET:
        picked["weights"] = CAM_MODEL
    return picked


def weights_input(section):
    """A pretrained weights file is an input, so replacing it reruns the stage; `imagenet` waits for
    fetch_weights, so a missing cache stops the run before any training job; `cam` waits for train_cam."""
    weights = config[section]["weights"]
    if weights == IMAGENET:
        return [f"{RESULTS}/weights/{config[section]['backbone']}.json"]
    if weights == CAM_NET:
        return [CAM_MODEL]
    return [weights] if weights else []


def log_path(rule_name, pattern=None):
    return f"{RESULTS}/logs/{rule_name}/{pattern}.log" if pattern else f"{RESULTS}/logs/{rule_name}.log"


def bench_path(rule_name, pattern=None):
    return f"{RESULTS}/benchmarks/{rule_name}/{pattern}.tsv" if pattern else f"{RESULTS}/benchmarks/{rule_name}.tsv"


def resume_path(name):
    """A training job's resumable state (locseg/resume.py): not an output, so Snakemake keeps it when the job
    is killed, and the rerun continues from it."""
    return f"{RESULTS}/resume/{name}.pt"


# Input functions of the stage rules. They name rules.X outputs, looked up only when called (after every
# rule file is read).


def imports_cams(split):
    """With cam.source 'import' the VOC splits' CAMs come from .npy files; the external split is still
    extracted by the CAM net (it gives the segmenter's cues)."""
    return config["cam"]["source"] == "import" and split != EXTERNAL


def cam_split_inputs(wc):
    """A VOC split needs its image labels; the external split reads its classes from COCO JSON."""
    inputs = {"split": split_file(wc.split)}
    if imports_cams(wc.split):
        return inputs
    inputs["model"] = rules.train_cam.output.model
    if wc.split == EXTERNAL:
        return {**inputs, "coco": config["coco"]["annotations"]}
    return {**inputs, "labels": rules.image_labels.output.json.format(split=wc.split)}


def cam_data_version(split):
    """extract_cams reads the split's images, or with cam.source 'import' the .npy files of cam.import_dir."""
    return _imported_version() if imports_cams(split) else data_version(split, "images")


@cache
def _imported_version():
    return stats_fingerprint(stat_files(tree_files(config["cam"]["import_dir"])))


def cam_shards(split):
    return expand(rules.extract_cams.output.store, split=split, shard=SHARDS)


def deeplab_label_inputs(wc):
    if wc.labels == "pseudo":
        return {"masks": rules.export_masks.output.masks.format(split=SPLITS["pseudo"])}
    return {}


def report_grid_inputs(wc):
    """The val overlay shows CAMs and pseudo masks too when val is also the split they were made for."""
    val = SPLITS["val"]
    if val != SPLITS["pseudo_eval"]:
        return {}
    return {"grid_cams": cam_shards(val), "grid_masks": rules.export_masks.output.masks.format(split=val)}


def segmenter_model():
    """resegment's model: the trained segmenter, or with `kind: sam` a local SAM checkpoint or the note of
    fetch_weights on the cached release (so train_segmenter is not in a SAM run's DAG)."""
    seg = config["segmenter"]
    if seg["kind"] == "learned":
        return rules.train_segmenter.output.model
    return seg["sam"]["checkpoint"] or f"{RESULTS}/weights/{SAM_PREFIX}{seg['sam']['model']}.json"
