r"""The 2025 policy losses side by side on the default task: GRPO (PPO's clipped ratio), CISPO,
GMPO, Clip-Cov and KL-Cov, with the same SFT start and seeds.

    python experiments/ablate.py --ablation=configs/ablations/policy_losses.py \
        --workdir=/tmp/ablate_losses --seeds=0

Not a paper's ablation: a check that each loss trains the default task without NaN, with its
held-out accuracy and entropy over steps. The default task has 4 minibatches a rollout, so the
ratios leave 1 and the clipping (or its replacement) acts. Clip-Cov and KL-Cov use Cui et al.'s
token shares (2e-4 detached, 2e-3 penalised); CISPO MiniMax-M1's unbounded-below weight
(``clip_low=1``) with DAPO's upper clip 0.28; GMPO its log-space clip 0.4.

The one claim, from Cui et al. 2025 (§4, Figure 8): Clip-Cov and KL-Cov keep the policy's entropy
higher than the clipped-ratio baseline. Entropy is the mean over the last 50 logged steps.
"""

from configs import arithmetic_grpo
from rl_jax import ablation as ab

RL_STEPS = 200
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
            "train_reward": ab.Metric("rl", "score", last_n=LAST),
        },
        claims=[
            ab.Claim("Clip-Cov keeps entropy higher than GRPO", "entropy", a="grpo",
                     b="clip_cov", direction=">", margin=0.0),
            ab.Claim("KL-Cov keeps entropy higher than GRPO", "entropy", a="grpo", b="kl_cov",
                     direction=">", margin=0.0),
        ],
    )
