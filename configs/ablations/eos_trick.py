r"""The EOS trick (Huang et al. 2024, "The N+ implementation details of RLHF with PPO"): fewer
truncated responses.

    python experiments/ablate.py --ablation=configs/ablations/eos_trick.py --workdir=/tmp/ablate_eos

``configs/preference_rm_ppo.py`` (SFT, a reward model from a hidden gold labeller's rankings, then
PPO on the learned reward), with and without ``rl.eos_trick``: a response that ends without EOS
(it hit ``rollout.max_new_tokens``) scores ``rl.missing_eos_score = -1`` instead of its learned
reward (the RL score is the reward normalised by its mean and std on the SFT policy's samples, so
-1 is one standard deviation below the SFT policy's average). SFT and the reward model are shared
by both variants of a seed; only RL differs.

The regime, chosen so that the trick has something of the paper's kind to act on (a policy drawn
to run past the budget) and nothing else (no correct answer is cut):

* A labeller that pays for length: the reward model learns from ``digits_verbose`` rankings (the
  digit values of the whole response, so every extra digit adds; ``rl_jax.data.digits``), as
  TL;DR raters and reward models favour longer summaries. The config's ``digits_gold`` takes a
  point off per wrong character and so pays for the exact length, which gives no pull past it.
* ``rollout.max_new_tokens = 7``: the longest well-formed answer (6 digits + EOS) fits exactly,
  so only a response longer than any the task asks for is cut.
* SFT stops after 25 steps (``sft.steps = 25``, no accuracy stop): a fully trained SFT policy
  writes exactly ``n`` digits, so the reward model, trained on the SFT policy's samples, never sees
  two lengths to rank and learns the digits' values only (probe, seed 0, budget 8, SFT stopped at
  50 steps: PPO raised the digits' values and cut no response in 40 steps). After 25 steps the
  samples' lengths spread and the reward model learns that a longer answer ranks higher.

Size, set so that the runs fit a CPU: the reward model learns from 512 prompts in 100 steps (held-
out pair accuracy 0.97 in the probes) and PPO runs 40 steps of 32 prompts x 4 (half the config's
batch). Probes (seed 0, no trick, not the pilot): the truncated share rises to 0.64 by step 4,
then falls and stays near 0.10 over the last 10 steps with budget 7 (0.07 with budget 8): the
learned reward scores a cut response at its last digit, a position it never saw scored, and the
policy runs long less often as PPO goes on, but does not stop doing so.

The paper's claim, registered before results: with the EOS trick, PPO produces fewer truncated
responses (the trick exists to stop the policy from running past the budget) and responses no
longer than without it. Smallest effect of the first: 20% of the truncated share without the
trick. Engagement: the trick acts only on responses that the policy chose to run long, not on
correct answers the budget cuts; the share of the no-trick run's responses truncated while not
well formed (``truncated_incorrect``) must be at least 5%. As first registered, both read the
last 10 RL steps.

Pilot (seeds 0-1, 6 min, ``experiments/results/ablations/eos_trick/pilot/``): engaged, but
only just at the end of RL. Without the trick the truncated share rises from about 0.4 after
SFT to 0.6 by step 5, then falls on its own (the learned reward ranks a cut response below a
finished one often enough) to 0.10 and 0.03 over the last 10 steps (mean 0.068, floor 0.05);
with the trick to 0.006 and 0.012. Over all 40 steps: 0.21 and 0.18 without, 0.04 and 0.07
with (paired sd 0.041). Length over the last 10 steps: -0.38 tokens with the trick (sd 0.07).
Added after the pilot and before any verdict seed, beside the claims as first registered: the
same claim over the whole of RL (mean of every step's truncated share, engagement the same
measure over every step), where the policy runs long and the trick acts, rather than only in
the residue the no-trick policy keeps at the end. The verdict runs 12 fresh seeds, 2-13 (the
power calculation at the whole-run smallest effect asks for about 10; the end-of-RL claim's
asks for 127 at its smallest effect, 0.0136, so it decides only if the effect stays near the
pilot's -0.06).

Verdict sweep (seeds 2-13, 25 min of runs on the shared CPU; its runs record commit 1469c04,
clean, which differs from the sweep's start only in result files): every claim engaged and
REPRODUCED. Over the whole of RL the trick cuts the truncated share from 0.31 to 0.06,
-0.25 [-0.39, -0.11] (smallest effect 0.06; engagement 0.31); over the last 10 steps from 0.12
to 0.013, -0.10 [-0.20, -0.01] (smallest effect 0.024); with the trick every seed ends at
0.8-1.6% truncated, without it 2-46%. Responses are shorter with the trick, -0.31 tokens
[-0.42, -0.20] (claimed: not longer by 0.1). The learned reward (1.54 and 1.55 without and
with the trick) and the length-paying gold reward (0.74 and 0.72) barely differ. Caveat: the SFT
policy is a quarter trained, so only about a tenth of the responses are well formed in either
variant; the claims are about truncation, which this does not touch, but the policies are not
the paper's fluent ones.

The earlier sweep (``experiments/results/ablations/eos_trick/six_token_budget/``, inconclusive)
had a 6-token budget that cut well-formed 6-digit answers and a reward that did not pay for
length.
"""

