"""A stage's log (locseg/logs.py): an expected stop ends it with one line and a plain non-zero exit."""

from __future__ import annotations

import pytest

from locseg.logs import StageStop, log_to


class Stop(StageStop):
    exit_code = 7


def test_stage_stop_is_the_last_line_without_traceback(tmp_path):
    log = tmp_path / "job.log"
    with pytest.raises(SystemExit) as e:
        with log_to(log):
            raise Stop("disk full writing results/x.h5: it needs about 3.2 MB")
    assert e.value.code == 7
    text = log.read_text()
    assert text.splitlines()[-1].endswith("ERROR disk full writing results/x.h5: it needs about 3.2 MB")
    assert "Traceback" not in text


def test_other_errors_keep_their_traceback(tmp_path):
    log = tmp_path / "job.log"
    with pytest.raises(KeyError):
        with log_to(log):
            raise KeyError("bug")
    assert "Traceback" in log.read_text()
