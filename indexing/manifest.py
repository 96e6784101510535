"""The typed, versioned manifest of an index bundle (``BUNDLE/manifest.json``).

:class:`Manifest` is the one reader and writer of the manifest's fields. :meth:`Manifest.from_dict` checks the
schema before anything else touches the bundle: field types, allowed values (``modality`` is image or text,
``count`` a non-negative integer), the format version, and that every file the manifest names is a plain file
name of the bundle layout, so ``../../etc/passwd`` or an absolute path is refused before any ``stat`` or
``open``. Every problem is an :class:`~dscmr.errors.IndexBundleError` naming the field.

Schema (format version 1; ``?`` marks a field that may be null)::

    format          "dscmr-index-bundle"
    format_version  1
    created         ISO time of the first build;  updated: ISO time of the last write
    run             {checkpoint_sha256, path?, embed_dim?, hash_bits?, data_format?, ...}
    modality        "image" | "text"
    dim, count      positive / non-negative integers
    metrics         subset of ["cosine", "hamming", "hybrid"]
    float?          {file: "float.faiss", factory, metric: "cosine", ntotal, params: {name: number}}
    binary?         {method: sign|itq|learned, bits, factory, metric: "hamming", file: "binary.faiss",
                     hasher: "hasher.npz"}
    vectors?        {file: "vectors.npy", normalized}: the float vectors, for hybrid re-ranking (with a binary index)
                     and for re-ranking a lossy float index's shortlist (``refine``)
    items           {file: "items.sqlite", kind: path|text|id}
    classes?        [class name, ...]
    sources         [{data?, split?, first_id, count, ...}, ...]
    files           {name: {bytes, sha256}} for every file of the bundle
    search?         {rule, shortlist?, nprobe?, refine?}: the search defaults sized from the bundle (see
                     :func:`search_defaults`), recomputed on every build and add; an optional field, so format
                     version 1 is kept: a bundle without it falls back to the computed rule, and an older dscmr
                     ignores it
    shards?         [{float?, binary?, ranges: [[first_id, count], ...]}, ...]: a sharded bundle (format version
                     2, see :mod:`dscmr.indexing.sharded_index`). Shard i's files are ``float-0000i.faiss`` /
                     ``binary-0000i.faiss``; its local id j is the j-th id of its ``ranges``, read in order.
                     ``float.faiss`` / ``binary.faiss`` then hold the trained, empty index every shard was filled
                     from (an IVF index's coarse quantizer). Bundles without shards keep format version 1.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dscmr.errors import IndexBundleError

FORMAT = "dscmr-index-bundle"
FORMAT_VERSION = 1
SHARDED_FORMAT_VERSION = 2  # written only by sharded bundles, so an older dscmr refuses them with a clear message
READABLE_VERSIONS = (FORMAT_VERSION, SHARDED_FORMAT_VERSION)
MANIFEST = "manifest.json"
FLOAT_FILE = "float.faiss"
BINARY_FILE = "binary.faiss"
HASHER_FILE = "hasher.npz"
VECTORS_FILE = "vectors.npy"
ITEMS_FILE = "items.sqlite"
BUNDLE_FILES = (FLOAT_FILE, BINARY_FILE, HASHER_FILE, VECTORS_FILE, ITEMS_FILE)
MODALITIES = ("image", "text")
ITEM_KINDS = ("path", "text", "id")
BUNDLE_METRICS = ("cosine", "hamming", "hybrid")
_HASH_METHODS = ("sign", "itq", "learned")  # indexing.hashing.HASH_METHODS, without importing faiss here
_SHA256 = re.compile(r"[0-9a-f]{64}")
SHARD_FILE = re.compile(r"(float|binary)-\d{5}\.faiss")


def shard_file(kind: str, index: int) -> str:
    """The file name of shard ``index`` of the ``float`` or ``binary`` index: ``float-00003.faiss``."""
    return f"{kind}-{index:05d}.faiss"


class _Reader:
    """Typed access to one JSON object of the manifest; every failure names the field and the file."""

    def __init__(self, data: object, where: str, prefix: str = "") -> None:
        self.where, self.prefix = where, prefix
        if not isinstance(data, dict):
            raise self.error(prefix.rstrip(".") or "the manifest", "must be a JSON object", data)
        self.data: dict[str, Any] = data

    def error(self, key: str, what: str, value: object) -> IndexBundleError:
        shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
        return IndexBundleError(f"{self.where}: {key!r} {what}, got {shown}; rebuild the bundle")

    def get(self, key: str, *, optional: bool = False) -> Any:
        if key not in self.data:
            if optional:
                return None
            raise IndexBundleError(f"{self.where} lacks {self.prefix + key!r}; rebuild the bundle")
        return self.data[key]

    def str_(self, key: str, *, optional: bool = False, allowed: tuple[str, ...] = ()) -> Any:
        v = self.get(key, optional=optional)
        if v is None and optional:
            return None
        if not isinstance(v, str):
            raise self.error(self.prefix + key, "must be a string", v)
        if allowed and v not in allowed:
            raise self.error(self.prefix + key, f"must be one of {', '.join(allowed)}", v)
        return v

    def int_(self, key: str, *, minimum: int = 0, optional: bool = False) -> Any:
        v = self.get(key, optional=optional)
        if v is None and optional:
            return None
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise self.error(self.prefix + key, f"must be an integer >= {minimum}", v)
        return v

    def bool_(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise self.error(self.prefix + key, "must be true or false", v)
        return v

    def obj(self, key: str, *, optional: bool = False) -> _Reader | None:
        v = self.get(key, optional=optional)
        if v is None and optional:
            return None
        return _Reader(v, self.where, f"{self.prefix}{key}.")

    def list_(self, key: str, *, optional: bool = False) -> list[Any] | None:
        v = self.get(key, optional=optional)
        if v is None and optional:
            return None
        if not isinstance(v, list):
            raise self.error(self.prefix + key, "must be a list", v)
        return v

    def file_(self, key: str, expected: str) -> str:
        return str(self.str_(key, allowed=(expected,)))


@dataclass(frozen=True)
class RunInfo:
    """The run whose model encoded the items; ``checkpoint_sha256`` ties queries to the same weights."""

    checkpoint_sha256: str
    path: str | None = None
    embed_dim: int | None = None
    hash_bits: int | None = None
    data_format: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        known = {
            "path": self.path,
            "checkpoint_sha256": self.checkpoint_sha256,
            "embed_dim": self.embed_dim,
            "hash_bits": self.hash_bits,
            "data_format": self.data_format,
        }
        return {**{k: v for k, v in known.items() if v is not None or k == "checkpoint_sha256"}, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = MANIFEST) -> RunInfo:
        """Check and type a ``run`` entry."""
        return cls.parse(_Reader(dict(data), where, "run."))

    @classmethod
    def parse(cls, r: _Reader) -> RunInfo:
        known = ("checkpoint_sha256", "path", "embed_dim", "hash_bits", "data_format")
        return cls(
            checkpoint_sha256=r.str_("checkpoint_sha256"),
            path=r.str_("path", optional=True),
            embed_dim=r.int_("embed_dim", minimum=1, optional=True),
            hash_bits=r.int_("hash_bits", optional=True),
            data_format=r.str_("data_format", optional=True),
            extra={k: v for k, v in r.data.items() if k not in known},
        )


@dataclass(frozen=True)
class FloatEntry:
    """The float index: its FAISS factory string, size and stored search parameters."""

    factory: str
    ntotal: int
    params: Mapping[str, float] = field(default_factory=dict)
    file: str = FLOAT_FILE
    metric: str = "cosine"

    def to_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "factory": self.factory,
            "metric": self.metric,
            "ntotal": self.ntotal,
            "params": dict(self.params),
        }

    @classmethod
    def parse(cls, r: _Reader) -> FloatEntry:
        params = r.obj("params", optional=True)
        values: dict[str, float] = {}
        for name, v in (params.data if params else {}).items():
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise r.error(f"float.params.{name}", "must be a number", v)
            values[name] = float(v)
        return cls(
            factory=r.str_("factory"),
            ntotal=r.int_("ntotal"),
            params=values,
            file=r.file_("file", FLOAT_FILE),
            metric=r.str_("metric", allowed=("cosine",)),
        )


@dataclass(frozen=True)
class BinaryEntry:
    """The binary (Hamming) index and the hasher that makes its codes."""

    method: str
    bits: int
    factory: str
    file: str = BINARY_FILE
    hasher: str = HASHER_FILE
    metric: str = "hamming"

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "bits": self.bits,
            "factory": self.factory,
            "metric": self.metric,
            "file": self.file,
            "hasher": self.hasher,
        }

    @classmethod
    def parse(cls, r: _Reader) -> BinaryEntry:
        bits = r.int_("bits", minimum=8)
        if bits % 8:
            raise r.error("binary.bits", "must be a multiple of 8", bits)
        return cls(
            method=r.str_("method", allowed=_HASH_METHODS),
            bits=bits,
            factory=r.str_("factory"),
            file=r.file_("file", BINARY_FILE),
            hasher=r.file_("hasher", HASHER_FILE),
            metric=r.str_("metric", allowed=("hamming",)),
        )


# Search defaults sized from the bundle so that a search without flags reaches recall@10 >= 0.95 against exact
# search. Fitted on `dscmr bench search` (synthetic clustered vectors, ITQ codes): the hybrid shortlist k' that
# gives recall@10 of about 0.98 grows as n^0.75 (64 bits: 400 at 20k, 8000 at 1M; 128 bits: about 300 at 20k,
# 6000 at 1M), shorter codes need more; IVF needs about nprobe 8 at nlist 256-1024 (0.989 and 0.9885).
SEARCH_RULE = "v1"
_SHORTLIST_C64 = 0.253  # k' (for k = 10) = _SHORTLIST_C64 * (64 / bits) ** _BITS_EXP * count ** _COUNT_EXP
_BITS_EXP = 0.415
_COUNT_EXP = 0.75
_MIN_NPROBE = 8
_IVF = re.compile(r"IVF(\d+)")
# A lossy float index (PQ, SQ, ...) stored with the float vectors re-ranks its own top k' by exact cosine (FAISS's
# "refine"). Fitted on the same synthetic vectors with IVF-PQ at d / 4 sub-quantizers (4 dims per byte) at the
# default nprobe: recall@10 0.96 at k' 100 for 100k items; at 1M 0.909 / 0.949 / 0.973 at k' 100 / 200 / 400. So k'
# grows as about count ** 0.5: k' = 100 * sqrt(count / 100,000), at least 10 k.
REFINE_FACTOR = 10
_REFINE_BASE = 100_000
_EXACT_STORAGE = re.compile(r"^(Flat|HNSW\d*(,Flat)?|IVF\d+(_HNSW\d+)?,Flat|IDMap2?,Flat)$")


def default_shortlist(count: int, bits: int, *, k: int = 10) -> int:
    """The hybrid shortlist length k' for ``k`` results over ``count`` items of ``bits``-bit codes.

    At least ``10 * k``; grows as ``count ** 0.75`` and linearly in ``k``; never more than ``count`` (but at least
    ``k``).
    """
    per10 = _SHORTLIST_C64 * (64 / max(bits, 8)) ** _BITS_EXP * max(count, 1) ** _COUNT_EXP
    kp = max(10 * k, math.ceil(per10 * k / 10))
    return max(k, min(kp, count)) if count > 0 else 10 * k


def ivf_nlist(factory: str) -> int | None:
    """The number of inverted lists of an IVF factory string (``"IVF1024,Flat"`` -> 1024), else None."""
    found = _IVF.search(factory)
    return int(found.group(1)) if found else None


def is_lossy(factory: str) -> bool:
    """Whether a float factory stores compressed codes (PQ, SQ, a transform), so exact re-ranking can help."""
    return not _EXACT_STORAGE.match(factory.replace(" ", ""))


def default_refine(count: int, *, k: int = 10) -> int:
    """The re-ranking shortlist k' of a lossy float index for ``k`` results.

    ``REFINE_FACTOR * k`` up to 100,000 items, then growing as ``sqrt(count)`` (about 316 at 1M, 1,000 at 10M for
    k = 10); never more than ``count`` (but at least ``k``).
    """
    kp = math.ceil(REFINE_FACTOR * k * math.sqrt(max(count, _REFINE_BASE) / _REFINE_BASE))
    return max(k, min(kp, count)) if count > 0 else kp


def default_nprobe(nlist: int) -> int:
    """IVF lists probed by default: ``max(8, nlist / 128)``, at most ``nlist``."""
    return max(1, min(nlist, max(_MIN_NPROBE, math.ceil(nlist / 128))))


@dataclass(frozen=True)
class SearchDefaults:
    """Search parameters used when a search gives none (``manifest.json``'s ``search``).

    Attributes:
        shortlist: Hybrid shortlist length k' for k = 10 (scaled linearly for other k); None without a binary index.
        nprobe: IVF nprobe of the float index; None when it is not an IVF index.
        refine: k' for k = 10 that a lossy float index returns for exact re-ranking by the stored vectors; None
            when cosine search does not re-rank (an exact float index, or no vectors).
        rule: The sizing rule that computed them.
    """

    shortlist: int | None = None
    nprobe: int | None = None
    refine: int | None = None
    rule: str = SEARCH_RULE

    def shortlist_for(self, k: int, count: int) -> int:
        """k' for ``k`` results: the recorded k' scaled to ``k``, at least ``10 * k``, at most ``count``."""
        return _scaled(self.shortlist, k, count)

    def refine_for(self, k: int, count: int) -> int | None:
        """The re-ranking k' for ``k`` cosine results (scaled as :meth:`shortlist_for`), or None: no re-ranking."""
        return None if self.refine is None else _scaled(self.refine, k, count)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"rule": self.rule, "shortlist": self.shortlist, "nprobe": self.nprobe}
        if self.refine is not None:
            out["refine"] = self.refine
        return out

    @classmethod
    def parse(cls, r: _Reader) -> SearchDefaults:
        return cls(
            shortlist=r.int_("shortlist", minimum=1, optional=True),
            nprobe=r.int_("nprobe", minimum=1, optional=True),
            refine=r.int_("refine", minimum=1, optional=True),
            rule=str(r.str_("rule", optional=True) or SEARCH_RULE),
        )


