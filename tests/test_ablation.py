"""rl_jax.ablation: t intervals against hand-derived numbers, the verdict rule on synthetic
metrics, reading records, the table, and a two-variant sweep end to end (shared SFT; reruns
skip)."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

from configs import arithmetic_grpo, preference_rm_ppo
from rl_jax import ablation as ab
from rl_jax import parallel

ROOT = Path(__file__).resolve().parents[1]


# t_{0.975, df} for df = 1..30 from a printed table: the hand-written table rl_jax used before
# scipy.stats.t.ppf, kept as an independent reference.
T_975_TABLE = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def test_t_quantile_equals_the_printed_table():
    for df, tabled in enumerate(T_975_TABLE, start=1):
        assert round(ab.t_quantile(0.975, df), 3) == tabled, df
    assert ab.t_quantile(0.5, 7) == pytest.approx(0.0, abs=1e-12)
    assert ab.t_quantile(0.95, 10**9) == pytest.approx(1.644854, abs=1e-6)  # the normal's
    with pytest.raises(ValueError):
        ab.t_quantile(0.975, 0)


def test_mean_interval_hand_derived():
    # [1, 2, 3]: mean 2, s = 1, half width t_{0.975,2} / sqrt(3) = 4.302653 / 1.732051 = 2.484138.
    iv = ab.mean_interval([1.0, 2.0, 3.0])
    assert iv.mean == 2.0 and iv.n == 3
    assert iv.low == pytest.approx(2 - 2.484138, abs=1e-6)
    assert iv.high == pytest.approx(2 + 2.484138, abs=1e-6)
    # [0.1, 0.3]: s = 0.141421, half width 12.706205 * 0.141421 / sqrt(2) = 1.2706205.
    iv = ab.mean_interval([0.1, 0.3])
    assert (iv.low, iv.high) == pytest.approx((0.2 - 1.2706205, 0.2 + 1.2706205), abs=1e-7)
    one = ab.mean_interval([0.7])
    assert one.mean == 0.7 and one.n == 1 and math.isnan(one.low) and math.isnan(one.high)


@pytest.mark.parametrize("values", [[0.3, -0.1, 0.45, 0.2], [1.0, 2.0], [5.0, 5.5, 4.0, 6.0, 5.2,
                                                                        4.9, 5.1, 5.3]])
def test_mean_interval_equals_scipy_ttest(values):
    from scipy import stats

    ci = stats.ttest_1samp(values, 0.0).confidence_interval(0.95)
    iv = ab.mean_interval(values)
    assert (iv.low, iv.high) == pytest.approx((ci.low, ci.high), rel=1e-12, abs=1e-12)


def test_paired_differences():
    assert ab.paired_differences([1.0, 2.0], [1.5, 1.0]) == [0.5, -1.0]
    assert ab.paired_differences(None, [0.25, 0.5]) == [0.25, 0.5]
    with pytest.raises(ValueError, match="same seeds"):
        ab.paired_differences([1.0], [1.0, 2.0])


def _values(a, b):
    return {"sym": {"entropy": a}, "higher": {"entropy": b}}


@pytest.mark.parametrize(
    "offsets, expected",
    [
        ([0.20, 0.25, 0.22], "reproduced"),  # a known effect in the claimed direction
        ([0.10, -0.10, 0.02], "inconclusive"),  # no effect
        ([-0.20, -0.25, -0.22], "not reproduced"),  # the opposite effect
    ],
)
def test_verdict_rule_on_synthetic_metrics(offsets, expected):
    a = [0.50, 0.60, 0.55]
    b = [x + d for x, d in zip(a, offsets, strict=True)]
    claim = ab.Claim("entropy of clip-higher > symmetric", "entropy", "sym", "higher", ">")
    result = ab.evaluate_claim(claim, _values(a, b))
    assert result["verdict"] == expected
    assert result["effect"] == pytest.approx(sum(offsets) / 3)
    assert result["per_seed"] == pytest.approx(offsets)
    mirrored = ab.evaluate_claim(
        ab.Claim("the same, written as a < b", "entropy", "higher", "sym", "<"), _values(a, b)
    )
    assert mirrored["verdict"] == expected
    assert expected.upper() in ab.claim_line(result)


def test_verdict_margin_single_seed_and_one_sample_claims():
    iv = ab.Interval(0.5, 0.3, 0.7, 3)
    assert ab.verdict(iv, ">", 0.0) == "reproduced"
    assert ab.verdict(iv, ">", 0.4) == "inconclusive"  # 10x-style margins
    assert ab.verdict(iv, ">", 1.0) == "not reproduced"
    assert ab.verdict(iv, "<", 1.0) == "reproduced"
    # one seed: never a verdict
    claim = ab.Claim("b beats a", "entropy", "sym", "higher")
    result = ab.evaluate_claim(claim, _values([0.1], [0.9]))
    assert result["verdict"] == "inconclusive" and result["interval"] is None
    assert "no interval" in ab.claim_line(result)
    # a=None: b's own value against the margin (clip fraction below 5%)
    small = ab.Claim("clip fraction < 0.05", "clip", None, "rloo", "<", 0.05)
    values = {"rloo": {"clip": [0.010, 0.012, 0.011]}}
    assert ab.evaluate_claim(small, values)["verdict"] == "reproduced"
    values = {"rloo": {"clip": [0.2, 0.25, 0.22]}}
    assert ab.evaluate_claim(small, values)["verdict"] == "not reproduced"


A = [0.50, 0.60, 0.55]  # variant a's metric per seed; b = a + the offsets below


def _claim_values(offsets, engagement=(0.1, 0.1, 0.1)):
    b = [x + d for x, d in zip(A[: len(offsets)], offsets, strict=True)]
    return {"sym": {"entropy": A[: len(b)], "share": [0.5] * len(b)},
            "higher": {"entropy": b, "share": list(engagement)[: len(b)]}}


@pytest.mark.parametrize(
    "offsets, expected, reason",
    [
        # t_{0.975,2} = 4.3027: [.20, .25, .22] -> [+0.161, +0.286], beyond 0 and beyond ±0.1
        ([0.20, 0.25, 0.22], "reproduced", ""),
        ([-0.20, -0.25, -0.22], "not reproduced", ""),
        # [.01, -.01, 0] -> [-0.0248, +0.0248], inside ±0.1
        ([0.01, -0.01, 0.0], "no effect of the claimed size", ""),
        # [.02, .021, .019] -> [+0.0175, +0.0225]: an established difference, but a trivial one
        ([0.02, 0.021, 0.019], "no effect of the claimed size", ""),
        # [.3, -.3, .05] -> [-0.70, +0.80]: spans 0, 1.5 wide > 0.2
        ([0.3, -0.3, 0.05], "inconclusive", "interval spans the margin and is wider"),
        # [.05, .12, .08] -> [-0.004, +0.170]: spans 0, 0.174 wide, crosses +0.1
        ([0.05, 0.12, 0.08], "inconclusive", "interval spans the margin and crosses"),
        ([0.2], "inconclusive", "one seed"),
    ],
)
def test_verdicts_with_a_smallest_effect(offsets, expected, reason):
    values = _claim_values(offsets)
    claim = ab.Claim("clip-higher keeps entropy up", "entropy", "sym", "higher", ">",
                     smallest_effect=0.1)
    result = ab.evaluate_claim(claim, values)
    assert (result["verdict"], result["reason"][: len(reason)]) == (expected, reason)
    assert result["smallest_effect_absolute"] == 0.1
    mirrored = ab.Claim("the same, as a < b", "entropy", "higher", "sym", "<", smallest_effect=0.1)
    assert ab.evaluate_claim(mirrored, values)["verdict"] == expected
    assert expected.upper() in ab.claim_line(result)
    engaged = dataclasses.replace(claim, engagement="share", engagement_floor=0.05)
    assert ab.evaluate_claim(engaged, values)["verdict"] == expected  # mean 0.1 >= 0.05
    # not engaged wins over every other verdict, one seed included
    quiet = ab.evaluate_claim(engaged, _claim_values(offsets, engagement=(0.01, 0.09, 0.02)))
    assert quiet["verdict"] == "not engaged"
    assert quiet["engagement_mean"] == pytest.approx(0.04 if len(offsets) == 3 else 0.01)
    assert "below its floor 0.05" in quiet["reason"] and "NOT ENGAGED" in ab.claim_line(quiet)


def test_engagement_on_a_named_variant_and_relative_effects():
    values = _claim_values([0.20, 0.25, 0.22])
    on_a = ab.Claim("x", "entropy", "sym", "higher", engagement=("sym", "share"),
                    engagement_floor=0.6)
    assert on_a.engagement_source == ("sym", "share")
    assert ab.evaluate_claim(on_a, values)["verdict"] == "not engaged"  # sym's share is 0.5
    assert ab.Claim("x", "entropy", "sym", "higher", engagement="share",
                    engagement_floor=0.6).engagement_source == ("higher", "share")
    # relative: δ = 0.5 * |mean(a)| = 0.275; the interval [+0.161, +0.286] reaches past it
    relative = ab.Claim("x", "entropy", "sym", "higher", smallest_effect=0.5, relative=True)
    result = ab.evaluate_claim(relative, values)
    assert result["smallest_effect_absolute"] == pytest.approx(0.275)
    assert result["verdict"] == "reproduced"
    small = ab.evaluate_claim(dataclasses.replace(relative, smallest_effect=0.1),
                              _claim_values([0.01, -0.01, 0.0]))
    assert small["smallest_effect_absolute"] == pytest.approx(0.055)
    assert small["verdict"] == "no effect of the claimed size"  # [-0.0248, +0.0248] in ±0.055
    for bad in ({"relative": True}, {"smallest_effect": 0.1, "relative": True, "a": None},
                {"smallest_effect": 0.0}, {"engagement": "share"}, {"engagement_floor": 0.1},
                {"engagement": ("only one",), "engagement_floor": 0.1}):
        with pytest.raises(ValueError):
            ab.Claim(**{"text": "x", "metric": "entropy", "a": "sym", "b": "higher", **bad})


def test_judge_non_inferiority_and_old_behaviour():
    # non-inferiority "b - a > -0.03": an interval inside ±δ and above -0.03 is what it claims
    inside = ab.Interval(0.0, -0.0248, 0.0248, 3)
    assert ab.verdict(inside, ">", -0.03, smallest_effect=0.05) == "reproduced"
    assert not ab.claims_an_effect(">", -0.03) and ab.claims_an_effect("<", 0.0)
    # ... and one that reaches below -0.03 but stays inside ±0.05 shows no effect of that size
    assert ab.verdict(ab.Interval(0.0, -0.04, 0.04, 3), ">", -0.03,
                      smallest_effect=0.05) == "no effect of the claimed size"
    # without a smallest effect, the old three verdicts
    assert ab.judge(inside, ">", 0.0) == ab.Verdict("inconclusive", "interval spans the margin")
    assert ab.verdict(ab.Interval(0.01, 0.005, 0.015, 3), ">") == "reproduced"
    assert ab.verdict(ab.Interval(0.01, 0.005, 0.015, 3), ">",
                      smallest_effect=0.1) == "no effect of the claimed size"
    assert ab.judge(inside, ">", engagement=math.nan, engagement_floor=0.0).name == "not engaged"
    with pytest.raises(ValueError, match="needs the engagement"):
        ab.judge(inside, ">", engagement_floor=0.1)
    assert set(ab.VERDICTS) >= {ab.judge(inside, d, m, smallest_effect=e).name
                                for d in "<>" for m in (-1, 0, 1) for e in (None, 0.01, 1.0)}


def test_ablation_checks_engagement_and_accepts_claims_registered_before_it(tmp_path):
    kwargs = dict(claim="test", base=arithmetic_grpo.get_config(), variants={"a": {}, "b": {}},
                  metrics={"acc": ab.Metric("rl", "accuracy")}, seeds=(0,))
    with pytest.raises(ValueError, match="engagement"):
        ab.Ablation(**kwargs, claims=[ab.Claim("x", "acc", "a", "b", engagement="clip",
                                               engagement_floor=0.1)])
    ablation = ab.Ablation(**kwargs, claims=[ab.Claim("x", "acc", "a", "b")])
    # a sweep registered before the new Claim fields existed resumes
    old = json.loads(json.dumps(ablation.spec()))
    for claim in old["claims"]:
        for field in ("smallest_effect", "relative", "engagement", "engagement_floor"):
            del claim[field]
    for metric in old["metrics"].values():  # and before Metric.above_min and .variants
        del metric["above_min"], metric["variants"]
    (tmp_path / "ablation.json").write_text(json.dumps(old))
    ab._check_preregistration(ablation, str(tmp_path))
    changed = ab.Ablation(**kwargs, claims=[ab.Claim("x", "acc", "a", "b", smallest_effect=0.1)])
    with pytest.raises(ValueError, match="differ from those registered"):
        ab._check_preregistration(changed, str(tmp_path))


@pytest.mark.parametrize(
    "effect, one_sided, alpha, expected",
    [
        # paired t test, power 0.8, computed here with scipy.stats.nct (n counted up from 2); the
        # one-sided 0.05 values are G*Power's ("means: difference from constant", d = 0.2 / 0.5
        # / 0.8 -> 156 / 27 / 12) and the two-sided ones its 199 / 34.
        (0.2, True, 0.05, 156),
        (0.5, True, 0.05, 27),
        (0.8, True, 0.05, 12),
        (0.2, False, 0.05, 199),
        (0.5, False, 0.05, 34),
        (0.5, True, 0.025, 34),  # the verdict's test: one side of a 95% interval
        (1.0, True, 0.05, 8),
        (2.0, True, 0.05, 4),
    ],
)
def test_seeds_for_power_known_values(effect, one_sided, alpha, expected):
    n = ab.seeds_for_power(1.0, effect, alpha=alpha, power=0.8, one_sided=one_sided)
    assert n == expected
    # scale-free: only effect / sd matters
    assert ab.seeds_for_power(0.3, 0.3 * effect, alpha=alpha, one_sided=one_sided) == expected
    # the smallest such n: one seed fewer falls short
    assert ab.paired_t_power(n, 1.0, effect, alpha, one_sided) >= 0.8
    assert ab.paired_t_power(n - 1, 1.0, effect, alpha, one_sided) < 0.8 or n == 2


@pytest.mark.parametrize("effect", [0.3, 0.5, 0.7, 1.0, 1.5])
@pytest.mark.parametrize("alpha, power", [(0.05, 0.8), (0.025, 0.8), (0.05, 0.9)])
def test_seeds_for_power_against_the_normal_approximation(effect, alpha, power):
    from scipy import stats

    normal = math.ceil(((stats.norm.ppf(1 - alpha) + stats.norm.ppf(power)) / effect) ** 2)
    n = ab.seeds_for_power(1.0, effect, alpha=alpha, power=power)
    assert normal <= n <= normal + 3, (normal, n)


def test_seeds_for_power_edges():
    assert ab.seeds_for_power(0.0, 0.1) == 2
    assert ab.seeds_for_power(0.01, 10.0) == 2
    for bad in ((1.0, 0.0), (1.0, -0.5)):
        with pytest.raises(ValueError):
            ab.seeds_for_power(*bad)
    with pytest.raises(ValueError):
        ab.seeds_for_power(1.0, 0.5, power=1.0)


def test_split_seeds_keeps_the_pilot_apart():
    assert ab.split_seeds([0, 1, 2], 3, 5) == ([0, 1, 2], [3, 4, 5, 6, 7])
    assert ab.split_seeds([0, 1, 2, 3, 4], 2, 2) == ([0, 1], [2, 3])
    assert ab.split_seeds([10, 11, 12, 13], 2, 4) == ([10, 11], [12, 13, 14, 15])
    assert ab.split_seeds([7], 3, 2) == ([7, 8, 9], [10, 11])
    assert ab.split_seeds([5, 1], 1, 2) == ([5], [1, 6])
    for pilot_n, verdict_n in ((3, 10), (0, 3), (4, 0)):
        pilot, verdict = ab.split_seeds([0, 1, 2], pilot_n, verdict_n)
        assert (len(pilot), len(verdict)) == (pilot_n, verdict_n)
        assert not set(pilot) & set(verdict)


def test_size_claims_from_a_pilot():
    # differences [0.1, 0.3, 0.2]: sd 0.1; δ = 0.05 -> effect/sd 0.5 -> 34 (one-sided 0.025)
    values = {"a": {"m": [1.0, 1.0, 1.0], "e": [0.0] * 3},
              "b": {"m": [1.1, 1.3, 1.2], "e": [0.2, 0.4, 0.3]}}
    claims = [ab.Claim("sized", "m", "a", "b", smallest_effect=0.05, engagement="e",
                       engagement_floor=0.1),
              ab.Claim("relative", "m", "a", "b", smallest_effect=0.1, relative=True),
              ab.Claim("unsized", "m", "a", "b")]
    sized, relative, unsized = ab.size_claims(claims, values)
    assert sized["sd_diff"] == pytest.approx(0.1) and sized["seeds"] == 34
    assert (sized["engagement_mean"], sized["mean_diff"]) == pytest.approx((0.3, 0.2))
    assert relative["smallest_effect_absolute"] == pytest.approx(0.1)  # 10% of a's mean 1.0
    assert relative["seeds"] == ab.seeds_for_power(0.1, 0.1, alpha=0.025) == 10
    assert unsized["seeds"] is None
    with pytest.raises(ValueError, match="at least 2 seeds"):
        ab.size_claims(claims, {"a": {"m": [1.0]}, "b": {"m": [1.2]}})


def test_sweep_seeds_after_a_pilot():
    assert ab.sweep_seeds([0, 1, 2], None, None) == [0, 1, 2]
    assert ab.sweep_seeds([0, 1, 2], [5], None) == [5]
    pilot = {"pilot_seeds": [0, 1, 2], "verdict_seeds": [3, 4, 5, 6]}
    assert ab.sweep_seeds([0, 1, 2], None, pilot) == [3, 4, 5, 6]
    assert ab.sweep_seeds([0, 1, 2], [7, 8], pilot) == [7, 8]
    with pytest.raises(ValueError, match=r"seeds \[2\] ran in the pilot"):
        ab.sweep_seeds([0, 1, 2], [2, 3], pilot)


def test_pilot_plan_and_its_lines():
    ablation = ab.Ablation(
        claim="test", base=arithmetic_grpo.get_config(), variants={"a": {}, "b": {}, "c": {}},
        metrics={"m": ab.Metric("rl", "accuracy"), "e": ab.Metric("rl", "clip")},
        claims=[ab.Claim("b beats a", "m", "a", "b", smallest_effect=0.05, engagement="e",
                         engagement_floor=0.5),
                ab.Claim("unsized", "m", "a", "b"),
                ab.Claim("c not run", "m", "a", "c", smallest_effect=0.01)],
        seeds=(0, 1, 2, 3))
    values = {"a": {"m": [1.0, 1.0, 1.0], "e": [0.0] * 3},
              "b": {"m": [1.1, 1.3, 1.2], "e": [0.2, 0.4, 0.3]}}
    plan = ab.pilot_plan(ablation, values, [0, 1, 2], ["a", "b"])
    assert [c["text"] for c in plan["claims"]] == ["b beats a", "unsized"]  # c was not run
    assert plan["pilot_seeds"] == [0, 1, 2]
    assert plan["verdict_seeds"] == [3] + list(range(4, 37))  # 34 seeds: sd 0.1, δ 0.05
    lines = ab.pilot_lines(plan)
    assert lines[1].startswith("  b beats a | m: paired sd 0.1, mean +0.2; engagement 0.3 "
                               "(floor 0.5: NOT ENGAGED); 34 seeds for 80% power at ±0.05")
    assert lines[2].endswith("no smallest effect: not sized")
    assert lines[3] == "verdict seeds: --seeds=" + ",".join(str(s) for s in range(3, 37))
    only_unsized = ab.Ablation(**{**ablation.__dict__, "claims": [ablation.claims[1]]})
    assert ab.pilot_plan(only_unsized, values, [0, 1, 2], ["a", "b"])["verdict_seeds"] == [
        3, 4, 5, 6]  # the file's count (4), after the pilot's


def test_plan_jobs_orders_waves_and_skips_finished_rows():
    both = {"a": True, "b": True}
    R = ab.Row
    # one job: today's order, seed by seed, the shared row first
    assert ab.plan_jobs([0, 1], ["a", "b"], both, set()) == [
        [R("shared", 0), R("a", 0), R("b", 0), R("shared", 1), R("a", 1), R("b", 1)]]
    # N jobs: every shared row, then every variant row; finished rows (a resumed sweep) left out
    done = {R("shared", 0), R("a", 0)}
    assert ab.plan_jobs([0, 1], ["a", "b"], both, done, jobs=3) == [
        [R("shared", 1)], [R("b", 0), R("a", 1), R("b", 1)]]
    # nothing shared (no SFT / RM, or every variant overrides them): one wave of variants
    assert ab.plan_jobs([4], ["b", "a"], {"a": False, "b": False}, set(), jobs=2) == [
        [R("b", 4), R("a", 4)]]
    everything = {R("shared", 0), R("a", 0), R("b", 0)}
    assert ab.plan_jobs([0], ["a", "b"], both, everything, jobs=2) == []
    assert ab.plan_jobs([0], ["a", "b"], both, everything) == []
    with pytest.raises(ValueError):
        ab.plan_jobs([0], ["a"], both, set(), jobs=0)


def test_sweep_in_worker_processes(tmp_path):
    """jobs=2: each row's config and directory go to a spawned process (here ``print``, which
    pickles; no training), the rows' files are written by the parent."""
    ablation = ab.Ablation(claim="test", base=arithmetic_grpo.get_config(),
                           variants={"a": {}, "b": {"rl.steps": 3}},
                           metrics={"acc": ab.Metric("rl", "accuracy")}, claims=[], seeds=(0,))
    assert ab.sweep(ablation, str(tmp_path), print, jobs=2) == {"done": 3, "skipped": 0}
    assert json.loads((tmp_path / "b/seed0/config.json").read_text())["rl"]["steps"] == 3
    info = json.loads((tmp_path / "a/seed0/overrides.json").read_text())
    assert info["shared_from"] == "../../shared/seed0"
    provenance = ab.rows_provenance(str(tmp_path), [0], ["a", "b"])
    assert sorted(provenance) == ["a/seed0", "b/seed0", "shared/seed0"]
    assert all(p["finished"] and p["wall_s"] >= 0 and p["previous"] == []
               for p in provenance.values())
    assert ab.rows_provenance(str(tmp_path), [1], ["a"]) == {"a/seed1": None}
    registered = json.loads((tmp_path / "ablation.json").read_text())
    assert registered["registered"] and registered["provenance"]["versions"]["numpy"]


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t",
                    *args], check=True, capture_output=True)


