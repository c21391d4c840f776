"""Send a stage's logging, warnings and progress lines to its Snakemake log file."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path


class StageStop(Exception):
    """An expected end of a job (disk full, SIGTERM): its message says it all, so the log ends with that one
    line instead of a traceback, and the process exits with `exit_code`."""

    exit_code = 1


@contextlib.contextmanager
def log_to(path: str):
    """Redirect stderr (tqdm, warnings, tracebacks) and the `locseg` logger into `path` for the block.

    A `StageStop` becomes the log's last line and a plain non-zero exit (no traceback on the console either);
    any other error is logged with its traceback and re-raised."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as f, contextlib.redirect_stderr(f):
        handler = logging.StreamHandler(f)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        root = logging.getLogger()
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        try:
            yield
        except StageStop as stop:
            logging.getLogger("locseg").error("%s", stop)
            raise SystemExit(stop.exit_code) from None
        except BaseException:
            logging.getLogger("locseg").exception("stage failed")
            raise
        finally:
            root.removeHandler(handler)
            sys.stderr.flush()