def _scaled(per10: int | None, k: int, count: int) -> int:
    if per10 is None:
        return 10 * k
    kp = max(10 * k, math.ceil(per10 * k / 10))
    return max(k, min(kp, count)) if count > 0 else kp


def search_defaults(
    count: int, *, bits: int | None, float_factory: str | None, vectors: bool = False
) -> SearchDefaults:
    """The defaults :data:`SEARCH_RULE` gives a bundle of ``count`` items, ``bits``-bit codes and a float factory.

    ``vectors``: the bundle stores the float vectors, so a lossy float index re-ranks (``refine``).
    """
    nlist = ivf_nlist(float_factory) if float_factory else None
    refines = vectors and float_factory is not None and is_lossy(float_factory)
    return SearchDefaults(
        shortlist=None if bits is None else default_shortlist(count, bits),
        nprobe=None if nlist is None else default_nprobe(nlist),
        refine=default_refine(count) if refines else None,
    )


@dataclass(frozen=True)
class FileEntry:
    """Size and SHA-256 of one bundle file."""

    bytes: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"bytes": self.bytes, "sha256": self.sha256}


@dataclass(frozen=True)
class Source:
    """Where a run of ids came from: ids ``first_id .. first_id + count - 1`` of the bundle.

    Attributes:
        first_id: First bundle id of these items.
        count: Number of items.
        split: Dataset split, when known.
        data: The data config (as a dict) the items were read with, when known.
        extra: Any other description given by the builder.
    """

    first_id: int
    count: int
    split: str | None = None
    data: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def key(self) -> dict[str, Any]:
        """What identifies the items (everything but their place in the bundle)."""
        out = dict(self.extra)
        if self.data is not None:
            out["data"] = self.data
        if self.split is not None:
            out["split"] = self.split
        return out

    def to_dict(self) -> dict[str, Any]:
        return {**self.key(), "first_id": self.first_id, "count": self.count}

    @classmethod
    def from_description(cls, description: Mapping[str, Any] | None, *, first_id: int, count: int) -> Source:
        """A source from a builder's free description (``{"data": ..., "split": ...}``)."""
        d = {k: v for k, v in (description or {}).items() if k not in ("first_id", "count")}
        split, data = d.pop("split", None), d.pop("data", None)
        return cls(first_id, count, None if split is None else str(split), data, d)

    @classmethod
    def parse(cls, r: _Reader) -> Source:
        data = r.obj("data", optional=True)
        known = ("first_id", "count", "split", "data")
        return cls(
            first_id=r.int_("first_id"),
            count=r.int_("count"),
            split=r.str_("split", optional=True),
            data=data.data if data else None,
            extra={k: v for k, v in r.data.items() if k not in known},
        )


