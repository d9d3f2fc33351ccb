r"""Ablations: a paper's claim tested as variants x seeds of one experiment config.

An ablation file (``configs/ablations/*.py``) defines ``get_ablation() -> Ablation``: the claim in
words, a base config, named variants (dotted overrides of the base), the seeds, the metrics read
from each run's ``metrics.jsonl``, and the claims to test, written before any result is seen::

    python experiments/ablate.py --ablation=configs/ablations/gspo.py --workdir=/tmp/gspo

A claim compares a metric of two variants seed by seed: with ``d_s = m_b(s) - m_a(s)`` for each
seed ``s`` (``m_a = 0`` when ``a`` is None), the claim "``b - a > margin``" is

* reproduced when the 95% Student-t interval of the mean of ``d`` lies above ``margin``,
* not reproduced when it lies below ``margin`` (the opposite direction is established),
* no effect of the claimed size when it lies inside ``±δ``, the claim's smallest effect,
* not engaged when the claim's engagement measure (mean over seeds) is below its floor,
* inconclusive otherwise, with the reason, and always with one seed (no interval);

mirrored for ``"<"`` (the order of the rules: ``judge``). The statistics, the reading of records
and the table are pure functions; ``sweep`` runs the trainer (passed in) over the rows, ``report``
writes ``table.md``, ``curves.png`` and ``verdict.json``; ``load_ablation``, ``run_records`` and
``plot_variant_curves`` read or write files.
"""

from __future__ import annotations

import concurrent.futures
import copy
import dataclasses
import importlib.metadata
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import matplotlib
import ml_collections
import numpy as np
from scipy import stats

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from rl_jax.config import flat_fields  # noqa: E402
from rl_jax.trainers.metrics import read_metrics  # noqa: E402

# Fields the SFT and reward-model stages read (directly, or through evaluation and the synthetic
# preference data): a variant overriding any of them cannot reuse another variant's SFT / RM.
SHARED_STAGE_FIELDS = ("seed", "stages", "task", "model", "sft", "rm", "rollout", "eval", "rewards")
SHAREABLE_STAGES = ("sft", "rm")  # stages run once per seed when no variant changes their inputs
LOG10_FLOOR = 1e-6  # log10 of a metric is taken of max(value, LOG10_FLOOR): 0 stays finite



@dataclasses.dataclass(frozen=True)
class Metric:
    """One number per run, read from its ``metrics.jsonl`` records of ``stage``.

    ``key`` is a logged name, or a tuple of names summed in each record (``clip_frac_low`` +
    ``clip_frac_high``). The value is the mean over the last ``last_n`` records that have it
    (``last_n=1``: the final value). ``baseline_stage`` subtracts the final value of ``key`` in that
    stage (held-out accuracy after RL minus after SFT); ``log10`` takes ``log10(max(mean, 1e-6))``
    of that mean, so a claimed ratio ("10x larger") becomes a difference (``margin=1``);
    ``above_min`` subtracts the smallest value of the curve (the mean of the last ``last_n``
    values above the curve's lowest point: how far a held-out loss has risen from its best, the
    onset of overfitting; the curve itself is unchanged). ``variants`` limits the metric to the
    variants that log it (a loss's own count, such as the tokens Clip-Cov selects); in the others
    it is ``nan`` ("n/a" in the table) and has no curve. Empty: every variant, and a run with no
    record of the key is an error.
    """

    stage: str
    key: str | tuple[str, ...]
    last_n: int = 1
    baseline_stage: str = ""
    log10: bool = False
    above_min: bool = False
    variants: tuple[str, ...] = ()

    def __post_init__(self):
        if self.last_n < 1:
            raise ValueError(f"Metric.last_n must be >= 1, got {self.last_n}")
        if self.log10 and self.baseline_stage:
            raise ValueError("Metric: log10 and baseline_stage together are ambiguous")
        if self.above_min and self.log10:
            raise ValueError("Metric: above_min and log10 together are ambiguous")

    @property
    def keys(self) -> tuple[str, ...]:
        return (self.key,) if isinstance(self.key, str) else tuple(self.key)

    @property
    def label(self) -> str:
        """``"rl clip_frac_low + clip_frac_high, mean of last 20, log10"``."""
        name = f"{self.stage} {' + '.join(self.keys)}"
        name += f", mean of last {self.last_n}" if self.last_n > 1 else ", final"
        name += f" - {self.baseline_stage} final" if self.baseline_stage else ""
        name += " - its minimum" if self.above_min else ""
        return name + (", log10" if self.log10 else "")


@dataclasses.dataclass(frozen=True)
class Claim:
    """``metric(b) - metric(a) {direction} margin`` over paired seeds (``a=None``: ``metric(b)``).

    ``direction`` is ``">"`` or ``"<"``; ``margin`` is 0 for "b beats a", ``-m`` for "b is at least
    as good as a within m" (non-inferiority), 1 for "10x larger" on a ``log10`` metric.

    Fixed before results, and optional (``None`` keeps the verdict of the interval and margin
    alone):

    * ``smallest_effect``: the smallest difference ``b - a`` of interest, ``δ > 0``, in the
      metric's units; with ``relative=True`` a fraction of ``|mean over seeds of metric(a)|``
      (0.2: "+20% entropy"; needs ``a``). A 95% interval inside ``(-δ, +δ)`` is
      "no effect of the claimed size".
    * ``engagement``: the measure that shows the mechanism acted, a metric name of the ablation
      read on variant ``b``, or a ``(variant, metric)`` pair; with ``engagement_floor``, its mean
      over seeds below the floor makes the claim "not engaged" whatever the interval says.
    """

    text: str
    metric: str
    a: str | None
    b: str
    direction: str = ">"
    margin: float = 0.0
    smallest_effect: float | None = None
    relative: bool = False
    engagement: str | tuple[str, str] | None = None
    engagement_floor: float | None = None

    def __post_init__(self):
        if self.direction not in (">", "<"):
            raise ValueError(f"Claim.direction must be '>' or '<', got {self.direction!r}")
        if self.smallest_effect is not None and not self.smallest_effect > 0:
            raise ValueError(f"Claim.smallest_effect must be > 0, got {self.smallest_effect}")
        if self.relative and (self.smallest_effect is None or self.a is None):
            raise ValueError("Claim.relative needs smallest_effect and a variant a (its mean is "
                             "the reference)")
        if (self.engagement is None) != (self.engagement_floor is None):
            raise ValueError("Claim.engagement and Claim.engagement_floor go together")
        if not (self.engagement is None or isinstance(self.engagement, str)
                or (isinstance(self.engagement, tuple) and len(self.engagement) == 2)):
            raise ValueError("Claim.engagement must be a metric name or a (variant, metric) "
                             f"pair, got {self.engagement!r}")

    @property
    def engagement_source(self) -> tuple[str, str] | None:
        """``(variant, metric)`` of the engagement measure (``None``: no engagement check)."""
        if self.engagement is None:
            return None
        if isinstance(self.engagement, str):
            return (self.b, self.engagement)
        return (self.engagement[0], self.engagement[1])


