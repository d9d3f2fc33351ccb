r"""DAPO (Yu et al. 2025), Table 1 and Figure 2: the cumulative rows, and clip-higher's entropy.

    python experiments/ablate.py --ablation=configs/ablations/dapo.py --workdir=/tmp/ablate_dapo

Six cumulative rows, as in DAPO's Table 1: GRPO (symmetric clip 0.2, GRPO's per-response
``seq-mean-token-mean`` loss) -> + overlong filtering (truncated responses count in no loss term,
``rl.overlong_filter``) -> + clip-higher (0.2 / 0.28) -> + soft overlong punishment
(``rl.overlong_buffer``) -> + token-level loss (``loss.agg=token-mean``) -> + dynamic sampling
(groups whose rewards are all equal are dropped and new prompts sampled, at most 2 extra rounds).
Each row reports its final greedy held-out accuracy (the paper's AIME avg@32: 30, 36, 38, 41, 42,
50). The verdict is on Figure 2's claim, with the rows that differ in clip-higher alone: the
policy's entropy (of the sampling distribution, over all sampled tokens, truncated ones included)
averaged over the second half of RL is higher with clip-higher than in the row before it.

The base is the default addition task's setup (model, SFT to 30% held-out accuracy shared by the
six rows of a seed, GRPO settings) with four changes, stated before any result of these rows:

* The task is ``addition_scratchpad`` (``rl_jax/data/scratchpad.py``, also the Dr. GRPO
  ablation's): the same 3-digit additions, answer reversed, but a response may first write up to
  three working notes (``"15,12>521"``) and the reward (``final_answer``) reads only the answer
  after ``">"``. Why: overlong filtering and the overlong punishment need responses of varying
  length, some of which exceed the budget. The default task's answers have a fixed length (3-4
  digits and EOS), so almost none is truncated (docs/results.md), and a smaller budget would
  truncate or punish correct answers wholesale.
* ``rollout.max_new_tokens = 12``: of the SFT targets (+ EOS), 8.8% are 13 or 14 tokens long (a
  full scratchpad with a 4-digit answer), so a policy that imitates them has some responses cut,
  as DAPO's long reasoning traces are: a cut response loses its answer and scores 0 (DAPO's
  "reward noise" that overlong filtering removes from the loss). The soft overlong punishment's
  buffer is 2 tokens (DAPO: 4,096 of 20,480, a fifth): lengths 11 and 12 lose 0.5 and 1.
* 50 RL steps of 16 prompts x 8 responses (the default: 32 prompts), so that the rows fit a
  CPU; held-out evaluation every 25 steps, greedy only (``eval.k = 0``).
* 16 minibatches a rollout, DAPO's 16 gradient updates a rollout step (512 prompts x 16
  responses, mini-batches of 512 responses). Why: a clip acts only off-policy, and with 4
  minibatches about 1% of the tokens reached the upper clip (the earlier sweep of this file, whose
  entropy claim was inconclusive, kept in ``experiments/results/ablations/dapo/four_minibatches/``).

The claims, as the paper states them, fixed before results:

* Figure 2: with clip-higher the policy's entropy does not collapse as it does with the symmetric
  clip (the figure shows the gap, not a ratio): the entropy over the second half of RL is higher
  with clip-higher than in the row before it, smallest effect +20% of that row's entropy.
  Engagement: the share of tokens the symmetric upper clip (1.2) acts on in the row before
  (``clip_frac_high``, positive advantage and ratio above 1.2, mean over RL), at least 3%: the
  tokens clip-higher lets through are among these.
* Table 1: each row raises held-out accuracy over the row before it (AIME avg@32: 30, 36, 38,
  41, 42, 50, gains of 2 to 8 points); smallest effect 0.02 held-out accuracy. Engagement per
  row: overlong filtering and the soft punishment act on truncated responses (the previous row's
  truncated share at least 5%); clip-higher as above; the token-level loss re-weights responses
  of different lengths (mean within-group max/min length ratio at least 1.3); dynamic sampling
  drops groups whose rewards are all equal (their share in the previous row at least 10%).

Pilot (``experiments/results/ablations/dapo/pilot/``, seeds 0-1 of the rows overlong_filter and
clip_higher, 7 min): NOT ENGAGED. With 16 updates a rollout the symmetric upper clip still acts on
only 0.66% of the tokens (per seed 0.58%, 0.74%; floor 3%), and held-out accuracy falls over RL
in both rows (-0.18, -0.19 from SFT); entropy clip-higher - symmetric -0.039 (paired sd 0.060),
accuracy -0.014 (sd 0.058); the power calculation asks for 12 seeds (entropy) and 68 (accuracy).
No verdict sweep was run: more updates a rollout alone do not move the ratios to the clip here,
so a regime with larger policy steps a rollout (a larger learning rate, or larger minibatches
of longer responses) comes next.
"""