@dataclass(frozen=True)
class ShardInfo:
    """One shard of a sharded bundle: its index files and the bundle ids it holds.

    Attributes:
        ranges: ``(first_id, count)`` runs of bundle ids; the shard's local id j is the j-th id of the runs, in
            order (a build gives one run per shard; every add to the shard appends one).
        float: The shard's float index file, when the bundle has a float index.
        binary: The shard's binary index file, when the bundle has a binary index.
    """

    ranges: tuple[tuple[int, int], ...]
    float: str | None = None
    binary: str | None = None

    @property
    def count(self) -> int:
        return sum(c for _, c in self.ranges)

    def files(self) -> tuple[str, ...]:
        return tuple(f for f in (self.float, self.binary) if f is not None)

    def to_dict(self) -> dict[str, Any]:
        return {"float": self.float, "binary": self.binary, "ranges": [[a, c] for a, c in self.ranges]}

    @classmethod
    def parse(cls, r: _Reader) -> ShardInfo:
        ranges = []
        for run in r.list_("ranges") or []:
            ok = isinstance(run, list) and len(run) == 2
            if not ok or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in run):
                raise r.error("shards[].ranges", "must be a list of [first_id, count] pairs of integers >= 0", run)
            ranges.append((run[0], run[1]))
        names = [r.str_(key, optional=True) for key in ("float", "binary")]
        for key, name in zip(("float", "binary"), names, strict=True):
            if name is not None and not (SHARD_FILE.fullmatch(name) and name.startswith(key)):
                raise r.error(f"shards[].{key}", f"must be a {key}-NNNNN.faiss file name", name)
        return cls(ranges=tuple(ranges), float=names[0], binary=names[1])


