r"""DeepSeekMath (Shao et al. 2024, §5.2.2, Figure 7): RL raises Maj@K but not Pass@K.

    python experiments/ablate.py --ablation=configs/ablations/deepseekmath_majk.py \
        --workdir=/tmp/ablate_majk

The paper's claim (§5.2.2, "Why RL works?", Figure 7: Pass@K and Maj@K of the Instruct model
and of the RL model, K up to 64): RL improves Maj@K but not Pass@K, which it reads as RL making
the output distribution more robust (boosting correct answers already among the top K) rather than
raising the model's fundamental capability. Registered, before results, on the default addition
task (SFT to 30% greedy held-out accuracy, then GRPO), with K = 8 samples a held-out prompt at the
rollout temperature (``eval.k``), each value GRPO's at the end of RL minus the SFT policy's (the
variant ``sft_policy``: the same run with a learning rate of 0, so the SFT weights are evaluated
at pass@8 and maj@8 on the same prompts and samples; the SFT stage itself evaluates greedily
only):

* RL raises maj@8 over SFT, smallest effect 0.02;
* RL does not raise pass@8 over SFT by more than 0.02 (a bounded change: the interval of the gain
  lies below 0.02);
* weaker, beside them: RL raises maj@8 more than pass@8 (the paired difference of the two gains).

Engagement: RL must have changed the policy for "pass@K unchanged" to say anything: the greedy
held-out accuracy (pass@1) rises at least 0.05 over SFT. A pass@8 already near 1 for the SFT
policy leaves nothing to raise (the table shows it); K = 8 is chosen so that the SFT policy's
pass@K has room (its greedy accuracy is 0.3).

Regime: 200 GRPO steps with the default settings (4 minibatches a rollout), evaluation every 50
steps with 8 samples a prompt. A first pilot of GRPO alone (seeds 0-1, 8 min; runs in
``experiments/results/ablations/deepseekmath_majk/grpo_only_pilot/``) could not be judged, since
the SFT stage logs no pass@8 or maj@8; hence the ``sft_policy`` variant.

Pilot (``pilot/``, seeds 0-1, 23 min on a shared 2-core CPU): engaged (greedy gain 0.30); maj@8
+0.38 (paired sd 0.088), pass@8 +0.12 (sd 0.077); the power calculation at the 0.02 smallest
effect asks for 156 and 120 seeds. The sweep ran 4 fresh seeds (2-5, 25 min), the budget left, so
it decides only if the effects are as large as the pilot's.

Sweep (seeds 2-5): engaged (greedy gain 0.26 [-0.05, 0.58]; on seed 5 RL did not move the policy,
gain 0). RL raises maj@8 by +0.26 [-0.09, +0.62]: INCONCLUSIVE (seed 5's zero gain widens the
interval); pass@8 +0.029 [-0.056, +0.115]: INCONCLUSIVE. On the three seeds where RL learned,
pass@8 rose by 0.00-0.11 and maj@8 by 0.27-0.51.
"""

from configs import arithmetic_grpo
from rl_jax import ablation as ab

RL_STEPS = 200
K = 8


def get_ablation() -> ab.Ablation:
    base = ab.apply_overrides(
        arithmetic_grpo.get_config(),
        {"rl.steps": RL_STEPS, "eval.k": K, "eval.every": 50, "log.every": 50,
         "checkpoint.every": 100},
    )
    return ab.Ablation(
        claim=(
            "DeepSeekMath (Shao et al. 2024), §5.2.2 and Figure 7: RL raises Maj@K but not "
            "Pass@K over the supervised model."
        ),
        base=base,
        variants={"sft_policy": {"rl.optim.lr": 0.0}, "grpo": {}},
        seeds=(0, 1, 2),
        metrics={
            "maj_at_k": ab.Metric("rl", f"eval/maj@{K}"),
            "pass_at_k": ab.Metric("rl", f"eval/pass@{K}"),
            "heldout_accuracy": ab.Metric("rl", "eval/pass@1"),
            "heldout_gain": ab.Metric("rl", "eval/pass@1", baseline_stage="sft"),
        },
        claims=[
            ab.Claim(f"RL raises maj@{K} over the SFT policy", "maj_at_k", a="sft_policy",
                     b="grpo", direction=">", margin=0.0, smallest_effect=0.02,
                     engagement="heldout_gain", engagement_floor=0.05),
            ab.Claim(f"RL does not raise pass@{K} over the SFT policy by more than 0.02",
                     "pass_at_k", a="sft_policy", b="grpo", direction="<", margin=0.02,
                     smallest_effect=0.02, engagement="heldout_gain", engagement_floor=0.05),
        ],
    )