def test_gather_provenance_in_a_git_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "commit", "-qm", "one")
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    command = ["python", "experiments/ablate.py", "--workdir=/tmp/a b"]
    clean = ab.gather_provenance(command, 12.5, repo=str(repo))
    assert (clean["commit"], clean["dirty"], clean["wall_s"]) == (head, False, 12.5)
    assert clean["command"] == "python experiments/ablate.py '--workdir=/tmp/a b'"
    assert clean["versions"]["jax"] == jax.__version__
    assert clean["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert set(clean["versions"]) >= {"flax", "optax", "orbax-checkpoint", "numpy"}
    assert clean["host"] and clean["time"]
    (repo / "a.py").write_text("x = 2\n")
    assert ab.gather_provenance(command, repo=str(repo))["dirty"] is True
    elsewhere = ab.gather_provenance(command, repo=str(tmp_path / "not_a_repo"))
    assert (elsewhere["commit"], elsewhere["dirty"]) == (None, None)


RECORDS = [
    {"stage": "sft", "step": 3, "eval/pass@1": 0.25},
    {"stage": "sft", "step": 6, "eval/pass@1": 0.5},
    {"stage": "rl", "step": 1, "clip_frac_low": 0.1, "clip_frac_high": 0.2},
    {"stage": "rl", "step": 2, "clip_frac_low": 0.0, "clip_frac_high": 0.0},
    {"stage": "rl", "step": 3, "clip_frac_low": 0.3, "clip_frac_high": 0.1, "eval/pass@1": 0.5},
    # a resumed run re-logs step 3 (after its step-2 checkpoint): the later record counts
    {"stage": "rl", "step": 3, "clip_frac_low": 0.2, "clip_frac_high": 0.1, "eval/pass@1": 0.75},
]


def test_metric_value_and_curve_from_records():
    assert [(r["stage"], r["step"]) for r in ab.latest_records(RECORDS)] == [
        ("sft", 3), ("sft", 6), ("rl", 1), ("rl", 2), ("rl", 3)]
    clip = ab.Metric("rl", ("clip_frac_low", "clip_frac_high"), last_n=3)
    steps, values = ab.metric_curve(RECORDS, clip)
    assert steps == [1, 2, 3] and values == pytest.approx([0.3, 0.0, 0.3])
    assert ab.metric_value(RECORDS, clip) == pytest.approx(0.2)
    assert ab.metric_value(RECORDS, ab.Metric("rl", "clip_frac_low")) == pytest.approx(0.2)
    gain = ab.Metric("rl", "eval/pass@1", baseline_stage="sft")
    assert ab.metric_value(RECORDS, gain) == pytest.approx(0.25)  # 0.75 after RL - 0.5 after SFT
    log_clip = ab.Metric("rl", ("clip_frac_low", "clip_frac_high"), last_n=2, log10=True)
    assert ab.metric_value(RECORDS, log_clip) == pytest.approx(math.log10(0.15))  # log of the mean
    assert ab.metric_curve(RECORDS, log_clip)[1] == pytest.approx(
        [math.log10(0.3), -6.0, math.log10(0.3)])  # per step, 0 floored at 1e-6
    assert log_clip.label == "rl clip_frac_low + clip_frac_high, mean of last 2, log10"
    assert gain.label == "rl eval/pass@1, final - sft final"
    with pytest.raises(ValueError, match="no records"):
        ab.metric_value(RECORDS, ab.Metric("rm", "accuracy"))
    rise = ab.Metric("rl", "clip_frac_low", last_n=2, above_min=True)  # curve 0.1, 0.0, 0.2
    assert ab.metric_value(RECORDS, rise) == pytest.approx(0.1)  # mean(0.0, 0.2) - 0.0
    assert ab.metric_value(RECORDS, ab.Metric("rl", "clip_frac_low", above_min=True)) == (
        pytest.approx(0.2))
    assert ab.metric_curve(RECORDS, rise)[1] == pytest.approx([0.1, 0.0, 0.2])
    assert rise.label == "rl clip_frac_low, mean of last 2 - its minimum"
    with pytest.raises(ValueError, match="above_min and log10"):
        ab.Metric("rl", "clip_frac_low", log10=True, above_min=True)


def test_table_markdown():
    metrics = {"acc": ab.Metric("rl", "eval/pass@1"), "clip": ab.Metric("rl", "clip_frac_high")}
    values = {"grpo": {"acc": [1.0, 2.0, 3.0], "clip": [0.1, 0.1, 0.1]},
              "gspo": {"acc": [0.5, 0.5, 0.5], "clip": [0.2, 0.3, 0.4]}}
    table = ab.table_markdown(values, [0, 1, 2], metrics)
    lines = table.splitlines()
    assert lines[0] == "| variant | acc (rl eval/pass@1, final) | clip (rl clip_frac_high, final) |"
    assert lines[2].startswith("| grpo | 2 [-0.4841, 4.484] (0: 1, 1: 2, 2: 3) |")
    assert lines[3].startswith("| gspo | 0.5 [0.5, 0.5] (0: 0.5, 1: 0.5, 2: 0.5) | 0.3 [")
    single = ab.table_markdown({"grpo": {"acc": [0.5], "clip": [0.1]}}, [7], metrics)
    assert "| grpo | 0.5 (7: 0.5) | 0.1 (7: 0.1) |" in single
    own = {"acc": metrics["acc"], "clip": ab.Metric("rl", "clip_frac_high", variants=("gspo",))}
    scoped = ab.table_markdown({"grpo": {"acc": [0.5], "clip": [math.nan]},
                                "gspo": {"acc": [0.5], "clip": [0.2]}}, [7], own)
    assert "| grpo | 0.5 (7: 0.5) | n/a |" in scoped
    assert "| gspo | 0.5 (7: 0.5) | 0.2 (7: 0.2) |" in scoped


def test_a_metric_of_some_variants_is_read_only_there(tmp_path):
    """A loss's own count (logged by its variant only) is n/a elsewhere; a claim or engagement
    that reads it on another variant is refused when the file is built."""
    own = ab.Metric("rl", "clip_frac_high", variants=("b",))
    kwargs = dict(claim="test", base=arithmetic_grpo.get_config(), variants={"a": {}, "b": {}},
                  seeds=(0,))
    metrics = {"acc": ab.Metric("rl", "eval/pass@1"), "own": own}
    for bad_claim in (ab.Claim("x", "acc", "b", "a", engagement="own", engagement_floor=0.1),
                      ab.Claim("x", "own", "a", "b")):
        with pytest.raises(ValueError, match="own"):
            ab.Ablation(**kwargs, metrics=metrics, claims=[bad_claim])
    with pytest.raises(ValueError, match="unknown variants"):
        ab.Ablation(**kwargs, metrics={"own": ab.Metric("rl", "x", variants=("c",))}, claims=[])
    ablation = ab.Ablation(**kwargs, metrics=metrics, claims=[
        ab.Claim("x", "acc", "a", "b", engagement="own", engagement_floor=0.1)])
    for name, clip in (("a", None), ("b", 0.1)):  # variant a logs no clip_frac_high
        run = tmp_path / name / "seed0"
        run.mkdir(parents=True)
        record = {"stage": "rl", "step": 1, "eval/pass@1": 0.5}
        if clip is not None:
            record["clip_frac_high"] = clip
        (run / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        (run / "overrides.json").write_text("{}")
    values, curves = ab.read_values(ablation, str(tmp_path), [0], ["a", "b"])
    assert math.isnan(values["a"]["own"][0]) and values["b"]["own"] == [0.1]
    assert curves["own"]["a"] == [([], [])]
    unscoped = dataclasses.replace(ablation, metrics={"own": ab.Metric("rl", "clip_frac_high")},
                                   claims=[])
    with pytest.raises(ValueError, match="no records"):  # unscoped, a missing key is an error
        ab.read_values(unscoped, str(tmp_path), [0], ["a", "b"])


def test_overrides_and_config_diff():
    base = arithmetic_grpo.get_config()
    changed = ab.apply_overrides(base, {"loss.clip_high": 0.28, "rl.optim.lr": 1e-4})
    assert changed.loss.clip_high == 0.28 and changed.rl.optim.lr == 1e-4
    assert base.loss.clip_high == 0.2  # the base is not changed
    with pytest.raises(KeyError, match="unknown field"):
        ab.apply_overrides(base, {"loss.clip_hihg": 0.28})
    with pytest.raises(KeyError, match="no config section"):
        ab.apply_overrides(base, {"los.clip_high": 0.28})
    ppo, grpo = preference_rm_ppo.get_config("ppo"), preference_rm_ppo.get_config("grpo")
    diff = ab.config_diff(ppo, grpo)
    assert diff["rl.estimator"] == "grpo" and "task.name" not in diff
    assert ab.apply_overrides(ppo, diff).to_dict() == grpo.to_dict()
    assert ab.overrides_of_shared_stages(diff) == []
    assert ab.overrides_of_shared_stages({"sft.steps": 3, "seed": 1, "loss.agg": "x"}) == [
        "sft.steps", "seed"]


ABLATION_FILES = sorted(p.stem for p in (ROOT / "configs" / "ablations").glob("*.py")
                        if p.stem != "__init__")


def test_ablation_files_are_found():
    assert {"gspo", "rloo", "deepseekmath_paradigm", "deepseekmath_iterative"} <= set(
        ABLATION_FILES)


@pytest.mark.parametrize("name", ABLATION_FILES)
def test_ablation_files_build(name):
    ablation = ab.load_ablation(str(ROOT / "configs" / "ablations" / f"{name}.py"))
    assert len(ablation.seeds) >= 3 and ablation.claims
    if "rl" in ablation.base.stages:  # an RL ablation: every variant reuses SFT (and the RM)
        assert ab.shared_stages(ablation)
        for overrides in ablation.variants.values():
            assert ab.overrides_of_shared_stages(overrides) == []
    else:  # a reward-model ablation (instructgpt_rm): its variants are the stage itself
        assert ab.shared_stages(ablation) == ()
    from rl_jax.config import check_config

    for overrides in ablation.variants.values():  # the run's start-up validation passes
        check_config(ab.apply_overrides(ablation.base, overrides), num_devices=8)


TINY_ABLATION = '''
from configs import arithmetic_grpo
from rl_jax import ablation as ab

TINY = {
    "task.kwargs.min_value": 0, "task.kwargs.max_value": 4, "model.hidden_size": 32,
    "model.intermediate_size": 64, "model.num_layers": 1, "model.max_len": 32,
    "rollout.max_new_tokens": 4, "sft.steps": 6, "sft.batch_size": 16,
    "rl.steps": 3, "rl.num_prompts": 4, "rl.group_size": 4, "eval.num_examples": 8,
    "eval.every": 3, "eval.k": 0, "checkpoint.every": 10, "log.every": 1, "log.samples_every": 0,
}


def get_ablation():
    return ab.Ablation(
        claim="A test: clip-higher raises entropy (DAPO section 3.1, figure 2).",
        base=ab.apply_overrides(arithmetic_grpo.get_config(), TINY),
        variants={"symmetric": {}, "clip_higher": {"loss.clip_high": 0.28}},
        seeds=(0,),
        metrics={"entropy": ab.Metric("rl", "entropy", last_n=2),
                 "gain": ab.Metric("rl", "eval/pass@1", baseline_stage="sft")},
        claims=[ab.Claim("entropy of clip_higher > symmetric", "entropy", "symmetric",
                         "clip_higher", ">")],
    )
'''


@pytest.mark.slow
def test_two_variant_sweep_end_to_end(tmp_path):
    """2 variants x 1 seed of the tiny config: SFT runs once, in shared/; a rerun skips both."""
    path = tmp_path / "tiny_ablation.py"
    path.write_text(TINY_ABLATION)
    workdir = tmp_path / "sweep"
    ablation = ab.load_ablation(str(path))
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    from rl_jax.trainers.run import run

    counts = ab.sweep(ablation, str(workdir), lambda c, d: run(c, d, mesh))
    assert counts == {"done": 3, "skipped": 0}
    results = ab.report(ablation, str(workdir))
    assert results[0]["verdict"] == "inconclusive"  # one seed

    def stages(directory):
        lines = (workdir / directory / "metrics.jsonl").read_text().splitlines()
        return {json.loads(line)["stage"] for line in lines}

    assert stages("shared/seed0") == {"sft"}
    for variant in ("symmetric", "clip_higher"):
        assert stages(f"{variant}/seed0") == {"rl"}  # SFT restored from the copy, not trained
        saved = json.loads((workdir / variant / "seed0" / "config.json").read_text())
        assert saved["seed"] == 0 and saved["model"]["hidden_size"] == 32
        info = json.loads((workdir / variant / "seed0" / "overrides.json").read_text())
        assert info["shared_stages"] == ["sft"]
    assert json.loads((workdir / "clip_higher/seed0/config.json").read_text())["loss"][
        "clip_high"] == 0.28
    table = (workdir / "table.md").read_text()
    assert "| symmetric |" in table and "| clip_higher |" in table
    assert (workdir / "curves.png").stat().st_size > 1000
    verdict = json.loads((workdir / "verdict.json").read_text())
    assert set(verdict["values"]) == {"symmetric", "clip_higher"}
    assert verdict["claims"][0]["verdict"] == "inconclusive"

    # The command itself, run again: everything is finished, nothing trains. One device, as the
    # sweep above (ablate.py checks every run's config for the devices it has first).
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "ablate.py"), f"--ablation={path}",
         f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=300, check=False,
        env=dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "runs: 0 run, 3 already finished" in result.stdout
    assert "INCONCLUSIVE: entropy of clip_higher > symmetric" in result.stdout
    assert stages("symmetric/seed0") == {"rl"}

    # A changed claim on the same workdir is refused: the verdict spec is fixed in advance.
    changed = ab.Ablation(**{**ablation.__dict__, "claims": []})
    with pytest.raises(ValueError, match="registered"):
        ab.sweep(changed, str(workdir), lambda c, d: None)


def test_sweep_with_a_bad_variant_stops_before_any_run(tmp_path):
    """ablate.py checks every variant's config first and lists every bad field of each."""
    bad = TINY_ABLATION.replace(
        '{"symmetric": {}, "clip_higher": {"loss.clip_high": 0.28}}',
        '{"symmetric": {}, "gmpo": {"loss.policy_loss": "gmpo", "loss.agg": "seq-mean-token-mean"},'
        ' "ppo_terms": {"kl.target": 0.5, "rl.lam": 0.9}}').replace('"clip_higher", ">"',
                                                                   '"gmpo", ">"')
    assert '"ppo_terms"' in bad
    path = tmp_path / "bad_ablation.py"
    path.write_text(bad)
    workdir = tmp_path / "sweep"
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               XLA_FLAGS="--xla_force_host_platform_device_count=1")  # the tiny batch's devices
    result = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "ablate.py"), f"--ablation={path}",
         f"--workdir={workdir}"],
        capture_output=True, text=True, timeout=300, env=env, check=False,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    message = result.stderr
    assert "invalid variants, nothing was run" in message, message[-3000:]
    assert "variant gmpo:\n  config.loss.agg = 'seq-mean-token-mean': expected" in message
    assert "variant ppo_terms:\n  config.kl.target = 0.5" in message
    assert "config.rl.lam = 0.9" in message and "variant symmetric" not in message
    assert not workdir.exists()  # not even the registered claims


