"""What a stage trains (``TrainState``) and the one optimizer step every stage takes.

Below the trainers: the RL algorithm (``rl_jax.algorithm``) and the stage loop
(``rl_jax.trainers.loop``) both build on it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from rl_jax import models, parallel

Metrics = dict[str, Any]


class TrainState(NamedTuple):
    """What a stage trains: ``params`` (a dict of named models), their optimizer state, a step.

    ``opt_state`` is the optimizer's state of the trainable part of ``params`` only (see
    ``split_trainable``): with LoRA, of the adapters.
    """

    step: jax.Array  # int32 scalar: steps done (an RL step is epochs x minibatches updates)
    params: dict[str, Any]  # {"policy": ...}, {"reward": ...} or {"policy": ..., "value": ...}
    opt_state: Any


def split_trainable(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(trainable, frozen)`` parts of ``{name: model state}``.

    A model state with LoRA adapters (``nnx.LoRAParam`` leaves) trains only them: its base
    weights go to ``frozen``. Any other model trains every leaf. ``merge_trainable`` undoes it.
    """
    trainable, frozen = {}, {}
    for name, state in params.items():
        if isinstance(state, nnx.State) and models.has_adapters(state):
            trainable[name], frozen[name] = nnx.split_state(state, nnx.LoRAParam, ...)
        else:
            trainable[name] = state
    return trainable, frozen


def merge_trainable(trainable: dict[str, Any], frozen: dict[str, Any]) -> dict[str, Any]:
    """The ``params`` that ``split_trainable`` split (the same tree structure)."""
    return {
        name: nnx.merge_state(state, frozen[name]) if name in frozen else state
        for name, state in trainable.items()
    }


def optimizer_step(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, Metrics]],
    tx: optax.GradientTransformation,
    state: TrainState,
    batch: Any,
) -> tuple[TrainState, Metrics]:
    """One gradient update of ``state.params`` on ``batch`` (``state.step`` is left as it is).

    ``loss_fn(params, batch) -> (loss, metrics)``; ``grad_norm`` (before clipping) is added to
    the metrics. Only the trainable part (``split_trainable``) is differentiated and updated: the
    frozen base of a LoRA model gets no weight gradient and comes back bit-identical.
    """
    trainable, frozen = split_trainable(state.params)

    def trainable_loss(trainable, batch):
        return loss_fn(merge_trainable(trainable, frozen), batch)

    (_, metrics), grads = jax.value_and_grad(trainable_loss, has_aux=True)(trainable, batch)
    updates, opt_state = tx.update(grads, state.opt_state, trainable)
    params = merge_trainable(optax.apply_updates(trainable, updates), frozen)
    metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
    return TrainState(state.step, params, opt_state), metrics


def init_state(params: dict[str, Any], tx: optax.GradientTransformation, mesh):
    """``(state, shardings)``: step 0 of ``params`` with a fresh optimizer state (of the
    trainable part, ``split_trainable``), and the state's shardings over ``mesh``."""
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(split_trainable(params)[0]))
    return state, parallel.param_sharding(state, mesh)


def make_train_step(loss_fn, tx: optax.GradientTransformation):
    """``step(state, batch) -> (state, metrics)``: one ``optimizer_step``, then ``step + 1``."""

    def step(state: TrainState, batch):
        state, metrics = optimizer_step(loss_fn, tx, state, batch)
        return state._replace(step=state.step + 1), metrics

    return step
