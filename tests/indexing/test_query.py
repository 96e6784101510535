"""Query checks and the k cap, in-process (the real-process cases are in tests/hostile/test_search_args.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dscmr.errors import QueryError, UsageError
from dscmr.indexing import BuildSpec, Query, Retriever, build_from_run
from dscmr.indexing.arrays import parse_k


@pytest.mark.parametrize("text,k", [("10", 10), (" 7 ", 7), ("+3", 3), ("2147483648", 2147483648), (5, 5)])
def test_parse_k_accepts_whole_numbers(text: str | int, k: int) -> None:
    assert parse_k(text) == k


@pytest.mark.parametrize("text", ["1e30", "2.5", "ten", "", "0", "-5", "１０"])
def test_parse_k_refuses_the_rest(text: str) -> None:
    with pytest.raises(QueryError, match="k must be a"):
        parse_k(text)


def test_query_from_args() -> None:
    assert Query.from_args("text", "a cat").to_dict() == {"text": "a cat"}
    assert Query.from_args("image", "x.jpg").to_dict() == {"image": "x.jpg"}
    assert Query.from_args("text", query_id="190").to_dict() == {"id": "190"}
    with pytest.raises(UsageError, match="not both"):
        Query.from_args("text", "a cat", query_id="190")
    with pytest.raises(QueryError, match="empty query"):
        Query.from_args("text", " ")
    with pytest.raises(QueryError, match="empty --query-id"):
        Query.from_args("text", query_id="")
    with pytest.raises(UsageError, match="text or image"):
        Query.from_args("audio", "x")


def test_search_caps_k_at_the_bundle_size(trained_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    build_from_run(trained_run, tmp_path / "b", modality="image", spec=BuildSpec(binary="sign", bits=16))
    r = Retriever(trained_run, tmp_path / "b", verify=True)
    q = Query.from_args("text", query_id=r.dataset().test.txt_items[0])
    for metric in ("cosine", "hamming", "hybrid"):
        res = r.search(q, k=10**12, metric=metric)
        assert res.capped and res.k == 50 and res.k_requested == 10**12 and len(res.hits) == 50
        assert sorted(h.id for h in res.hits) == list(range(50))
        assert res.to_dict()["k"] == 50 and res.to_dict()["query"] == q.to_dict()
    assert "exceeds the 50 items" in caplog.text
    small = r.search(q, k=3)
    assert not small.capped and [h.rank for h in small.hits] == [1, 2, 3] and small.metric == "cosine"
    with pytest.raises((QueryError, UsageError), match="has no efSearch parameter"):
        r.set_search_params(ef_search=16)