# Fields added to Claim and Metric after sweeps were registered: a saved claim or metric without
# them had these values.
_CLAIM_DEFAULTS = {"smallest_effect": None, "relative": False, "engagement": None,
                   "engagement_floor": None}
_METRIC_DEFAULTS = {"above_min": False, "variants": []}


@dataclasses.dataclass(frozen=True)
class Ablation:
    """What an ablation file's ``get_ablation()`` returns; checked when built."""

    claim: str  # the paper, section, figure/table, in one or two sentences
    base: ml_collections.ConfigDict
    variants: Mapping[str, Mapping[str, Any]]  # name -> {"loss.clip_high": 0.28, ...}
    metrics: Mapping[str, Metric]
    claims: Sequence[Claim]
    seeds: Sequence[int] = (0, 1, 2)

    def __post_init__(self):
        if not self.variants:
            raise ValueError("Ablation.variants is empty")
        for name, overrides in self.variants.items():
            if "/" in name or name == "shared":
                raise ValueError(f"variant name {name!r}: no '/', and 'shared' is reserved")
            apply_overrides(self.base, overrides)  # an unknown field is an error here
        for claim in self.claims:
            if claim.metric not in self.metrics:
                raise ValueError(f"claim {claim.text!r}: unknown metric {claim.metric!r}")
            for variant in (claim.a, claim.b):
                if variant is not None and variant not in self.variants:
                    raise ValueError(f"claim {claim.text!r}: unknown variant {variant!r}")
            if claim.engagement_source is not None:
                variant, metric = claim.engagement_source
                if variant not in self.variants or metric not in self.metrics:
                    raise ValueError(f"claim {claim.text!r}: engagement {claim.engagement!r} "
                                     "needs a known variant and metric")
                if self.metrics[metric].variants and variant not in self.metrics[metric].variants:
                    raise ValueError(f"claim {claim.text!r}: engagement {claim.engagement!r} is "
                                     f"read on {variant!r}, not among metric {metric!r}'s "
                                     f"variants {self.metrics[metric].variants}")
        for metric_name, metric in self.metrics.items():
            unknown = [v for v in metric.variants if v not in self.variants]
            if unknown:
                raise ValueError(f"metric {metric_name!r}: unknown variants {unknown}")
            for claim in self.claims:
                if claim.metric == metric_name and metric.variants and not {
                        claim.a, claim.b} - {None} <= set(metric.variants):
                    raise ValueError(f"claim {claim.text!r}: metric {metric_name!r} is read only "
                                     f"on {metric.variants}")

    def spec(self) -> dict[str, Any]:
        """The pre-registered part (claim, variants, metrics, claims) as JSON-able data."""
        return {
            "claim": self.claim,
            "variants": {k: dict(v) for k, v in self.variants.items()},
            "metrics": {k: dataclasses.asdict(m) for k, m in self.metrics.items()},
            "claims": [dataclasses.asdict(c) for c in self.claims],
        }


class Interval(NamedTuple):
    """A mean over ``n`` values with its two-sided 95% Student-t interval (nan when n < 2)."""

    mean: float
    low: float
    high: float
    n: int


# --- statistics -----------------------------------------------------------------------------------


def t_quantile(q: float, df: int) -> float:
    """``t_{q, df}``, the ``q`` quantile of Student's t with ``df`` degrees of freedom
    (``scipy.stats.t.ppf``); ``q = 0.975`` gives the two-sided 95% interval."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    return float(stats.t.ppf(q, df))


def mean_interval(values: Sequence[float]) -> Interval:
    """Mean of ``values`` ``[n]`` and ``mean ± t_{0.975, n-1} · s / sqrt(n)`` (``s``: sample std,
    ddof=1). With one value the interval is ``(nan, nan)``."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence, got shape {x.shape}")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_quantile(0.975, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size))


def paired_differences(a: Sequence[float] | None, b: Sequence[float]) -> list[float]:
    """``b_s - a_s`` per seed ``s`` (``[n]`` each, same seed order); ``a=None`` gives ``b``."""
    if a is None:
        return [float(v) for v in b]
    if len(a) != len(b):
        raise ValueError(f"paired values need the same seeds: {len(a)} vs {len(b)}")
    return [float(vb) - float(va) for va, vb in zip(a, b, strict=True)]


class Verdict(NamedTuple):
    """A claim's verdict and, for "inconclusive" and "not engaged", why."""

    name: str
    reason: str = ""


VERDICTS = ("reproduced", "not reproduced", "no effect of the claimed size", "not engaged",
            "inconclusive")


def claims_an_effect(direction: str, margin: float) -> bool:
    """Whether ``b - a {direction} margin`` claims a difference (``> m`` with ``m >= 0``, ``< m``
    with ``m <= 0``) rather than non-inferiority (``> -m``: "not worse by more than m")."""
    return margin >= 0 if direction == ">" else margin <= 0


