"""Optimizers: AdamW with warmup and constant or cosine decay, and global-norm clipping."""

from __future__ import annotations

import dataclasses

import ml_collections
import optax

SCHEDULES = ("constant", "cosine")


def learning_rate_schedule(
    lr: float, *, warmup_steps: int, total_steps: int, decay: str = "constant"
) -> optax.Schedule:
    """Linear warmup from 0 to ``lr`` over ``warmup_steps``, then constant or cosine to 0.

    ``total_steps`` counts optimizer updates (after accumulation), warmup included.
    """
    if decay not in SCHEDULES:
        raise ValueError(f"optim.decay must be one of {SCHEDULES}, got {decay!r}.")
    if decay == "constant":
        after = optax.constant_schedule(lr)
    else:
        after = optax.cosine_decay_schedule(lr, max(total_steps - warmup_steps, 1))
    if warmup_steps <= 0:
        return after
    warmup = optax.linear_schedule(0.0, lr, warmup_steps)
    return optax.join_schedules([warmup, after], [warmup_steps])


@dataclasses.dataclass(frozen=True)
class OptimSettings:
    """An ``optim`` section of a config, typed (fields documented in ``make_optimizer``)."""

    lr: float
    warmup_steps: int
    decay: str
    weight_decay: float
    b1: float
    b2: float
    eps: float
    max_grad_norm: float
    grad_accum_steps: int

    @classmethod
    def from_config(cls, optim: ml_collections.ConfigDict) -> OptimSettings:
        """The settings of an ``optim`` section (``optim_config``'s fields)."""
        return cls(**{f.name: optim[f.name] for f in dataclasses.fields(cls)})


def make_optimizer(settings: OptimSettings, total_steps: int) -> optax.GradientTransformation:
    """The optimizer ``settings`` (an ``optim`` section's ``OptimSettings``) describes.

    Fields: ``lr``, ``warmup_steps``, ``decay`` ("constant" | "cosine"), ``weight_decay``, ``b1``,
    ``b2``, ``eps``, ``max_grad_norm`` (0 disables clipping), ``grad_accum_steps``: with k > 1,
    ``optax.MultiSteps`` applies one update with the mean gradient of k consecutive calls (k
    minibatches of the RL update, or k SFT steps), so the learning-rate schedule counts updates.
    """
    if settings.grad_accum_steps < 1:
        raise ValueError(f"optim.grad_accum_steps must be >= 1, got {settings.grad_accum_steps}")
    schedule = learning_rate_schedule(
        settings.lr,
        warmup_steps=settings.warmup_steps,
        total_steps=max(total_steps // settings.grad_accum_steps, 1),
        decay=settings.decay,
    )
    parts = []
    if settings.max_grad_norm > 0:
        parts.append(optax.clip_by_global_norm(settings.max_grad_norm))
    parts.append(
        optax.adamw(
            schedule, b1=settings.b1, b2=settings.b2, eps=settings.eps,
            weight_decay=settings.weight_decay,
        )
    )
    tx = optax.chain(*parts)
    if settings.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=settings.grad_accum_steps)
    return tx


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """The default ``optim`` section of a config (documented in ``make_optimizer``)."""
    config = ml_collections.ConfigDict(
        dict(
            lr=1e-3,
            warmup_steps=0,
            decay="constant",
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            max_grad_norm=1.0,
            grad_accum_steps=1,
        )
    )
    config.update(overrides)
    return config