from configs import preference_rm_ppo
from rl_jax import ablation as ab

RL_STEPS = 40
LAST = 10  # RL steps (each logged) averaged for "final" metrics


def get_ablation() -> ab.Ablation:
    base = ab.apply_overrides(
        preference_rm_ppo.get_config("ppo"),
        {"rollout.max_new_tokens": 7, "rm.gold": "digits_verbose", "sft.steps": 25,
         "sft.stop_accuracy": 1.01, "rm.num_prompts": 512, "rm.steps": 100,
         "rl.steps": RL_STEPS, "rl.num_prompts": 32},
    )
    base.rewards.weights = {"digits_verbose": 0.0, "digits_gold": 0.0}  # logged, not trained on
    return ab.Ablation(
        claim=(
            "Huang et al. 2024, 'The N+ Implementation Details of RLHF with PPO: A Case Study on "
            "TL;DR Summarization' (arXiv:2403.17031), the EOS trick: replacing the reward of a "
            "response that does not end with EOS by a fixed -1 keeps PPO on a learned reward from "
            "producing truncated responses and from lengthening them (section not checked here)."
        ),
        base=base,
        variants={"no_trick": {}, "eos_trick": {"rl.eos_trick": True}},
        seeds=(0, 1, 2),
        metrics={
            "truncated": ab.Metric("rl", "truncated", last_n=LAST),
            "truncated_run": ab.Metric("rl", "truncated", last_n=RL_STEPS),
            "truncated_incorrect_run": ab.Metric("rl", "truncated_incorrect", last_n=RL_STEPS),
            "length": ab.Metric("rl", "length", last_n=LAST),
            "gold_reward": ab.Metric("rl", "reward/digits_verbose", last_n=LAST),
            "exact_length_gold": ab.Metric("rl", "reward/digits_gold", last_n=LAST),
            "learned_reward": ab.Metric("rl", "reward/model", last_n=LAST),
            "well_formed": ab.Metric("rl", "accuracy", last_n=LAST),
            "kl_ref": ab.Metric("rl", "kl_ref", last_n=LAST),
            # well-formed responses that were cut, and what is left of the truncated share
            "truncated_correct": ab.Metric("rl", "truncated_correct", last_n=LAST),
            "truncated_incorrect": ab.Metric("rl", "truncated_incorrect", last_n=LAST),
        },
        claims=[
            ab.Claim("over the whole of RL, with the EOS trick a smaller share of responses is "
                     "truncated (no EOS)",
                     "truncated_run", a="no_trick", b="eos_trick", direction="<", margin=0.0,
                     smallest_effect=0.2, relative=True,
                     engagement=("no_trick", "truncated_incorrect_run"), engagement_floor=0.05),
            ab.Claim("with the EOS trick, a smaller share of responses is truncated (no EOS)",
                     "truncated", a="no_trick", b="eos_trick", direction="<", margin=0.0,
                     smallest_effect=0.2, relative=True,
                     engagement=("no_trick", "truncated_incorrect"), engagement_floor=0.05),
            # "not longer": at most 0.1 token longer on average (non-inferiority)
            ab.Claim("with the EOS trick, responses are not longer (margin 0.1 token)",
                     "length", a="no_trick", b="eos_trick", direction="<", margin=0.1,
                     smallest_effect=0.1, engagement=("no_trick", "truncated_incorrect"),
                     engagement_floor=0.05),
        ],
    )
