"""Hostile search arguments: huge or malformed k, conflicting or empty queries, options the bundle cannot honour.
Every case runs the real `dscmr search` process; errors are one clean `error:` line with exit 2, huge k is capped."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.hostile.conftest import assert_clean_error, run_cli


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A tiny run, an image bundle (Flat + itq 16 bits) and a float-only text bundle of its 50 test pairs."""
    from dscmr.indexing import BuildSpec, build_from_run
    from tests.indexing.conftest import make_tiny_run

    tmp = tmp_path_factory.mktemp("hostile_search")
    run = make_tiny_run(tmp, epochs=2)
    build_from_run(run, tmp / "img", modality="image", spec=BuildSpec(binary="itq", bits=16))
    build_from_run(run, tmp / "txt", modality="text")
    return run, tmp / "img", tmp / "txt"


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.mark.parametrize("k", ["1000000000", "2147483648", "99999999999999999999999"])
def test_huge_k_is_capped_at_the_bundle_size(setup: tuple[Path, Path, Path], k: str) -> None:
    run, img, _ = setup
    res = run_cli("search", "text", "--query-id", "190", "--run", run, "--index", img, "-k", k, "--json")
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["k"] == 50 and out["k_requested"] == int(k) and len(out["hits"]) == 50
    assert sorted(h["id"] for h in out["hits"]) == list(range(50))
    assert "exceeds the 50 items" in res.stderr and "Traceback" not in res.stderr


def test_k_within_the_bundle_is_not_capped(setup: tuple[Path, Path, Path]) -> None:
    run, img, _ = setup
    res = run_cli("search", "text", "--query-id", "190", "--run", run, "--index", img, "-k", "5", "--json")
    assert res.code == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["k"] == out["k_requested"] == 5 and len(out["hits"]) == 5 and "exceeds" not in res.stderr


CASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (arguments after `search`, fragments of the error line); RUN / IMG / TXT are replaced
    "k_float_exponent": (("text", "--query-id", "190", "-k", "1e30"), ("k must be a whole number", "1e30")),
    "k_fraction": (("text", "--query-id", "190", "-k", "2.5"), ("k must be a whole number",)),
    "k_word": (("text", "--query-id", "190", "-k", "ten"), ("k must be a whole number",)),
    "k_zero": (("text", "--query-id", "190", "-k", "0"), ("k must be a positive number",)),
    "k_negative": (("text", "--query-id", "190", "-k", "-5"), ("k must be a positive number",)),
    "query_and_id": (("text", "a cat", "--query-id", "190"), ("not both",)),
    "empty_query": (("text", "  "), ("empty query",)),
    "empty_query_id": (("text", "--query-id", ""), ("empty --query-id",)),
    "unknown_id": (("text", "--query-id", "no-such-item"), ("no text item",)),
    "unknown_metric": (("text", "--query-id", "190", "--metric", "dot"), ("unknown metric 'dot'",)),
    "shortlist_below_k": (
        ("text", "--query-id", "190", "--metric", "hybrid", "-k", "10", "--shortlist", "2"),
        ("shortlist (2) must be at least k (10)",),
    ),
    "ef_search_on_flat": (("text", "--query-id", "190", "--ef-search", "64"), ("has no efSearch parameter",)),
    "wrong_modality": (("image", "--query-id", "200"), ("queries are texts",)),
    "hamming_on_float_only": (
        ("image", "--query-id", "200", "--metric", "hamming", "--index", "TXT"),
        ("cannot answer",),
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_search_arguments(setup: tuple[Path, Path, Path], name: str) -> None:
    run, img, txt = setup
    args, fragments = CASES[name]
    index = txt if "TXT" in args else img
    args = tuple(a for a in args if a not in ("--index", "TXT"))
    before = _digest(index)
    assert_clean_error(run_cli("search", *args, "--run", run, "--index", index), *fragments)
    assert _digest(index) == before
