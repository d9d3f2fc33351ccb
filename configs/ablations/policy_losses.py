r"""The 2025 policy losses side by side on the default task: GRPO (PPO's clipped ratio), CISPO,
GMPO, Clip-Cov and KL-Cov, with the same SFT start and seeds.

    python experiments/ablate.py --ablation=configs/ablations/policy_losses.py \
        --workdir=/tmp/ablate_losses --seeds=0

Not a paper's ablation: a check that each loss trains the default task without NaN, with its
held-out accuracy and entropy over steps. The default task has 4 minibatches a rollout, so the
ratios leave 1 and the clipping (or its replacement) acts. Clip-Cov and KL-Cov use Cui et al.'s
token shares (2e-4 detached, 2e-3 penalised); CISPO MiniMax-M1's unbounded-below weight
(``clip_low=1``) with DAPO's upper clip 0.28; GMPO its log-space clip 0.4.

The claim, from Cui et al. 2025 (§4, the entropy curves of Clip-Cov and KL-Cov against GRPO):
the baseline's entropy collapses during RL, and Clip-Cov and KL-Cov keep it from collapsing, well
above the baseline's at the end (several-fold in the paper's curves; the exact ratio was not read
off here). Registered, before results, on the entropy averaged over the last 50 logged steps:

* the paper's size: at least 2x GRPO's entropy (log10 difference > log10 2), smallest effect 0.1
  in log10 (a factor of 1.26);
* weaker, beside it: higher than GRPO's, smallest effect +20% of GRPO's entropy.

Engagement: the mechanism acts only on the tokens it selects: Clip-Cov's tokens detached in a
minibatch (``cov_clip_tokens``, those in its covariance band), KL-Cov's tokens penalised
(``kl_cov_tokens``), mean over RL, at least 1, so that a selection that is empty (no token in the
band) reads "not engaged". At this scale (about 300 response tokens a minibatch) the paper's
shares (2e-4, 2e-3) round up to one token a minibatch, a larger share than the paper's but the
same mechanism; the paper's batches (thousands of long responses) select hundreds a minibatch,
which a CPU run cannot reach. The regime trains until the baseline's entropy collapses: 400 RL
steps (in the earlier 200-step sweep, two of three GRPO seeds had fallen to about 0.06-0.10 nats).

Pilot (``experiments/results/ablations/policy_losses/pilot/``, seeds 0-1, rows grpo, clip_cov
and kl_cov, 19 min on a shared 2-core CPU): KL-Cov engaged (1 token a minibatch, every step),
Clip-Cov not (0.87 tokens a minibatch: some minibatches have no token in its covariance band);
log10-entropy paired sd 0.006 (Clip-Cov) and 0.042 (KL-Cov), 2 and 4 seeds asked for. The metrics
``cov_clip_tokens`` and ``kl_cov_tokens`` were then scoped to the variants that log them
(``Metric.variants``: the first report stopped on the grpo rows, which log neither); the claims
were not changed (the pilot's original registration is ``pilot/ablation.original.json``).

Sweep (fresh seeds 2-5, the same three rows, 69 min of runs on a 2-core CPU shared with other
jobs; about 40 min alone): GRPO's entropy ends at 0.04-0.10 nats on three seeds and 0.52 on one.

* KL-Cov at the paper's size: NO EFFECT OF THE CLAIMED SIZE, log10 difference +0.024
  [-0.035, +0.082] (inside ±0.1; 2x would be +0.301). Weaker: NO EFFECT OF THE CLAIMED SIZE,
  +0.0076 nats [-0.0035, +0.0186] (inside ±0.037, 20% of GRPO's entropy).
* Clip-Cov: NOT ENGAGED (0.86 tokens a minibatch against the floor 1), both claims; its entropy
  differs from GRPO's by +0.0036 nats [-0.0029, +0.0101].

The 200-step sweep (inconclusive) is kept in
``experiments/results/ablations/policy_losses/two_hundred_steps/``.
"""

from configs import arithmetic_grpo
from rl_jax import ablation as ab

RL_STEPS = 400
LAST = 50


def get_ablation() -> ab.Ablation:
    base = ab.apply_overrides(
        arithmetic_grpo.get_config(),
        {"rl.steps": RL_STEPS, "eval.every": 25, "log.every": 50, "checkpoint.every": 100},
    )
    return ab.Ablation(
        claim=(
            "Cui et al. 2025 (The Entropy Mechanism of RL for Reasoning LMs), §4 and Figure 8: "
            "Clip-Cov and KL-Cov keep the policy's entropy higher than the clipped GRPO/PPO loss."
        ),
        base=base,
        variants={
            "grpo": {},
            "cispo": {"loss.policy_loss": "cispo", "loss.clip_low": 1.0, "loss.clip_high": 0.28},
            "gmpo": {"loss.policy_loss": "gmpo", "loss.gmpo_clip": 0.4},
            "clip_cov": {"loss.policy_loss": "clip_cov", "loss.cov_ratio": 2e-4},
            "kl_cov": {"loss.policy_loss": "kl_cov", "loss.cov_ratio": 2e-3},
        },
        seeds=(0, 1, 2),
        metrics={
            "heldout_accuracy": ab.Metric("rl", "eval/pass@1"),
            "heldout_gain": ab.Metric("rl", "eval/pass@1", baseline_stage="sft"),
            "entropy": ab.Metric("rl", "entropy", last_n=LAST),
            "log10_entropy": ab.Metric("rl", "entropy", last_n=LAST, log10=True),
            "cov_clip_tokens": ab.Metric("rl", "cov_clip_tokens", last_n=RL_STEPS,
                                         variants=("clip_cov",)),
            "kl_cov_tokens": ab.Metric("rl", "kl_cov_tokens", last_n=RL_STEPS,
                                       variants=("kl_cov",)),
            "train_reward": ab.Metric("rl", "score", last_n=LAST),
        },
        claims=[
            ab.Claim("the paper's size: Clip-Cov keeps the entropy at least 2x GRPO's",
                     "log10_entropy", a="grpo", b="clip_cov", direction=">", margin=0.30103,
                     smallest_effect=0.1, engagement="cov_clip_tokens", engagement_floor=1.0),
            ab.Claim("the paper's size: KL-Cov keeps the entropy at least 2x GRPO's",
                     "log10_entropy", a="grpo", b="kl_cov", direction=">", margin=0.30103,
                     smallest_effect=0.1, engagement="kl_cov_tokens", engagement_floor=1.0),
            ab.Claim("weaker: Clip-Cov keeps entropy higher than GRPO", "entropy", a="grpo",
                     b="clip_cov", direction=">", margin=0.0, smallest_effect=0.2, relative=True,
                     engagement="cov_clip_tokens", engagement_floor=1.0),
            ab.Claim("weaker: KL-Cov keeps entropy higher than GRPO", "entropy", a="grpo",
                     b="kl_cov", direction=">", margin=0.0, smallest_effect=0.2, relative=True,
                     engagement="kl_cov_tokens", engagement_floor=1.0),
        ],
    )
