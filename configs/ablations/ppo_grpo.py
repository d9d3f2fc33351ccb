r"""PPO against GRPO (DeepSeekMath, Shao et al. 2024, §4.1) at equal samples and updates.

    python experiments/ablate.py --ablation=configs/ablations/ppo_grpo.py \
        --workdir=/tmp/ablate_ppo_grpo

DeepSeekMath §4.1 introduces GRPO as a replacement for PPO that drops the value model (the group's
mean reward is the baseline), "significantly reducing training resources"; it reports no
head-to-head table of the two on equal budgets. The claim tested is the one that replacement
implies: GRPO reaches a gold reward at least as high as PPO's, within 0.03 (non-inferiority),
for the same sampled responses and the same updates. Smallest effect 0.02.

Regime: ``configs/ablations/rloo.py``'s (the synthetic preference task, SFT and reward model
shared per seed, 80 RL steps of 64 prompts x 4 on the learned reward, 2 passes of 4 minibatches
a rollout for both: equal updates), so the two sweeps share their PPO numbers' meaning. GRPO is
the config's ``:grpo`` (a k3 KL loss term at 0.05; PPO a k1 penalty in the reward at 0.05).
Engagement: RL moved the policy: GRPO's KL to the reference at least 1 nat a response.

Not run yet; the earlier RLOO sweep (``experiments/results/ablations/rloo/unequal_updates/``)
holds PPO and GRPO rows at unequal updates (PPO 8 a rollout, GRPO 4), not this claim's regime.
"""

from configs.ablations.rloo import algorithm, metrics
from rl_jax import ablation as ab


def get_ablation() -> ab.Ablation:
    base = algorithm("ppo")
    return ab.Ablation(
        claim=(
            "DeepSeekMath (Shao et al. 2024), §4.1: GRPO replaces PPO's value model by the "
            "group's mean reward; at equal samples and updates it reaches PPO's reward."
        ),
        base=base,
        variants={"ppo": {}, "grpo": ab.config_diff(base, algorithm("grpo"))},
        seeds=(0, 1, 2),
        metrics=metrics(),
        claims=[
            ab.Claim("GRPO reaches a gold reward at least as high as PPO (margin 0.03)",
                     "gold_reward", a="ppo", b="grpo", direction=">", margin=-0.03,
                     smallest_effect=0.02, engagement="kl_ref", engagement_floor=1.0),
        ],
    )
