"""Progress display: bars for terminals and notebooks, lines for logs, nothing when switched off."""
from __future__ import annotations

import io

import pytest

from inatloc_nb.core.env import PROGRESS_ENV
from inatloc_nb.core.errors import InatlocError
from inatloc_nb.core.progress import LineTracker, bars_wanted, format_count, format_seconds, track


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_for_terminals_unless_the_environment_says(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert bars_wanted(Terminal()) and not bars_wanted(io.StringIO())
    closed = io.StringIO()
    closed.close()
    assert not bars_wanted(closed)
    monkeypatch.setenv(PROGRESS_ENV, "lines")
    assert not bars_wanted(Terminal())
    monkeypatch.setenv(PROGRESS_ENV, "bars")
    assert bars_wanted(io.StringIO())
    monkeypatch.setenv(PROGRESS_ENV, "sometimes")
    with pytest.raises(InatlocError, match=f"{PROGRESS_ENV}='sometimes': expected one of auto, bars, lines"):
        bars_wanted(io.StringIO())


def test_a_log_gets_one_line_per_stage(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    log = io.StringIO()
    assert list(track(range(5), desc="prepare val", unit="img", stream=log)) == [0, 1, 2, 3, 4]
    with track(total=3, desc="decoding images", unit="img", stream=log) as bar:
        bar.update(2)
        bar.update()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0].startswith("prepare val: 5 img in 0:00") and lines[1].startswith("decoding images: 3 img in 0:00")


def test_silent_and_bar_only_modes(monkeypatch):
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    log = io.StringIO()
    assert list(track(range(3), desc="x", show=False, stream=log)) == [0, 1, 2]
    assert list(track(range(3), desc="x", show="bars", stream=log)) == [0, 1, 2]
    assert log.getvalue() == ""
    terminal = Terminal()
    list(track(range(3), desc="drawn", show="bars", stream=terminal))
    assert "drawn" in terminal.getvalue() and "\r" in terminal.getvalue()  # a tqdm bar


def test_long_stages_report_while_running_and_errors_end_without_a_done_line(capsys):
    log = io.StringIO()
    tracker = LineTracker(None, 4, "runs", "run", log, interval=0.0)
    tracker.set_postfix(failed=0)
    tracker.update()
    tracker.write("run-1: ok")  # on stdout, as tqdm.write
    assert log.getvalue().splitlines() == ["runs: 1/4 run (25%), 0:00 so far, failed 0"]
    assert capsys.readouterr().out == "run-1: ok\n"
    log.seek(0), log.truncate()
    with pytest.raises(RuntimeError), LineTracker(None, 4, "runs", "run", log):
        raise RuntimeError("worker died")
    assert log.getvalue() == ""
    log.seek(0), log.truncate()
    with LineTracker(None, 4, "runs", "run", log) as stopped:
        stopped.update(3)
    assert log.getvalue().startswith("runs: 3/4 run in 0:00")


def test_formats():
    assert [format_seconds(s) for s in (0, 59.6, 61, 3725)] == ["0:00", "1:00", "1:01", "1:02:05"]
    assert [format_count(v) for v in (950, 1500, 2_345_678_901, 7e15)] == ["950", "1.5k", "2.35G", "7e+03T"]
    log = io.StringIO()
    with LineTracker(None, 3_000_000, "reading train.json", "B", log, unit_scale=True) as bar:
        bar.update(1_500_000)
    assert log.getvalue().startswith("reading train.json: 1.5M/3MB in 0:00")


def test_check_and_prepare_log_one_line_per_stage(tiny_dataset_dir, tmp_path, capfd, monkeypatch):
    import re

    from inatloc_nb.cli import main

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    assert main(["check", str(tiny_dataset_dir), "--workers", "1"]) == 0
    assert main(["prepare", str(tiny_dataset_dir), "--out", str(tmp_path / "cache"), "--image-size", "32",
                 "--workers", "1"]) == 0
    captured = capfd.readouterr()
    both = captured.out + captured.err
    assert "\r" not in both and "█" not in both
    stages = re.findall(r"^(decoding images|prepare \w+): (\d+) img in \d+:\d\d", captured.err, re.M)
    assert stages == [("decoding images", "80"), ("prepare train", "48"), ("prepare val", "16"),
                      ("prepare test", "16")]
