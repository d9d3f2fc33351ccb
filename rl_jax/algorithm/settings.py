"""``RLSettings``: the static options of the RL step, typed, built once from the config."""

from __future__ import annotations

import dataclasses

import ml_collections

from rl_jax.algorithm.registry import ESTIMATORS, NO_CORRECTION


@dataclasses.dataclass(frozen=True)
class RLSettings:
    """Static options of the RL step (hashable, so jit specialises on them).

    A run builds them once with ``from_config`` from a config that ``check_config`` validated
    (``rl_jax.settings.RunSettings`` holds them as ``rl.algorithm``). No field has a default: the
    config's are the only ones.
    """

    estimator: str
    group_size: int
    temperature: float
    gamma: float
    lam: float
    whiten_advantages: bool
    whiten_rewards: bool  # scale the sequence scores to unit variance (mean kept)
    kl_loss_coef: float  # GRPO's beta: KL to the reference as a loss term
    kl_in_reward: bool  # PPO/REINFORCE++: -coef * KL(token) added to the token rewards
    kl_estimator: str
    clip_low: float
    clip_high: float
    dual_clip: float | None
    ratio_level: str
    agg: str
    max_len: int | None
    vf_coef: float
    value_clip: float | None
    count_empty_rows: bool  # TRL: empty responses count in sequence-mean denominators
    overlong_filter: bool  # DAPO: truncated responses count in no loss term
    policy_loss: str  # a name in POLICY_LOSSES
    gmpo_clip: float  # GMPO's clip of the token log-ratio (log space)
    cov_ratio: float  # Clip-Cov: share of tokens detached; KL-Cov: share penalised
    cov_lower: float  # Clip-Cov: the covariance band tokens are drawn from
    cov_upper: float
    kl_cov_coef: float
    sapo_tau_pos: float  # SAPO's gate temperature for positive advantages
    sapo_tau_neg: float  # ... and for the others
    is_correction: str  # sampler/trainer mismatch: see rl_jax.mismatch
    is_cap: float  # TIS truncation
    is_low: float  # masked IS: the band the ratio must stay in
    is_high: float
    epochs: int
    num_minibatches: int
    seed: int
    # Response positions per LM-head chunk (rl_jax.chunked): the live logits are
    # [batch, logits_chunk, vocab] float32. 0: the full [batch, P + R, vocab] logits at once.
    logits_chunk: int
    # Each group's prompt runs once in every forward (rl_jax.models.prefix); the update then
    # shuffles whole groups. Needs group_size >= 2 and the rows of a group contiguous.
    shared_prefix: bool
    # rl.max_staleness: the rollouts trained on at step s come from the policy of step s - k at
    # most (rl_jax.trainers.staleness); k >= 1 adds the behaviour importance-weight metrics.
    max_staleness: int

    def __post_init__(self):
        if self.shared_prefix and self.group_size < 2:
            raise ValueError(f"shared_prefix needs group_size >= 2, got {self.group_size}")

    @property
    def shared_group(self) -> int:
        """The group size the forward shares a prompt over (0: every row runs its prompt)."""
        return self.group_size if self.shared_prefix else 0

    @property
    def single_pass(self) -> bool:
        """One on-policy update per rollout: the old log-probs are the update's own (as in TRL).

        The first update of a rollout runs at the sampling weights, so its forward pass gives the
        old log-probs with no extra forward; with more updates (or TIS) ``prepare`` computes them.
        """
        return (self.epochs == 1 and self.num_minibatches == 1
                and self.is_correction == NO_CORRECTION)

    @property
    def has_critic(self) -> bool:
        return ESTIMATORS[self.estimator].critic

    @property
    def samples_from_reference(self) -> bool:
        """Responses are drawn from the initial (reference) policy, not the trained one (RFT)."""
        return ESTIMATORS[self.estimator].sampler == "reference"

    @property
    def needs_reference(self) -> bool:
        return self.kl_loss_coef > 0 or self.kl_in_reward

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict) -> RLSettings:
        """The RL step's options of a validated config (``rl``, ``rollout``, ``loss``, ``kl``,
        ``model.logits_chunk``, ``seed``)."""
        rl, loss, kl = config.rl, config.loss, config.kl
        return cls(
            estimator=rl.estimator,
            group_size=rl.group_size,
            temperature=config.rollout.temperature,
            gamma=rl.gamma,
            lam=rl.lam,
            whiten_advantages=rl.whiten_advantages,
            whiten_rewards=rl.whiten_rewards,
            kl_loss_coef=0.0 if kl.in_reward else kl.coef,
            kl_in_reward=kl.in_reward and kl.coef > 0,
            kl_estimator=kl.estimator,
            clip_low=loss.clip_low,
            clip_high=loss.clip_high,
            dual_clip=loss.dual_clip or None,
            ratio_level=loss.ratio_level,
            agg=loss.agg,
            max_len=config.rollout.max_new_tokens,
            vf_coef=loss.vf_coef,
            value_clip=loss.value_clip or None,
            count_empty_rows=loss.count_empty_rows,
            overlong_filter=rl.overlong_filter,
            policy_loss=loss.policy_loss,
            gmpo_clip=loss.gmpo_clip,
            cov_ratio=loss.cov_ratio,
            cov_lower=loss.cov_lower,
            cov_upper=loss.cov_upper,
            kl_cov_coef=loss.kl_cov_coef,
            sapo_tau_pos=loss.sapo_tau_pos,
            sapo_tau_neg=loss.sapo_tau_neg,
            is_correction=loss.is_correction,
            is_cap=loss.is_cap,
            is_low=loss.is_low,
            is_high=loss.is_high,
            epochs=rl.epochs,
            num_minibatches=rl.num_minibatches,
            seed=config.seed,
            logits_chunk=config.model.logits_chunk,
            shared_prefix=rl.shared_prefix,
            max_staleness=rl.max_staleness,
        )