def judge(
    interval: Interval,
    direction: str,
    margin: float = 0.0,
    *,
    smallest_effect: float | None = None,
    engagement: float | None = None,
    engagement_floor: float | None = None,
) -> Verdict:
    """The verdict of ``b - a {direction} margin`` from the 95% interval ``[lo, hi]`` of the mean
    paired difference, the smallest effect of interest ``δ`` (absolute) and the engagement
    measure's mean over seeds. The first rule that holds decides:

    1. ``"not engaged"``: ``engagement < engagement_floor`` (or nan); no effect is judged.
    2. ``"inconclusive"``, reason "one seed": no interval.
    3. ``"no effect of the claimed size"``, for a claim of a difference (``claims_an_effect``):
       ``-δ < lo`` and ``hi < δ``, the equivalence test at the same 95% level (two one-sided
       t tests, each at 2.5%: the 95% interval, not the 90% one of TOST at 5%).
    4. ``"reproduced"``: ``lo > margin`` for ``">"`` (``hi < margin`` for ``"<"``).
    5. ``"not reproduced"``: the interval lies beyond ``margin`` on the other side.
    6. ``"no effect of the claimed size"`` for a non-inferiority claim (same test as 3).
    7. ``"inconclusive"``, reason: the interval spans the margin, and is either wider than the
       ``±δ`` band (``hi - lo > 2δ``: more seeds needed) or crosses ``δ`` or ``-δ``.

    A non-inferiority claim (``"> -m"``) whose interval lies inside ``±δ`` with ``δ <= m`` is
    reproduced (rule 4): an established small difference is what it claims.
    """
    if direction not in (">", "<"):
        raise ValueError(f"direction must be '>' or '<', got {direction!r}")
    if engagement_floor is not None:
        if engagement is None:
            raise ValueError("an engagement floor needs the engagement measure")
        if not engagement >= engagement_floor:  # nan is not engaged
            return Verdict("not engaged",
                           f"engagement {engagement:.4g} below its floor {engagement_floor:.4g}")
    if interval.n < 2 or math.isnan(interval.low):
        return Verdict("inconclusive", "one seed: no interval")
    equivalent = (smallest_effect is not None
                  and -smallest_effect < interval.low and interval.high < smallest_effect)
    effect_claim = claims_an_effect(direction, margin)
    if equivalent and effect_claim:
        return Verdict("no effect of the claimed size")
    above, below = interval.low > margin, interval.high < margin
    if (above and direction == ">") or (below and direction == "<"):
        return Verdict("reproduced")
    if above or below:
        return Verdict("not reproduced")
    if equivalent:
        return Verdict("no effect of the claimed size")
    if smallest_effect is None:
        return Verdict("inconclusive", "interval spans the margin")
    width = interval.high - interval.low
    if width > 2 * smallest_effect:
        return Verdict("inconclusive", f"interval spans the margin and is wider ({width:.4g}) "
                       f"than the ±smallest effect band ({2 * smallest_effect:.4g})")
    return Verdict("inconclusive", f"interval spans the margin and crosses ±{smallest_effect:.4g}"
                   " (the smallest effect)")


def verdict(
    interval: Interval, direction: str, margin: float = 0.0, *,
    smallest_effect: float | None = None,
) -> str:
    """``judge(...).name`` without engagement: ``"reproduced"`` when the interval of ``b - a``
    lies beyond ``margin`` in the claimed ``direction``, ``"not reproduced"`` when it lies beyond
    it the other way, ``"no effect of the claimed size"`` inside ``±smallest_effect``, else
    ``"inconclusive"`` (also with no interval: one seed)."""
    return judge(interval, direction, margin, smallest_effect=smallest_effect).name


def smallest_effect_absolute(
    claim: Claim, values: Mapping[str, Mapping[str, Sequence[float]]]
) -> float | None:
    """``δ`` of ``claim`` in the metric's units: ``smallest_effect``, times ``|mean of
    metric(a)|`` over seeds when ``relative``."""
    if claim.smallest_effect is None:
        return None
    if not claim.relative:
        return float(claim.smallest_effect)
    return claim.smallest_effect * abs(float(np.mean(values[claim.a][claim.metric])))


def evaluate_claim(
    claim: Claim, values: Mapping[str, Mapping[str, Sequence[float]]]
) -> dict[str, Any]:
    """The verdict of ``claim`` on ``values[variant][metric]`` (one value per seed, paired)."""
    a = None if claim.a is None else values[claim.a][claim.metric]
    diffs = paired_differences(a, values[claim.b][claim.metric])
    interval = mean_interval(diffs)
    delta = smallest_effect_absolute(claim, values)
    engagement = None
    if claim.engagement_source is not None:
        variant, metric = claim.engagement_source
        engagement = float(np.mean(values[variant][metric]))
    decided = judge(interval, claim.direction, claim.margin, smallest_effect=delta,
                    engagement=engagement, engagement_floor=claim.engagement_floor)
    return {
        **dataclasses.asdict(claim),
        "verdict": decided.name,
        "reason": decided.reason,
        "effect": interval.mean,  # mean paired difference b - a
        "interval": None if interval.n < 2 else [interval.low, interval.high],
        "per_seed": diffs,
        "smallest_effect_absolute": delta,
        "engagement_mean": engagement,
    }


# --- sizing the seeds -----------------------------------------------------------------------------


def paired_t_power(n: int, sd_diff: float, effect: float, alpha: float = 0.05,
                   one_sided: bool = True) -> float:
    """Power of the paired t test of ``n`` differences (sd ``sd_diff``) when their true mean is
    ``effect``: with ``df = n - 1`` and noncentrality ``λ = effect / sd_diff · sqrt(n)``,
    ``P(T > t_{1-α, df})`` for ``T ~ nct(df, λ)`` (one-sided), or
    ``P(T > t_{1-α/2, df}) + P(T < -t_{1-α/2, df})`` (two-sided)."""
    if n < 2:
        raise ValueError(f"a t test needs n >= 2, got {n}")
    if not sd_diff > 0:
        raise ValueError(f"sd_diff must be > 0, got {sd_diff}")
    df, noncentrality = n - 1, effect / sd_diff * math.sqrt(n)
    if one_sided:
        return float(stats.nct.sf(stats.t.ppf(1 - alpha, df), df, noncentrality))
    critical = stats.t.ppf(1 - alpha / 2, df)
    return float(stats.nct.sf(critical, df, noncentrality)
                 + stats.nct.cdf(-critical, df, noncentrality))


