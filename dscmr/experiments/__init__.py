"""Experiments: multi-seed mAP benchmarks, paired comparisons, factorial ablations and their reports.

- :mod:`~dscmr.experiments.stats`: CIs, paired tests, power / seed counts, effect sizes, query bootstrap.
- :mod:`~dscmr.experiments.multiseed`: ``bench map`` (one config over seeds, resumable, parallel).
- :mod:`~dscmr.experiments.compare`: ``bench compare`` (A vs B on the same seeds).
- :mod:`~dscmr.experiments.factorial`: ``ablate`` (2^k and 2^(k-1) designs, effects and interactions).
- :mod:`~dscmr.experiments.report`: report.json, report.md and PNGs.
"""

from dscmr.experiments.compare import compare, compare_results
from dscmr.experiments.factorial import Factor, ablate, estimate_effects, make_design, parse_factor, resolution
from dscmr.experiments.multiseed import bench_map, run_tasks, seed_tasks
from dscmr.experiments.stats import (
    bootstrap_queries,
    paired_comparison,
    paired_t_power,
    seeds_needed,
    summarize,
    verdict,
)

__all__ = [
    "Factor",
    "ablate",
    "bench_map",
    "bootstrap_queries",
    "compare",
    "compare_results",
    "estimate_effects",
    "make_design",
    "paired_comparison",
    "paired_t_power",
    "parse_factor",
    "resolution",
    "run_tasks",
    "seed_tasks",
    "seeds_needed",
    "summarize",
    "verdict",
]