@dataclass(frozen=True)
class Manifest:
    """A bundle's manifest: what it indexes, with which model, in which files (see the module docstring)."""

    run: RunInfo
    modality: str
    dim: int
    count: int
    item_kind: str
    files: Mapping[str, FileEntry]
    created: str
    updated: str | None = None
    metrics: tuple[str, ...] = ()
    float: FloatEntry | None = None
    binary: BinaryEntry | None = None
    vectors_normalized: bool | None = None
    classes: tuple[str, ...] | None = None
    sources: tuple[Source, ...] = ()
    format_version: int = FORMAT_VERSION
    search: SearchDefaults | None = None
    shards: tuple[ShardInfo, ...] | None = None

    def search_defaults(self) -> SearchDefaults:
        """The recorded search defaults, or (a bundle written before they were recorded) the computed rule."""
        if self.search is not None:
            return self.search
        return search_defaults(
            self.count,
            bits=self.binary.bits if self.binary else None,
            float_factory=self.float.factory if self.float else None,
            vectors=self.has_vectors,
        )

    def with_search_defaults(self) -> Manifest:
        """A copy whose ``search`` is recomputed from its count, code bits and float factory."""
        computed = search_defaults(
            self.count,
            bits=self.binary.bits if self.binary else None,
            float_factory=self.float.factory if self.float else None,
            vectors=self.has_vectors,
        )
        return replace(self, search=computed)

    @property
    def has_vectors(self) -> bool:
        return self.vectors_normalized is not None

    @property
    def bytes(self) -> int:
        """Total size of the bundle's files."""
        return sum(f.bytes for f in self.files.values())

    def required_files(self) -> tuple[str, ...]:
        """The files this manifest's indexes need: each must be listed in ``files``."""
        names = [ITEMS_FILE]
        if self.float is not None:
            names.append(FLOAT_FILE)
        if self.binary is not None:
            names += [BINARY_FILE, HASHER_FILE]
        if self.has_vectors:
            names.append(VECTORS_FILE)
        for shard in self.shards or ():
            names += shard.files()
        return tuple(names)

    def source_index(self, description: Mapping[str, Any] | None) -> int | None:
        """Position of the source that ``description`` describes, if the bundle already holds it."""
        key = Source.from_description(description, first_id=0, count=0).key()
        return next((i for i, s in enumerate(self.sources) if s.key() == key), None)

    def with_changes(self, **changes: Any) -> Manifest:
        """A copy with some fields replaced (``dataclasses.replace``)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT,
            "format_version": self.format_version,
            "created": self.created,
            "run": self.run.to_dict(),
            "modality": self.modality,
            "dim": self.dim,
            "count": self.count,
            "metrics": list(self.metrics),
            "float": self.float.to_dict() if self.float else None,
            "binary": self.binary.to_dict() if self.binary else None,
            "vectors": {"file": VECTORS_FILE, "normalized": self.vectors_normalized} if self.has_vectors else None,
            "items": {"file": ITEMS_FILE, "kind": self.item_kind},
            "classes": list(self.classes) if self.classes is not None else None,
            "sources": [s.to_dict() for s in self.sources],
            "files": {name: f.to_dict() for name, f in self.files.items()},
        }
        if self.updated is not None:
            out["updated"] = self.updated
        if self.search is not None:
            out["search"] = self.search.to_dict()
        if self.shards is not None:
            out["shards"] = [s.to_dict() for s in self.shards]
        return out

    @classmethod
    def from_dict(cls, data: object, *, where: str = MANIFEST) -> Manifest:
        """Check ``data`` against the schema and type it.

        Args:
            data: The parsed JSON of ``manifest.json``.
            where: Name of the file, for messages.

        Raises:
            IndexBundleError: Another format, an unknown version, a missing field, a field of the wrong type or
                with a value out of range, or a file name that is not a plain name of the bundle layout.
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IndexBundleError(f"{where} is not a {FORMAT} manifest; rebuild the bundle")
        r = _Reader(data, where)
        version = r.get("format_version", optional=True)
        if version not in READABLE_VERSIONS or isinstance(version, bool):
            raise IndexBundleError(
                f"{where} has bundle format version {version}, this dscmr reads versions "
                f"{', '.join(map(str, READABLE_VERSIONS))}; "
                "rebuild it with this version's `dscmr index build`"
            )
        for key in ("modality", "dim", "count", "run", "files"):
            r.get(key)
        m = cls(
            run=RunInfo.parse(_obj(r, "run")),
            modality=r.str_("modality", allowed=MODALITIES),
            dim=r.int_("dim", minimum=1),
            count=r.int_("count"),
            item_kind=_obj(r, "items").str_("kind", allowed=ITEM_KINDS),
            files=_parse_files(r),
            created=str(r.str_("created", optional=True) or ""),
            updated=r.str_("updated", optional=True),
            metrics=_parse_metrics(r),
            float=_opt(r, "float", FloatEntry.parse),
            binary=_opt(r, "binary", BinaryEntry.parse),
            vectors_normalized=_parse_vectors(r),
            classes=_parse_classes(r),
            sources=tuple(Source.parse(_Reader(s, where, "sources[].")) for s in r.list_("sources") or []),
            search=_opt(r, "search", SearchDefaults.parse),
            shards=_parse_shards(r),
            format_version=int(version),
        )
        _obj(r, "items").file_("file", ITEMS_FILE)
        missing = [n for n in m.required_files() if n not in m.files]
        if missing:
            raise IndexBundleError(f"{where}: 'files' does not list {', '.join(missing)}; rebuild the bundle")
        return m