from configs import arithmetic_grpo
from rl_jax import ablation as ab

RL_STEPS = 50
LOG_EVERY = 5
HALF = RL_STEPS // 2  # the steps of the second half of RL (every step has a record)


def get_ablation() -> ab.Ablation:
    base = ab.apply_overrides(
        arithmetic_grpo.get_config(),
        {"task.name": "addition_scratchpad", "rewards.correctness": "final_answer",
         "rl.steps": RL_STEPS, "rl.num_prompts": 16, "rollout.max_new_tokens": 12,
         "loss.agg": "seq-mean-token-mean", "loss.clip_low": 0.2, "loss.clip_high": 0.2,
         "rl.num_minibatches": 16,
         "eval.every": 25, "eval.k": 0,
         "log.every": LOG_EVERY, "log.samples_every": 0, "checkpoint.every": 100},
    )
    base.rewards.weights = {"final_answer": 1.0}
    rows = {"grpo": {}}
    steps = [
        ("overlong_filter", {"rl.overlong_filter": True}),
        ("clip_higher", {"loss.clip_high": 0.28}),
        ("soft_overlong", {"rl.overlong_buffer": 2, "rl.overlong_penalty": 1.0}),
        ("token_level", {"loss.agg": "token-mean"}),
        ("dynamic_sampling", {"rl.dynamic_sampling": True, "rl.max_extra_rounds": 2}),
    ]
    previous = {}
    for name, change in steps:  # cumulative: each row adds its change to the row before
        previous = {**previous, **change}
        rows[name] = previous
    return ab.Ablation(
        claim=(
            "DAPO (Yu et al. 2025), Table 1 and Figure 2: overlong filtering, clip-higher "
            "(0.2/0.28), soft overlong punishment, the token-level loss and dynamic sampling, "
            "added one by one to GRPO, each raise held-out accuracy; with clip-higher the "
            "policy's entropy stays higher than with the symmetric clip."
        ),
        base=base,
        variants=rows,
        seeds=(0, 1, 2),
        metrics={
            "heldout_accuracy": ab.Metric("rl", "eval/pass@1"),
            "heldout_gain": ab.Metric("rl", "eval/pass@1", baseline_stage="sft"),
            # the sampling policy's mean token entropy over the second half of RL
            "entropy": ab.Metric("rl", "entropy", last_n=HALF),
            "truncated": ab.Metric("rl", "truncated", last_n=HALF),
            "train_reward": ab.Metric("rl", "score", last_n=HALF),
            # engagement: share of tokens at the upper clip, over every RL step
            "clip_frac_high": ab.Metric("rl", "clip_frac_high", last_n=RL_STEPS),
            "length_ratio": ab.Metric("rl", "length_ratio_in_group", last_n=RL_STEPS),
            "zero_adv_groups": ab.Metric("rl", "zero_adv_groups", last_n=RL_STEPS),
        },
        claims=[
            ab.Claim("clip-higher (0.2/0.28) keeps the entropy higher than the symmetric clip "
                     "(rows clip_higher vs overlong_filter)", "entropy", a="overlong_filter",
                     b="clip_higher", direction=">", margin=0.0, smallest_effect=0.2,
                     relative=True, engagement=("overlong_filter", "clip_frac_high"),
                     engagement_floor=0.03),
            ab.Claim("Table 1: clip-higher raises held-out accuracy over the row before",
                     "heldout_accuracy", a="overlong_filter", b="clip_higher", direction=">",
                     smallest_effect=0.02, engagement=("overlong_filter", "clip_frac_high"),
                     engagement_floor=0.03),
            ab.Claim("Table 1: overlong filtering raises held-out accuracy over GRPO",
                     "heldout_accuracy", a="grpo", b="overlong_filter", direction=">",
                     smallest_effect=0.02, engagement=("grpo", "truncated"),
                     engagement_floor=0.05),
            ab.Claim("Table 1: the soft overlong punishment raises held-out accuracy",
                     "heldout_accuracy", a="clip_higher", b="soft_overlong", direction=">",
                     smallest_effect=0.02, engagement=("clip_higher", "truncated"),
                     engagement_floor=0.05),
            ab.Claim("Table 1: the token-level loss raises held-out accuracy",
                     "heldout_accuracy", a="soft_overlong", b="token_level", direction=">",
                     smallest_effect=0.02, engagement=("soft_overlong", "length_ratio"),
                     engagement_floor=1.3),
            ab.Claim("Table 1: dynamic sampling raises held-out accuracy",
                     "heldout_accuracy", a="token_level", b="dynamic_sampling", direction=">",
                     smallest_effect=0.02, engagement=("token_level", "zero_adv_groups"),
                     engagement_floor=0.1),
        ],
    )