def seeds_for_power(
    sd_diff: float, effect: float, alpha: float = 0.05, power: float = 0.8,
    one_sided: bool = True, max_seeds: int = 100_000,
) -> int:
    """The fewest paired seeds ``n >= 2`` whose t test reaches ``power`` at a true mean
    difference ``effect`` (``paired_t_power``, n counted up from 2). The verdict's rule (a 95%
    two-sided interval beyond the margin) is the one-sided test at ``alpha = 0.025``.
    A zero ``sd_diff`` needs 2 seeds (the minimum for an interval)."""
    if not effect > 0:
        raise ValueError(f"effect must be > 0, got {effect}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be in (0, 1), got {alpha}, {power}")
    if sd_diff == 0:
        return 2
    for n in range(2, max_seeds + 1):
        if paired_t_power(n, sd_diff, effect, alpha, one_sided) >= power:
            return n
    raise ValueError(f"more than {max_seeds} seeds for effect {effect} at sd {sd_diff}")


def split_seeds(seeds: Sequence[int], pilot_seeds: int, verdict_seeds: int
                ) -> tuple[list[int], list[int]]:
    """``(pilot, verdict)`` seeds, disjoint: the pilot runs the first ``pilot_seeds`` of
    ``seeds``; the verdict runs the rest of ``seeds`` in order, then ``max + 1, max + 2, ...``
    (``max`` over ``seeds`` and the pilot's) until it has ``verdict_seeds``. A verdict is never
    computed on the seeds whose spread sized it."""
    if pilot_seeds < 0 or verdict_seeds < 0:
        raise ValueError(f"seed counts must be >= 0, got {pilot_seeds}, {verdict_seeds}")
    seeds = list(dict.fromkeys(int(s) for s in seeds))  # unique, in order
    pilot = seeds[:pilot_seeds]
    following = max(seeds, default=-1) + 1
    while len(pilot) < pilot_seeds:
        pilot.append(following)
        following += 1
    verdict = seeds[pilot_seeds:][:verdict_seeds]
    while len(verdict) < verdict_seeds:
        verdict.append(following)
        following += 1
    return pilot, verdict


def size_claims(
    claims: Sequence[Claim],
    values: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    alpha: float = 0.025,
    power: float = 0.8,
) -> list[dict[str, Any]]:
    """Per claim, from a pilot's ``values[variant][metric]``: the sd of the paired differences,
    the smallest effect ``δ`` (relative ones from the pilot's mean of ``a``), the pilot's mean
    engagement, and the seeds for ``power`` at ``δ`` with the verdict's one-sided test
    (``alpha = 0.025``); ``seeds`` is ``None`` for a claim without a smallest effect."""
    out = []
    for claim in claims:
        a = None if claim.a is None else values[claim.a][claim.metric]
        diffs = paired_differences(a, values[claim.b][claim.metric])
        if len(diffs) < 2:
            raise ValueError("a pilot needs at least 2 seeds for a spread")
        sd = float(np.std(diffs, ddof=1))
        delta = smallest_effect_absolute(claim, values)
        engagement = None
        if claim.engagement_source is not None:
            variant, metric = claim.engagement_source
            engagement = float(np.mean(values[variant][metric]))
        seeds = None
        if delta is not None and delta > 0:
            seeds = seeds_for_power(sd, delta, alpha=alpha, power=power, one_sided=True)
        out.append({"text": claim.text, "metric": claim.metric, "sd_diff": sd,
                    "mean_diff": float(np.mean(diffs)), "smallest_effect_absolute": delta,
                    "engagement_mean": engagement, "engagement_floor": claim.engagement_floor,
                    "seeds": seeds, "alpha": alpha, "power": power})
    return out


PILOT_DIR = "pilot"  # a sweep's pilot runs in workdir/pilot, its sizing in workdir/pilot/pilot.json


def sweep_seeds(
    ablation_seeds: Sequence[int],
    requested: Sequence[int] | None,
    pilot: Mapping[str, Any] | None,
) -> list[int]:
    """The seeds of the verdict's sweep: ``requested`` if given, else the pilot's
    ``verdict_seeds`` if there was a pilot, else the ablation file's. Seeds the pilot ran are
    refused: the spread that sized the sweep does not also decide it."""
    if pilot is None:
        return list(ablation_seeds if requested is None else requested)
    if requested is None:
        return list(pilot["verdict_seeds"])
    reused = sorted(set(requested) & set(pilot["pilot_seeds"]))
    if reused:
        raise ValueError(f"seeds {reused} ran in the pilot; the verdict needs fresh seeds "
                         f"(the pilot proposed {pilot['verdict_seeds']})")
    return list(requested)


def pilot_plan(
    ablation: Ablation,
    values: Mapping[str, Mapping[str, Sequence[float]]],
    pilot_seeds: Sequence[int],
    names: Sequence[str],
) -> dict[str, Any]:
    """What a pilot on ``pilot_seeds`` (``values[variant][metric]``) proposes: each claim's
    sizing (``size_claims``) and the verdict's seeds, as many as the largest count needed (the
    ablation file's count when no claim is sized), after the pilot's (``split_seeds``)."""
    sizing = size_claims(claims_of(ablation, names), values)
    needed = max((row["seeds"] for row in sizing if row["seeds"] is not None),
                 default=len(ablation.seeds))
    _, verdict_seeds = split_seeds(ablation.seeds, len(pilot_seeds), needed)
    return {"pilot_seeds": list(pilot_seeds), "verdict_seeds": verdict_seeds, "claims": sizing}