def _obj(r: _Reader, key: str) -> _Reader:
    sub = r.obj(key)
    assert sub is not None
    return sub


def _opt(r: _Reader, key: str, parse: Any) -> Any:
    sub = r.obj(key, optional=True)
    return None if sub is None else parse(sub)


def _parse_files(r: _Reader) -> dict[str, FileEntry]:
    files = r.obj("files")
    assert files is not None
    out: dict[str, FileEntry] = {}
    for name, entry in files.data.items():
        check_file_name(name, where=r.where)
        e = _Reader(entry, r.where, f"files.{name}.")
        sha = e.str_("sha256")
        if not _SHA256.fullmatch(sha):
            raise e.error(f"files.{name}.sha256", "must be 64 lowercase hex digits", sha)
        out[name] = FileEntry(bytes=e.int_("bytes"), sha256=sha)
    return out


def _parse_shards(r: _Reader) -> tuple[ShardInfo, ...] | None:
    """The ``shards`` list: only in format version 2, each shard naming the files of the bundle's indexes."""
    shards = r.list_("shards", optional=True)
    version = r.get("format_version")
    if (shards is None) != (version == FORMAT_VERSION):
        raise r.error("shards", f"must be present exactly in format version {SHARDED_FORMAT_VERSION}", shards)
    if shards is None:
        return None
    if not shards:
        raise r.error("shards", "must list at least one shard", shards)
    parsed = tuple(ShardInfo.parse(_Reader(s, r.where, "shards[].")) for s in shards)
    runs = sorted((a, c) for shard in parsed for a, c in shard.ranges if c > 0)
    ends = [0] + [a + c for a, c in runs]
    if any(a != end for (a, _), end in zip(runs, ends, strict=False)) or ends[-1] != r.get("count"):
        raise r.error("shards", "must split the ids 0 .. count - 1 into disjoint runs", [s.ranges for s in parsed])
    return parsed