def test_variant_overriding_sft_fields_gets_its_own_sft(tmp_path, capsys):
    ablation = ab.Ablation(
        claim="test",
        base=arithmetic_grpo.get_config(),
        variants={"a": {}, "b": {"sft.steps": 5}},
        metrics={"acc": ab.Metric("rl", "accuracy")},
        claims=[],
        seeds=(0,),
    )
    calls = []

    def fake_train(config, directory):
        calls.append((tuple(config.stages), os.path.relpath(directory, tmp_path)))
        Path(directory, "summary.json").write_text("{}")

    ab.sweep(ablation, str(tmp_path), fake_train)
    assert calls == [(("sft",), "shared/seed0"), (("sft", "rl"), "a/seed0"),
                     (("sft", "rl"), "b/seed0")]
    assert "variant b: overrides ['sft.steps']" in capsys.readouterr().out
    assert json.loads((tmp_path / "b/seed0/overrides.json").read_text())["shared_from"] == ""
    assert ab.sweep(ablation, str(tmp_path), fake_train) == {"done": 0, "skipped": 3}
    # a finished row whose variant has since changed is not silently reused
    edited = ab.Ablation(**{**ablation.__dict__, "variants": {"a": {"rl.steps": 7}, "b": {}}})
    with pytest.raises(ValueError, match="another config"):
        ab.sweep(edited, str(tmp_path), fake_train)
    with pytest.raises(ValueError, match="unknown variants"):
        ab.sweep(ablation, str(tmp_path), fake_train, variants=["c"])



