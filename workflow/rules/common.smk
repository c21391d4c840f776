# Validation before any job runs, shared names and small input functions.

from pathlib import Path

from locseg.config import ConfigError, validate_config
from locseg.shards import shard_names
from locseg.sources import EXTERNAL, validated_split_file


try:
    validate_config(config, Path(workflow.basedir) / "workflow" / "schemas" / "config.schema.yaml")
except ConfigError as err:
    raise WorkflowError(str(err)) from None


DATASET = config["dataset"]
SPLITS = DATASET["splits"]
SHARDS = shard_names(config["shards"])
RESULTS = "results"


wildcard_constraints:
    split=r"[^/]+",
    shard=r"\d{3}",
    labels=r"pseudo|gt",


def raw_split_file(split):
    """A split list as the dataset ships it; only validate_dataset (and demo_data) touch these."""
    return f"{DATASET['root']}/{DATASET['split_dir']}/{split}.txt"


def split_file(split):
    """The ids of a split that passed validate_dataset: what every other stage reads."""
    return str(validated_split_file(split))


def pick(section, *keys):
    """The subset of a config section that a rule's result depends on (its params trigger reruns)."""
    return {k: config[section][k] for k in keys}


def weights_input(section):
    """A pretrained weights file is an input, so replacing it reruns the stage."""
    weights = config[section]["weights"]
    return [weights] if weights else []


def log_path(rule_name, pattern=""):
    return f"{RESULTS}/logs/{rule_name}{'/' + pattern if pattern else ''}.log"


def bench_path(rule_name, pattern=""):
    return f"{RESULTS}/benchmarks/{rule_name}{'/' + pattern if pattern else ''}.tsv"
