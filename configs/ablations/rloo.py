r"""RLOO (Ahmadian et al. 2024): RLOO k=4 matches or beats PPO on reward, with little clipping.

    python experiments/ablate.py --ablation=configs/ablations/rloo.py --workdir=/tmp/ablate_rloo

``configs/preference_rm_ppo.py``: SFT and a reward model from a hidden gold labeller's rankings
(shared by every variant of a seed), then RL on the learned reward with 64 prompts x 4 samples a
step for every variant (equal sampled responses): PPO (the config's default), GRPO and RLOO (the
config's ``:grpo`` and ``:rloo``, a k3 KL loss term) and REINFORCE++ (the ``:grpo`` settings with
``rl.estimator=reinforce_pp`` and the KL as a k1 penalty in the reward, coefficient 0.05 as
PPO's). The gold reward is never trained on; it is what the claims are about.

Size: the reward model trains 200 steps and each variant 80 RL steps, so that 3 seeds of the 4
variants fit in under an hour on a 2-core CPU.
"""

from configs import preference_rm_ppo
from rl_jax import ablation as ab

RL_STEPS = 80  # the config's 100, shortened so that the sweep fits a CPU (see above)
LAST = 10  # logged steps averaged for "final" metrics


def algorithm(name: str):
    """``configs/preference_rm_ppo.py:<name>`` with this sweep's size (200 reward-model steps: its
    held-out pair accuracy is near its final value by then)."""
    return ab.apply_overrides(
        preference_rm_ppo.get_config(name),
        # logits_chunk=0: the committed results use the full logits; chunking changes float
        # rounding, so a rerun with it would differ.
        {"rl.steps": RL_STEPS, "rm.steps": 200, "model.logits_chunk": 0},
    )


def get_ablation() -> ab.Ablation:
    base = algorithm("ppo")
    grpo = ab.config_diff(base, algorithm("grpo"))
    variants = {
        "ppo": {},
        "grpo": grpo,
        "rloo": ab.config_diff(base, algorithm("rloo")),
        "reinforce_pp": {**grpo, "rl.estimator": "reinforce_pp", "kl.in_reward": True},
    }
    clipped = ("clip_frac_low", "clip_frac_high")
    return ab.Ablation(
        claim=(
            "RLOO (Ahmadian et al. 2024, 'Back to Basics', arXiv:2402.14740; its results section "
            "and its study of PPO's clipping; section numbers not checked here): RLOO with k=4 "
            "reaches a reward at least as high as PPO for the same number of sampled responses, "
            "and its importance ratio is rarely clipped (under 5%)."
        ),
        base=base,
        variants=variants,
        seeds=(0, 1, 2),
        metrics={
            "gold_reward": ab.Metric("rl", "reward/digits_gold", last_n=LAST),
            "learned_reward": ab.Metric("rl", "reward/model", last_n=LAST),
            "kl_ref": ab.Metric("rl", "kl_ref", last_n=LAST),
            "clip_fraction": ab.Metric("rl", clipped, last_n=RL_STEPS),
            "well_formed": ab.Metric("rl", "accuracy", last_n=LAST),
        },
        claims=[
            # non-inferiority: RLOO's gold reward is not below PPO's by more than 0.03 (about a
            # tenth of the gold-reward gain of RL over SFT on this task, 0.49 -> 0.78)
            ab.Claim("RLOO k=4 reaches a gold reward at least as high as PPO (margin 0.03)",
                     "gold_reward", a="ppo", b="rloo", direction=">", margin=-0.03),
            ab.Claim("RLOO's clip fraction stays below 5%",
                     "clip_fraction", a=None, b="rloo", direction="<", margin=0.05),
        ],
    )