def test_interrupted_run_resumes_in_its_workdir(tmp_path):
    """A run that dies is run again on the same directory (run() resumes there); the shared
    checkpoints are copied once, and the finished rows are skipped."""
    ablation = ab.Ablation(
        claim="test",
        base=preference_rm_ppo.get_config("ppo"),
        variants={"ppo": {}, "rloo": {"rl.estimator": "rloo"}},
        metrics={"acc": ab.Metric("rl", "accuracy")},
        claims=[],
        seeds=(3,),
    )
    assert ab.shared_stages(ablation) == ("sft", "rm")
    calls = []

    def flaky_train(config, directory):
        calls.append(os.path.relpath(directory, tmp_path))
        if directory.endswith("shared/seed3"):
            for stage in ("sft", "rm", "tokenizer"):
                Path(directory, stage, "1").mkdir(parents=True)
        if directory.endswith("rloo/seed3") and calls.count("rloo/seed3") == 1:
            Path(directory, "rl").mkdir()
            raise KeyboardInterrupt  # killed mid-run
        Path(directory, "summary.json").write_text("{}")

    with pytest.raises(KeyboardInterrupt):
        ab.sweep(ablation, str(tmp_path), flaky_train)
    Path(tmp_path, "rloo/seed3/sft/1/marker").write_text("written by the run")
    assert ab.sweep(ablation, str(tmp_path), flaky_train) == {"done": 1, "skipped": 2}
    assert calls == ["shared/seed3", "ppo/seed3", "rloo/seed3", "rloo/seed3"]
    assert (tmp_path / "rloo/seed3/sft/1/marker").exists()  # not copied over again
    assert sorted(os.listdir(tmp_path / "rloo/seed3")) == [
        "config.json", "overrides.json", "provenance.json", "rl", "rm", "sft", "summary.json",
        "tokenizer"]
    provenance = json.loads((tmp_path / "rloo/seed3/provenance.json").read_text())
    assert provenance["finished"] and provenance["wall_s"] >= 0
    assert [p["finished"] for p in provenance["previous"]] == [False]  # the killed attempt
    info = json.loads((tmp_path / "rloo/seed3/overrides.json").read_text())
    assert info["shared_stages"] == ["sft", "rm"] and info["shared_from"] == "../../shared/seed3"
    assert json.loads((tmp_path / "rloo/seed3/config.json").read_text())["seed"] == 3
