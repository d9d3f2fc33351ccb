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

The base is the default addition task (SFT to 30% held-out accuracy, shared by the six rows of a
seed), with two changes stated before any result:

* ``rollout.max_new_tokens = 6`` (default 8): every correct answer is at most 5 tokens (4 digits
  and EOS; the tokenizer has one token per character), so 6 leaves correct answers untouched while
  a response of 6 or more digits is cut: truncation has something to act on, as in DAPO where
  ``L_max`` is a budget that some responses exceed. The soft overlong punishment's buffer is 1
  token (DAPO: 4,096 of 20,480, a fifth): only a 6-token response, which is never correct, is
  punished (by up to ``overlong_penalty = 1``).
* ``RL_STEPS`` RL steps of 32 prompts x 8 responses, 4 minibatches a rollout (the clip acts only
  off-policy), sized so the 18 runs fit in about 25 minutes on this shared 2-core CPU (one run was
  timed first, below); held-out evaluation every 20 steps, greedy only (``eval.k = 0``).
"""

from configs import arithmetic_grpo
from rl_jax import ablation as ab

RL_STEPS = 60
LOG_EVERY = 5
HALF = RL_STEPS // 2  # the steps of the second half of RL (every step has a record)


def get_ablation() -> ab.Ablation:
    base = ab.apply_overrides(
        arithmetic_grpo.get_config(),
        {"rl.steps": RL_STEPS, "rollout.max_new_tokens": 6, "loss.agg": "seq-mean-token-mean",
         "loss.clip_low": 0.2, "loss.clip_high": 0.2, "eval.every": 20, "eval.k": 0,
         "log.every": LOG_EVERY, "log.samples_every": 0, "checkpoint.every": 100},
    )
    rows = {"grpo": {}}
    steps = [
        ("overlong_filter", {"rl.overlong_filter": True}),
        ("clip_higher", {"loss.clip_high": 0.28}),
        ("soft_overlong", {"rl.overlong_buffer": 1, "rl.overlong_penalty": 1.0}),
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
        },
        claims=[
            ab.Claim("clip-higher (0.2/0.28) keeps the entropy higher than the symmetric clip "
                     "(rows clip_higher vs overlong_filter)", "entropy", a="overlong_filter",
                     b="clip_higher", direction=">", margin=0.0),
        ],
    )