def pilot_lines(plan: Mapping[str, Any]) -> list[str]:
    """What ``ablate.py --pilot`` prints of a ``pilot_plan``: a line per claim, then the seeds
    for the verdict."""
    lines = [f"pilot seeds {plan['pilot_seeds']}:"]
    for row in plan["claims"]:
        line = f"  {row['text']} | {row['metric']}: paired sd {row['sd_diff']:.4g}, mean "
        line += f"{row['mean_diff']:+.4g}"
        if row["engagement_mean"] is not None:
            engaged = row["engagement_mean"] >= row["engagement_floor"]
            line += (f"; engagement {row['engagement_mean']:.4g} (floor "
                     f"{row['engagement_floor']:g}{'' if engaged else ': NOT ENGAGED'})")
        if row["seeds"] is None:
            line += "; no smallest effect: not sized"
        else:
            line += (f"; {row['seeds']} seeds for {row['power']:.0%} power at "
                     f"±{row['smallest_effect_absolute']:.4g}")
        lines.append(line)
    lines.append(f"verdict seeds: --seeds={','.join(str(s) for s in plan['verdict_seeds'])}")
    return lines


def claim_line(result: Mapping[str, Any]) -> str:
    """One printed line: the claim, the effect with its interval, the verdict."""
    lhs = result["b"] if result["a"] is None else f"{result['b']} - {result['a']}"
    if result["interval"] is None:
        ci = "no interval (1 seed)"
    else:
        ci = "95% CI [{:+.4g}, {:+.4g}]".format(*result["interval"])
    line = (f"{result['verdict'].upper()}: {result['text']} | {result['metric']}: {lhs} = "
            f"{result['effect']:+.4g}, {ci}; claimed {result['direction']} {result['margin']:g}")
    if result.get("smallest_effect_absolute") is not None:
        line += f", smallest effect ±{result['smallest_effect_absolute']:.4g}"
    if result.get("engagement_mean") is not None:
        line += (f"; engagement {result['engagement_mean']:.4g} "
                 f"(floor {result['engagement_floor']:g})")
    return line + (f" ({result['reason']})" if result.get("reason") else "")


# --- reading runs ---------------------------------------------------------------------------------


