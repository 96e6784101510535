"""Typed views of the experiment reports: ``bench map``, ``bench compare`` and ``ablate``.

The experiment functions return JSON-ready dicts (what ``--json`` prints and ``report.json`` holds); these frozen
dataclasses read the fields a summary needs, by name and type, so no caller indexes a report by string key.
``from_dict`` accepts what the experiments write; ``to_dict`` gives back the fields it read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


def _ci(value: Any) -> tuple[float, float] | None:
    return (float(value[0]), float(value[1])) if value else None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class MetricSummary:
    """One metric over seeds, as :meth:`dscmr.experiments.stats.Summary.to_dict` writes it."""

    n: int
    mean: float
    std: float
    ci95: tuple[float, float] | None
    ci95_bootstrap: tuple[float, float] | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MetricSummary:
        return cls(int(d["n"]), float(d["mean"]), float(d["std"]), _ci(d.get("ci95")), _ci(d.get("ci95_bootstrap")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MapReport:
    """``bench map``: summaries of each metric (and of the Hamming metrics) over seeds."""

    metrics: dict[str, MetricSummary]
    hamming: dict[str, MetricSummary]
    seeds_for_1pt: int | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MapReport:
        def summaries(section: Any) -> dict[str, MetricSummary]:
            return {name: MetricSummary.from_dict(s) for name, s in (section or {}).items()}

        n = d.get("seeds_for_1pt")
        return cls(summaries(d.get("metrics")), summaries(d.get("hamming")), None if n is None else int(n))

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": {k: v.to_dict() for k, v in self.metrics.items()},
            "hamming": {k: v.to_dict() for k, v in self.hamming.items()},
            "seeds_for_1pt": self.seeds_for_1pt,
        }


@dataclass(frozen=True)
class CompareReport:
    """``bench compare``: A and B over the same seeds, the paired tests and the verdict (mAP points)."""

    a_avg: MetricSummary
    b_avg: MetricSummary
    p_ttest: float
    p_wilcoxon: float
    p_bootstrap_queries: float
    ci95_bootstrap_queries: tuple[float, float] | None
    prob_b_better: float
    cohens_dz: float | None
    verdict: str

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompareReport:
        return cls(
            a_avg=MetricSummary.from_dict(d["a"]["metrics"]["avg"]),
            b_avg=MetricSummary.from_dict(d["b"]["metrics"]["avg"]),
            p_ttest=float(d["p_ttest"]),
            p_wilcoxon=float(d["p_wilcoxon"]),
            p_bootstrap_queries=float(d["p_bootstrap_queries"]),
            ci95_bootstrap_queries=_ci(d.get("ci95_bootstrap_queries")),
            prob_b_better=float(d["prob_b_better"]),
            cohens_dz=_opt_float(d.get("cohens_dz")),
            verdict=str(d["verdict"]),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Effect:
    """A main effect or an interaction (first -> second level, mAP points)."""

    estimate: float
    ci95: tuple[float, float] | None
    aliased_with: tuple[str, ...]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Effect:
        return cls(float(d["estimate"]), _ci(d.get("ci95")), tuple(d.get("aliased_with") or ()))


@dataclass(frozen=True)
class AblationReport:
    """``ablate``: the design, the effects with CIs, the conclusion and the best cell."""

    fraction: str
    cells: int
    n_seeds: int
    main_effects: dict[str, Effect]
    interactions: dict[str, Effect]
    conclusion: str
    best_levels: dict[str, Any]
    best_mean: float
    best_prob: float | None

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> AblationReport:
        best = d["best_cell"]
        return cls(
            fraction=str(d["design"]["fraction"]),
            cells=int(d["design"]["cells"]),
            n_seeds=len(d["seeds"]),
            main_effects={k: Effect.from_dict(e) for k, e in d["main_effects"].items()},
            interactions={k: Effect.from_dict(e) for k, e in d["interactions"].items()},
            conclusion=str(d["conclusion"]),
            best_levels=dict(best["levels"]),
            best_mean=float(best["mean"]),
            best_prob=_opt_float(best.get("prob_best")),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