def _parse_metrics(r: _Reader) -> tuple[str, ...]:
    metrics = r.list_("metrics", optional=True) or []
    for m in metrics:
        if m not in BUNDLE_METRICS:
            raise r.error("metrics", f"must list only {', '.join(BUNDLE_METRICS)}", metrics)
    return tuple(metrics)


def _parse_vectors(r: _Reader) -> bool | None:
    v = r.obj("vectors", optional=True)
    if v is None:
        return None
    v.file_("file", VECTORS_FILE)
    return v.bool_("normalized")


def _parse_classes(r: _Reader) -> tuple[str, ...] | None:
    classes = r.list_("classes", optional=True)
    if classes is None:
        return None
    if not all(isinstance(c, str) for c in classes):
        raise r.error("classes", "must be a list of strings", classes)
    return tuple(classes)


def check_file_name(name: object, *, where: str) -> str:
    """A manifest's file name must be one of the bundle layout's plain names (no folders, no ``..``).

    Raises:
        IndexBundleError: Anything else, before the name is used as a path.
    """
    if not isinstance(name, str) or (name not in BUNDLE_FILES and not SHARD_FILE.fullmatch(name)):
        shown = repr(name)[:60]
        raise IndexBundleError(
            f"{where}: 'files' names {shown}, which is not a file of the bundle layout "
            f"({', '.join(BUNDLE_FILES)}, float-NNNNN.faiss, binary-NNNNN.faiss); rebuild the bundle"
        )
    return name


