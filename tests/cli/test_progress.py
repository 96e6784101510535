"""The CLI's one progress renderer and its logging setup."""

from __future__ import annotations

import io
import logging

import pytest
from rich.console import Console

from dscmr.cli._common import cli_logging
from dscmr.cli._progress import RichProgress, cli_progress, progress_enabled
from dscmr.utils.progress import current_progress, no_progress


def test_a_bar_per_piece_of_work():
    buf = io.StringIO()
    with RichProgress(Console(file=buf, force_terminal=True, width=100)) as bars:
        bars(0, 4, "train")
        bars(1, 4, "epoch 1 loss 0.5")
        bars(2, 4, "epoch 2 loss 0.4")  # same work: the description follows
        bars(0, 10, "image features")  # done back at 0: a new bar
        bars(10, 10, "image features")
        bars(3, 7, "add Flat")  # a new total: a new bar
        bars(1, 7, "add Flat")  # done went back: a new bar
    assert bars.bars == [
        ("epoch 2 loss 0.4", 2, 4),
        ("image features", 10, 10),
        ("add Flat", 3, 7),
        ("add Flat", 1, 7),
    ]
    assert "image features" in buf.getvalue()


@pytest.mark.parametrize(
    "env, json_out, expected", [("1", False, True), ("0", False, False), ("1", True, False), ("false", False, False)]
)
def test_bars_follow_the_env_and_json(monkeypatch, env, json_out, expected):
    monkeypatch.setenv("DSCMR_PROGRESS", env)
    assert progress_enabled(json_out=json_out) is expected


def test_cli_progress_installs_a_reporter_for_the_command_only(monkeypatch):
    monkeypatch.setenv("DSCMR_PROGRESS", "1")
    with cli_progress() as p:
        assert isinstance(p, RichProgress) and current_progress() is p
    assert current_progress() is no_progress
    with cli_progress(json_out=True) as p:
        assert p is no_progress


def test_logging_shows_info_except_with_json(capsys):
    log = logging.getLogger("dscmr.some.module")
    with cli_logging():
        log.info("step one")
        log.warning("skipped 2")
    with cli_logging(json_out=True):
        log.info("hidden")
        log.warning("still shown")
    log.warning("after the command: not ours to print")
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines()[:3] == ["step one", "warning: skipped 2", "warning: still shown"]
    assert not any("after the command" in line for line in captured.err.splitlines()[:3])
    assert logging.getLogger("dscmr").level == logging.NOTSET
