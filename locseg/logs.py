"""Send a stage's logging, warnings and progress lines to its Snakemake log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


@contextlib.contextmanager
def log_to(path: str):
    """Redirect stderr (tqdm, warnings, tracebacks) and the `locseg` logger into `path` for the block."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as f, contextlib.redirect_stderr(f):
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except BaseException:
            logging.getLogger("locseg").exception("stage failed")
            raise
        finally:
            root.removeHandler(handler)
            sys.stderr.flush()
