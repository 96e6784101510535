"""The library's progress protocol: reports, the current reporter, and the iterable helper."""

from __future__ import annotations

from dscmr.utils.progress import counter, current_progress, no_progress, resolve_progress, track, use_progress


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, description: str) -> None:
        self.calls.append((done, total, description))


def test_counter_reports_absolute_counts_from_zero():
    rec = Recorder()
    advance = counter(rec, 10, "images")
    advance(4)
    advance(6)
    assert rec.calls == [(0, 10, "images"), (4, 10, "images"), (10, 10, "images")]


def test_track_yields_every_item_and_reports_each():
    rec = Recorder()
    assert list(track(["a", "b", "c"], "texts", progress=rec)) == ["a", "b", "c"]
    assert rec.calls == [(0, 3, "texts"), (1, 3, "texts"), (2, 3, "texts"), (3, 3, "texts")]
    rec2 = Recorder()
    assert list(track(iter(range(2)), "gen", total=2, progress=rec2)) == [0, 1]
    assert rec2.calls[-1] == (2, 2, "gen")


def test_current_reporter_is_installed_for_a_block_only():
    rec = Recorder()
    assert current_progress() is no_progress
    with use_progress(rec):
        assert resolve_progress(None) is rec and resolve_progress(True) is rec
        assert resolve_progress(False) is no_progress
        counter(None, 2, "deep inside")(2)  # a library function with progress=None reports to the installed one
    assert current_progress() is no_progress
    assert rec.calls == [(0, 2, "deep inside"), (2, 2, "deep inside")]
    other = Recorder()
    with use_progress(rec):
        assert resolve_progress(other) is other  # an explicit reporter wins
