r"""Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training", §3): GRPO's length bias.

    python experiments/ablate.py --ablation=configs/ablations/dr_grpo.py \
        --workdir=/tmp/ablate_drgrpo

The claim (§3.1, Figure 5): GRPO divides each response's summed token loss by its own length
``|o_i|`` and its advantages by the group's reward std; a wrong response (negative advantage) is
then penalised less per token the longer it is, so wrong responses grow longer during training.
Dr. GRPO removes both (a constant normaliser, the generation budget, and advantages
``r - mean(r)``) and the growth of wrong responses stops. Here: GRPO (``estimator=grpo``,
``loss.agg=seq-mean-token-mean``) against Dr. GRPO (``estimator=dr_grpo``,
``loss.agg=seq-mean-token-sum-norm`` with ``max_len = rollout.max_new_tokens``).

The task must let the policy choose its length, and length must not help: then only the loss's
normalisation pushes on it. The task is ``addition_filler`` (``rl_jax/data/scratchpad.py``): the
default 3-digit additions, answer reversed, but a response may run on after its answer with
filler spaces (``"521      "``), and the reward (``exact_match``) compares the stripped response
with the answer. The filler carries no working, so a response of 4 tokens and one of 30 are
equally right. SFT targets carry 0 to 12 spaces (uniform), so RL starts from a policy with a
spread of lengths; the budget of 32 new tokens (the longest SFT target is 17 with EOS) leaves
room to grow. The filler follows the answer: in a first attempt it came before it (dots, then
``">"`` and the answer), and SFT reached 1% held-out accuracy in 2,000 steps (the default task's
answer positions, which this keeps, reach 30%).

Metric: ``length_incorrect``, the mean length (tokens, EOS included) of the responses that the
``exact_match`` reward scores 0, in each step's rollout; the claim's value is its mean over the
last quarter of RL. Both variants of a seed start from the same SFT weights and sample their first
rollout with the same key, so their first-step values are identical and the paired difference of
the end values is the difference of their growth (the start, step 1, is in the curves and in each
run's ``metrics.jsonl``).

Registered before results: the paper's claim is a direction with a visible gap (Figure 5: GRPO's
incorrect responses keep lengthening, Dr. GRPO's do not), so the claim is GRPO's incorrect
responses ending longer than Dr. GRPO's, smallest effect 10% of Dr. GRPO's length.
Engagement: the 1/|o| weights act only when lengths differ within a group: GRPO's mean
within-group ratio of the longest to the shortest response (``length_ratio_in_group``) over the
last quarter of RL at least 1.5.

Pilot (seeds 0-1, 9.5 min, ``experiments/results/ablations/dr_grpo/pilot/``): ENGAGED, GRPO's
within-group length ratio 2.05 over the last quarter (floor 1.5; 2.8-2.9 at the start). SFT
ends at 26-30% held-out accuracy, RL at 57-66%. Lengths drift with the seed, alike in both
variants: on seed 0 incorrect responses grow from 10.6 tokens to 13.7 (GRPO) and 13.2 (Dr.
GRPO) over the last quarter, on seed 1 they shrink from 10.5 to 5.9 and 6.1; correct responses
follow them.
length_incorrect GRPO - Dr. GRPO: +0.157 tokens (paired sd 0.47) against a smallest effect of
0.96 (10% of Dr. GRPO's 9.6); the power calculation asks for 5 seeds. The verdict runs 6 fresh
seeds, 2-7 (one more than asked, as the sd comes from two seeds).

Verdict sweep (seeds 2-7, 27 min with two rows at once; its runs record commit 62721b7, clean,
which differs from the sweep's start only in result files): engaged (GRPO's ratio 2.85), and
INCONCLUSIVE: length_incorrect GRPO - Dr. GRPO +0.33 tokens [-2.34, +2.99] against a band of
±1.0. The paired sd is 2.54, not the pilot's 0.47: per seed the difference runs from -2.7 to
+3.8. In every run the correct and the incorrect responses have the same mean length (within
0.2 tokens): the length of a run drifts as a whole, one way or the other, and the policy does
not make its wrong answers longer than its right ones, in either variant. On 3 of the 6 seeds
RL barely moves held-out accuracy (gain under 0.05). At this spread about 50 seeds would be
needed at the smallest effect; the paper's mechanism, wrong answers lengthening against right
ones, did not appear within 100 steps of this model.

The earlier sweep (``experiments/results/ablations/dr_grpo/twenty_token_budget/``, inconclusive)
used ``addition_scratchpad``, whose notes are real working: every response grew to the 14-token
full scratchpad, so the 1/|o| weights of a group were within 2x (not engaged).
"""

from configs import arithmetic_grpo
from rl_jax import ablation as ab

RL_STEPS = 100
LOG_EVERY = 5
MAX_FILLER = 12  # SFT targets end with 0-12 filler spaces
MAX_NEW_TOKENS = 32  # the longest SFT target is 17 tokens with EOS: room to grow
QUARTER = RL_STEPS // 4  # the steps of the last quarter of RL (every step has a record)


def get_ablation() -> ab.Ablation:
    base = ab.apply_overrides(
        arithmetic_grpo.get_config(),
        {"task.name": "addition_filler", "rewards.correctness": "exact_match",
         "rollout.max_new_tokens": MAX_NEW_TOKENS, "rl.steps": RL_STEPS, "eval.every": 25,
         "eval.k": 0, "log.every": LOG_EVERY, "log.samples_every": 0, "checkpoint.every": 100},
    )
    base.task.kwargs.max_filler = MAX_FILLER
    base.rewards.weights = {"exact_match": 1.0}
    return ab.Ablation(
        claim=(
            "Dr. GRPO (Liu et al. 2025), §3.1 and Figure 5: with GRPO's per-response 1/|o| "
            "normalisation and std scaling, incorrect responses grow longer during training than "
            "with Dr. GRPO (constant normaliser, no std scaling)."
        ),
        base=base,
        variants={
            "grpo": {"rl.estimator": "grpo", "loss.agg": "seq-mean-token-mean"},
            "dr_grpo": {"rl.estimator": "dr_grpo", "loss.agg": "seq-mean-token-sum-norm"},
        },
        seeds=(0, 1, 2),
        metrics={
            "length_incorrect": ab.Metric("rl", "length_incorrect", last_n=QUARTER),
            "length_correct": ab.Metric("rl", "length_correct", last_n=QUARTER),
            "heldout_accuracy": ab.Metric("rl", "eval/pass@1"),
            "heldout_gain": ab.Metric("rl", "eval/pass@1", baseline_stage="sft"),
            "train_reward": ab.Metric("rl", "score", last_n=QUARTER),
            "length_ratio": ab.Metric("rl", "length_ratio_in_group", last_n=QUARTER),
        },
        claims=[
            ab.Claim("incorrect responses end longer under GRPO than under Dr. GRPO (same start)",
                     "length_incorrect", a="dr_grpo", b="grpo", direction=">", margin=0.0,
                     smallest_effect=0.1, relative=True, engagement=("grpo", "length_ratio"),
                     engagement_floor=1.5),
        ],
    )