def latest_records(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One record per (stage, step), the last written (a resumed run re-logs the steps after its
    last checkpoint), in stage order of first appearance, then step."""
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    stages: list[str] = []
    for r in records:
        if r["stage"] not in stages:
            stages.append(r["stage"])
        by_key[(r["stage"], r["step"])] = dict(r)
    return sorted(by_key.values(), key=lambda r: (stages.index(r["stage"]), r["step"]))


def _record_value(record: Mapping[str, Any], keys: Sequence[str]) -> float | None:
    if not all(k in record for k in keys):
        return None
    return float(sum(record[k] for k in keys))


def _raw_curve(
    records: Sequence[Mapping[str, Any]], metric: Metric
) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``metric``'s keys in its stage, the baseline subtracted."""
    rows = latest_records(records)
    points = [
        (r["step"], v)
        for r in rows
        if r["stage"] == metric.stage and (v := _record_value(r, metric.keys)) is not None
    ]
    offset = 0.0
    if metric.baseline_stage:
        base = [v for r in rows if r["stage"] == metric.baseline_stage
                and (v := _record_value(r, metric.keys)) is not None]
        if not base:
            raise ValueError(f"no {metric.keys} in stage {metric.baseline_stage!r} records")
        offset = base[-1]
    return [s for s, _ in points], [v - offset for _, v in points]


def _transform(metric: Metric, value: float) -> float:
    return math.log10(max(value, LOG10_FLOOR)) if metric.log10 else value


def metric_curve(
    records: Sequence[Mapping[str, Any]], metric: Metric
) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of ``metric`` at each logged step of its stage (baseline subtracted,
    or log10 of each step's value)."""
    steps, values = _raw_curve(records, metric)
    return steps, [_transform(metric, v) for v in values]


def metric_value(records: Sequence[Mapping[str, Any]], metric: Metric) -> float:
    """The metric of one run: the mean of its last ``last_n`` values, then log10 if asked (the
    log of a mean fraction, so a step with nothing clipped does not weigh as ``log10(1e-6)``)."""
    _, values = _raw_curve(records, metric)
    if not values:
        raise ValueError(f"no records of {metric.label}")
    offset = min(values) if metric.above_min else 0.0
    return _transform(metric, float(np.mean(values[-metric.last_n :])) - offset)


# --- configs --------------------------------------------------------------------------------------


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of ``config`` with dotted ``overrides`` (``{"loss.clip_high": 0.28}``) set; an
    unknown field is an error, as on the command line. ``config`` is not changed."""
    config = copy.deepcopy(config)
    for dotted, value in overrides.items():
        *path, name = dotted.split(".")
        node = config
        for part in path:
            if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
                raise KeyError(f"override {dotted!r}: no config section {part!r}")
            node = node[part]
        if name not in node:
            raise KeyError(f"override {dotted!r}: unknown field {name!r}")
        node[name] = value
    return config


def config_diff(
    base: ml_collections.ConfigDict, other: ml_collections.ConfigDict
) -> dict[str, Any]:
    """The dotted overrides that turn ``base`` into ``other`` (fields of both; none added)."""
    fields, out = flat_fields(base), {}
    for name, value in flat_fields(other).items():
        if name not in fields:
            raise KeyError(f"config_diff: {name} is not a field of the base")
        if fields[name] != value:
            out[name] = value
    return out


def overrides_of_shared_stages(overrides: Mapping[str, Any]) -> list[str]:
    """The overrides the SFT or reward-model stage would read (``SHARED_STAGE_FIELDS``)."""
    return [k for k in overrides if k.split(".")[0] in SHARED_STAGE_FIELDS]


def run_config(
    base: ml_collections.ConfigDict, overrides: Mapping[str, Any], seed: int, stages=None
) -> ml_collections.ConfigDict:
    """The config of one run: ``base`` + ``overrides``, ``seed``, optionally fewer ``stages``;
    the trainers' own progress bars off (the sweep shows one over runs)."""
    config = apply_overrides(base, {**overrides, "seed": seed})
    if stages is not None:
        config.stages = tuple(stages)
    config.log.progress_bar = False
    return config


def load_ablation(path: str) -> Ablation:
    """``get_ablation()`` of the Python file at ``path``."""
    spec = importlib.util.spec_from_file_location(
        f"ablation_{os.path.splitext(os.path.basename(path))[0]}", path
    )
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load an ablation from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    ablation = module.get_ablation()
    if not isinstance(ablation, Ablation):
        raise TypeError(f"{path}: get_ablation() must return rl_jax.ablation.Ablation")
    return ablation


# --- running --------------------------------------------------------------------------------------


def run_dir(workdir: str, variant: str, seed: int) -> str:
    return os.path.join(workdir, variant, f"seed{seed}")


def shared_dir(workdir: str, seed: int) -> str:
    return os.path.join(workdir, "shared", f"seed{seed}")


def shared_stages(ablation: Ablation) -> tuple[str, ...]:
    """The stages run once per seed: SFT / RM ahead of RL (none if the base has no RL)."""
    stages = tuple(ablation.base.stages)
    return tuple(s for s in stages if s in SHAREABLE_STAGES) if "rl" in stages else ()


def _write_json(path: str, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=str)


def _check_preregistration(ablation: Ablation, workdir: str) -> None:
    """Writes the claims to ``workdir/ablation.json`` before the first run; afterwards, a changed
    claim or metric is an error (the verdict spec is fixed before results are seen)."""
    path = os.path.join(workdir, "ablation.json")
    spec = json.loads(json.dumps(ablation.spec(), default=str))
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        fixed = ("metrics", "claims")
        saved["claims"] = [{**_CLAIM_DEFAULTS, **c} for c in saved["claims"]]
        saved["metrics"] = {k: {**_METRIC_DEFAULTS, **m} for k, m in saved["metrics"].items()}
        if {k: saved[k] for k in fixed} != {k: spec[k] for k in fixed}:
            raise ValueError(
                f"the metrics or claims differ from those registered in {path} when this sweep "
                "started; start a new workdir to test another claim"
            )
        return
    os.makedirs(workdir, exist_ok=True)
    _write_json(path, {**spec, "registered": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "provenance": gather_provenance([sys.executable, *sys.argv])})


PROVENANCE_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
                       "ml_collections")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # rl_jax's checkout


def _git(repo: str, *args: str) -> str | None:
    try:
        result = subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                                timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout if result.returncode == 0 else None


def gather_provenance(
    command: Sequence[str], wall_s: float | None = None, *, repo: str = REPO_ROOT
) -> dict[str, Any]:
    """Where a run's numbers came from: the code commit of ``repo`` (``git rev-parse HEAD``) and
    whether its tree was dirty (``git status --porcelain`` not empty; both ``None`` outside a git
    checkout), the versions of ``PROVENANCE_PACKAGES`` (``None`` if not installed) and Python,
    the exact ``command`` (shell-quoted), the wall time in seconds, the host and the time."""
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain")
    versions: dict[str, str | None] = {}
    for package in PROVENANCE_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "commit": None if commit is None else commit.strip(),
        "dirty": None if status is None else bool(status.strip()),
        "versions": {**versions, "python": platform.python_version()},
        "command": shlex.join(command),
        "wall_s": wall_s,
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def _timed_call(train: Callable, config: ml_collections.ConfigDict, directory: str) -> float:
    """``train(config, directory)``, returning its wall time in seconds (runs in a worker)."""
    start = time.perf_counter()
    train(config, directory)
    return time.perf_counter() - start


def _write_provenance(directory: str, command: Sequence[str], wall_s: float | None,
                      finished: bool) -> None:
    """``directory/provenance.json`` of this attempt; earlier attempts (an interrupted run that
    resumed) are kept under ``"previous"``."""
    path = os.path.join(directory, "provenance.json")
    previous: list[dict[str, Any]] = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            earlier = json.load(f)
        previous = [*earlier.pop("previous", []), earlier]
    _write_json(path, {**gather_provenance(command, wall_s), "finished": finished,
                       "previous": previous})


class Row(NamedTuple):
    """One run of a sweep: a variant (or ``"shared"``: the SFT / RM stages) and a seed."""

    variant: str
    seed: int


def plan_jobs(
    seeds: Sequence[int],
    names: Sequence[str],
    sharing: Mapping[str, bool],
    finished: set[Row] | frozenset[Row],
    jobs: int = 1,
) -> list[list[Row]]:
    """The rows to run, in waves: every row of a wave may run at once, a wave after the previous
    one has finished. Rows in ``finished`` are left out. With ``jobs == 1``, one wave in the
    sweep's order: per seed its shared row (if any variant shares it), then the variants in
    ``names`` order. With ``jobs > 1``, the shared rows of all seeds, then every variant row
    (seed by seed), since a variant's run starts from its seed's shared checkpoints."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    shared_rows, variant_rows, in_order = [], [], []
    for seed in seeds:
        if any(sharing[n] for n in names):
            shared_rows.append(Row("shared", seed))
            in_order.append(Row("shared", seed))
        for name in names:
            variant_rows.append(Row(name, seed))
            in_order.append(Row(name, seed))
    waves = [in_order] if jobs == 1 else [shared_rows, variant_rows]
    waves = [[row for row in wave if row not in finished] for wave in waves]
    return [wave for wave in waves if wave]


def train_in_process(config: ml_collections.ConfigDict, directory: str, *, fsdp: int = 1) -> None:
    """``rl_jax.trainers.run.run`` on a mesh made in the calling process: what ``sweep`` sends to
    its worker processes (``jobs > 1``), which cannot receive a parent's mesh. Returns nothing,
    so no parameters travel back."""
    from rl_jax import parallel  # noqa: PLC0415 (the trainer is only needed in a worker)
    from rl_jax.trainers.run import run  # noqa: PLC0415

    run(config, directory, mesh=parallel.make_mesh(fsdp=fsdp))


def sweep(
    ablation: Ablation,
    workdir: str,
    train: Callable[[ml_collections.ConfigDict, str], Any],
    *,
    seeds: Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
    progress: Callable | None = None,
    jobs: int = 1,
    command: Sequence[str] | None = None,
) -> dict[str, int]:
    """Runs every (variant, seed) with ``train(config, run_workdir)`` (``rl_jax.trainers.run.run``).

    Each run goes in ``workdir/<variant>/seed<k>`` with its ``config.json`` and ``overrides.json``;
    a run with a ``summary.json`` is skipped, an unfinished one resumes. The SFT / RM stages run
    once per seed in ``workdir/shared/seed<k>`` and their checkpoints and tokenizer are copied into
    each variant that overrides nothing they read. Every row's saved config is checked before the
    first run. ``jobs > 1`` runs the rows of each ``plan_jobs`` wave in that many processes
    (``ProcessPoolExecutor``, spawn context; ``train`` must pickle: ``train_in_process``); the
    first failure is raised once its wave has ended. Each run's ``provenance.json``
    (``gather_provenance``: commit, dirty tree, versions, ``command`` (default: this process's),
    wall time, host) is written when it ends or fails. Returns counts of runs done and skipped.
    """
    command = [sys.executable, *sys.argv] if command is None else list(command)
    seeds = list(ablation.seeds if seeds is None else seeds)
    names = list(ablation.variants if variants is None else variants)
    unknown = [n for n in names if n not in ablation.variants]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; known: {list(ablation.variants)}")
    _check_preregistration(ablation, workdir)
    stages = shared_stages(ablation)
    sharing = {}
    for name in names:
        own = overrides_of_shared_stages(ablation.variants[name])
        sharing[name] = bool(stages) and not own
        if stages and own:
            print(f"variant {name}: overrides {own}, read by {'/'.join(stages)}: runs its own")
    if any(sharing.values()):
        print(f"{'/'.join(stages)} once per seed in {os.path.join(workdir, 'shared')}, copied "
              f"into {[n for n in names if sharing[n]]}")
    configs: dict[Row, tuple[str, dict[str, Any], ml_collections.ConfigDict]] = {}
    finished: set[Row] = set()
    for row in plan_jobs(seeds, names, sharing, frozenset(), 1)[0]:
        if row.variant == "shared":
            directory, overrides = shared_dir(workdir, row.seed), {}
            config = run_config(ablation.base, overrides, row.seed, stages)
        else:
            directory = run_dir(workdir, row.variant, row.seed)
            overrides = dict(ablation.variants[row.variant])
            config = run_config(ablation.base, overrides, row.seed)
        saved_path = os.path.join(directory, "config.json")
        if os.path.exists(saved_path):  # a run started from another config is not this row
            with open(saved_path, encoding="utf-8") as f:
                changed = _changed_fields(json.load(f),
                                          json.loads(config.to_json_best_effort()))
            if changed:
                raise ValueError(f"{directory} was run with another config ({changed[:5]}); "
                                 "delete it, or use a new workdir")
        if os.path.exists(os.path.join(directory, "summary.json")):
            finished.add(row)
        configs[row] = (directory, overrides, config)
    waves = plan_jobs(seeds, names, sharing, finished, jobs)
    counts = {"done": 0, "skipped": len(finished)}

    def prepare(row: Row) -> tuple[ml_collections.ConfigDict, str]:
        directory, overrides, config = configs[row]
        os.makedirs(directory, exist_ok=True)
        shared_from = ""
        if row.variant != "shared" and sharing[row.variant]:
            shared_from = os.path.relpath(shared_dir(workdir, row.seed), directory)
            for item in (*stages, "tokenizer"):
                source = os.path.join(shared_dir(workdir, row.seed), item)
                target = os.path.join(directory, item)
                if os.path.isdir(source) and not os.path.exists(target):
                    # copy, then rename: an interrupted copy never looks like a checkpoint
                    shutil.rmtree(target + ".partial", ignore_errors=True)
                    shutil.copytree(source, target + ".partial")
                    os.replace(target + ".partial", target)
        _write_json(os.path.join(directory, "config.json"),
                    json.loads(config.to_json_best_effort()))
        _write_json(
            os.path.join(directory, "overrides.json"),
            {"variant": row.variant, "seed": row.seed, "overrides": overrides,
             "shared_from": shared_from,
             "shared_stages": list(stages) if shared_from else []},
        )
        return config, directory

    if jobs == 1:
        rows = waves[0] if waves else []
        for row in progress(rows, desc="runs", unit="run") if progress else rows:
            config, directory = prepare(row)
            start = time.perf_counter()
            try:
                train(config, directory)
            except BaseException:
                _write_provenance(directory, command, time.perf_counter() - start, False)
                raise
            _write_provenance(directory, command, time.perf_counter() - start, True)
            counts["done"] += 1
        return counts
    context = multiprocessing.get_context("spawn")  # no forked JAX runtime in the workers
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        bar = progress(total=sum(map(len, waves)), desc="runs", unit="run") if progress else None
        for wave in waves:
            futures = {}
            for row in wave:
                futures[pool.submit(_timed_call, train, *prepare(row))] = row
            errors = []
            for future in concurrent.futures.as_completed(futures):
                directory = configs[futures[future]][0]
                if future.exception() is not None:
                    errors.append((futures[future], future.exception()))
                    _write_provenance(directory, command, None, False)
                    continue
                _write_provenance(directory, command, future.result(), True)
                counts["done"] += 1
                if bar is not None:
                    bar.update(1)
            if errors:
                row, error = errors[0]
                raise RuntimeError(f"{len(errors)} run(s) failed, first {row}: {error!r}"
                                   ) from error
    return counts


def _changed_fields(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """Dotted names where two JSON configs differ (progress bars aside)."""
    a, b = flat_fields(a), flat_fields(b)
    return [name for name in sorted(set(a) | set(b))
            if name.rsplit(".", 1)[-1] != "progress_bar" and a.get(name) != b.get(name)]


def run_records(directory: str) -> list[dict[str, Any]]:
    """A run's metric records, with those of its shared stages (read from the shared run)."""
    with open(os.path.join(directory, "overrides.json"), encoding="utf-8") as f:
        info = json.load(f)
    records = []
    if info.get("shared_from"):
        shared = _metrics_of(os.path.join(directory, info["shared_from"]))
        records += [r for r in shared if r["stage"] in info["shared_stages"]]
    return records + _metrics_of(directory)


def _metrics_of(directory: str) -> list[dict[str, Any]]:
    """``read_metrics`` of a run directory; none before the run wrote any."""
    if not os.path.exists(os.path.join(directory, "metrics.jsonl")):
        return []
    return read_metrics(directory)


# --- reporting ------------------------------------------------------------------------------------


def table_markdown(
    values: Mapping[str, Mapping[str, Sequence[float]]],
    seeds: Sequence[int],
    metrics: Mapping[str, Metric],
) -> str:
    """A markdown table: a row per variant, per metric its mean, 95% t interval and per-seed
    values (``values[variant][metric]``, one per seed in ``seeds`` order)."""
    header = ["variant"] + [f"{name} ({metrics[name].label})" for name in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for variant, by_metric in values.items():
        cells = [variant]
        for name in metrics:
            if metrics[name].variants and variant not in metrics[name].variants:
                cells.append("n/a")
                continue
            iv = mean_interval(by_metric[name])
            ci = "" if iv.n < 2 else f" [{iv.low:.4g}, {iv.high:.4g}]"
            per_seed = ", ".join(f"{s}: {v:.4g}" for s, v in zip(seeds, by_metric[name],
                                                                 strict=True))
            cells.append(f"{iv.mean:.4g}{ci} ({per_seed})")
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMean [95% Student-t interval] over seeds {list(seeds)}, then the per-seed values "
            "(seed: value).\n")
    return "\n".join(lines) + "\n" + note


def plot_variant_curves(
    curves: Mapping[str, Mapping[str, Sequence[tuple[list[int], list[float]]]]],
    metrics: Mapping[str, Metric],
    path: str,
) -> None:
    """A panel per metric, a line per variant: the mean over seeds at each step logged by every
    seed, with a band of the 95% t interval (``curves[metric][variant]``: per-seed
    ``(steps, values)``)."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    for ax, name in zip(axes[0], metrics, strict=True):
        for variant, runs in curves[name].items():
            common = sorted(set.intersection(*(set(steps) for steps, _ in runs))) if runs else []
            if not common:
                continue
            table = np.array([[dict(zip(s, v, strict=True))[t] for t in common] for s, v in runs])
            mean = table.mean(axis=0)
            marker = "o" if len(common) <= 20 else None  # a lone eval point stays visible
            (line,) = ax.plot(common, mean, marker=marker, label=f"{variant} (n={len(runs)})")
            if len(runs) > 1:
                bands = [mean_interval(col) for col in table.T]
                ax.fill_between(common, [b.low for b in bands], [b.high for b in bands],
                                color=line.get_color(), alpha=0.2)
        ax.set_title(name)
        ax.set_xlabel("step")
        metric = metrics[name]
        ylabel = " + ".join(metric.keys) + (f" - {metric.baseline_stage} final"
                                            if metric.baseline_stage else "")
        ax.set_ylabel(f"log10({ylabel})" if metric.log10 else ylabel)
        ax.legend()
    fig.suptitle("mean over seeds; band: 95% Student-t interval", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def read_values(
    ablation: Ablation, workdir: str, seeds: Sequence[int], names: Sequence[str]
) -> tuple[dict[str, dict[str, list[float]]], dict[str, dict[str, list]]]:
    """``values[variant][metric]`` (one per seed, in ``seeds`` order) and
    ``curves[metric][variant]`` (per-seed ``(steps, values)``) of the finished runs."""
    values: dict[str, dict[str, list[float]]] = {n: {m: [] for m in ablation.metrics}
                                                 for n in names}
    curves: dict[str, dict[str, list]] = {m: {n: [] for n in names} for m in ablation.metrics}
    for name in names:
        for seed in seeds:
            records = run_records(run_dir(workdir, name, seed))
            for metric_name, metric in ablation.metrics.items():
                if metric.variants and name not in metric.variants:  # not logged by this variant
                    values[name][metric_name].append(math.nan)
                    curves[metric_name][name].append(([], []))
                    continue
                values[name][metric_name].append(metric_value(records, metric))
                curves[metric_name][name].append(metric_curve(records, metric))
    return values, curves


def rows_provenance(
    workdir: str, seeds: Sequence[int], names: Sequence[str]
) -> dict[str, Any]:
    """``{"<variant>/seed<k>": provenance.json or None}`` of each row, shared rows included."""
    out: dict[str, Any] = {}
    for seed in seeds:
        for name, directory in [("shared", shared_dir(workdir, seed))] + [
                (n, run_dir(workdir, n, seed)) for n in names]:
            path = os.path.join(directory, "provenance.json")
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    out[f"{name}/seed{seed}"] = json.load(f)
            elif name != "shared":
                out[f"{name}/seed{seed}"] = None
    return out


def claims_of(ablation: Ablation, names: Sequence[str]) -> list[Claim]:
    """The claims whose variants (a, b and the engagement's) are among ``names``."""
    return [
        claim for claim in ablation.claims
        if claim.b in names and (claim.a is None or claim.a in names)
        and (claim.engagement_source is None or claim.engagement_source[0] in names)
    ]


def report(
    ablation: Ablation,
    workdir: str,
    *,
    seeds: Sequence[int] | None = None,
    variants: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Writes ``table.md``, ``curves.png`` and ``verdict.json`` from the finished runs and returns
    the claims' results (claims whose variants were not run are left out)."""
    seeds = list(ablation.seeds if seeds is None else seeds)
    names = list(ablation.variants if variants is None else variants)
    values, curves = read_values(ablation, workdir, seeds, names)
    with open(os.path.join(workdir, "table.md"), "w", encoding="utf-8") as f:
        f.write(f"# {ablation.claim}\n\n" + table_markdown(values, seeds, ablation.metrics))
    plot_variant_curves(curves, ablation.metrics, os.path.join(workdir, "curves.png"))
    results = [evaluate_claim(claim, values) for claim in claims_of(ablation, names)]
    _write_json(os.path.join(workdir, "verdict.json"),
                {"claim": ablation.claim, "seeds": seeds, "claims": results, "values": values,
                 "provenance": rows_provenance(workdir, seeds, names)})
    return results