def bundle_file(folder: Path, name: str) -> Path:
    """``folder / name``, refusing a name (or a symlink) that resolves outside ``folder``.

    Raises:
        IndexBundleError: The file resolves outside the bundle folder.
    """
    check_file_name(name, where=str(folder / MANIFEST))
    path = folder / name
    root = folder.resolve()
    if path.is_symlink() or path.resolve().parent != root:
        raise IndexBundleError(f"{path} resolves outside the bundle folder {folder}; rebuild the bundle")
    return path


def read_manifest(path: Path) -> Manifest:
    """Read ``BUNDLE/manifest.json`` and check it against the schema.

    Raises:
        IndexBundleError: No bundle there, unreadable JSON, or a manifest that fails :meth:`Manifest.from_dict`.
    """
    mpath = path / MANIFEST
    if not path.is_dir():
        raise IndexBundleError(f"index bundle not found: {path}; build it with `dscmr index build --out {path}`")
    if not mpath.is_file():
        raise IndexBundleError(f"{path} is not an index bundle ({MANIFEST} is missing); rebuild it")
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise IndexBundleError(f"{mpath} is corrupt ({str(exc)[:80]}); rebuild the bundle") from None
    return Manifest.from_dict(data, where=str(mpath))


__all__ = [
    "BINARY_FILE",
    "BUNDLE_FILES",
    "FLOAT_FILE",
    "FORMAT",
    "FORMAT_VERSION",
    "HASHER_FILE",
    "ITEMS_FILE",
    "MANIFEST",
    "MODALITIES",
    "VECTORS_FILE",
    "BinaryEntry",
    "FileEntry",
    "FloatEntry",
    "Manifest",
    "RunInfo",
    "READABLE_VERSIONS",
    "SEARCH_RULE",
    "SHARDED_FORMAT_VERSION",
    "SHARD_FILE",
    "SearchDefaults",
    "ShardInfo",
    "Source",
    "bundle_file",
    "check_file_name",
    "default_nprobe",
    "default_refine",
    "default_shortlist",
    "is_lossy",
    "ivf_nlist",
    "read_manifest",
    "search_defaults",
    "shard_file",
]
