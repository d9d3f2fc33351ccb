"""Shared-prefix forward: each prompt computed once for the G completions that share it.

A GRPO group is one prompt with G sampled completions. The plain forward runs the batch
``[n * G, P + R]`` (prompt then completion in every row), so each prompt goes through the model G
times. Here the prompts ``[n, P]`` go through once, and completion row ``b`` (of prompt
``b // G``) attends over its prompt's keys and values, then over its own causal prefix::

    keys(b) = [K_prompt[b // G] (P slots, masked by the prompt mask), K_completion[b] (causal)]

The prompt's keys and values reach the completion rows through ``jnp.repeat`` over G, whose
transpose is the sum over the group: the gradient of all G completions flows back into the one
prompt, exactly as the plain forward's gradient sums over its G copies (the same function of the
parameters, so the same log-probs, loss and gradient up to float rounding; tested in
``tests/test_shared_prefix.py``). The rows of a prompt's completions are contiguous: row ``b``
belongs to prompt ``b // G``, as the sampler returns them.

Positions are those of the plain forward on ``concat(prompt, completion)`` with
``positions_from_mask``: a left-padded prompt's real tokens are 0 .. L - 1 and the completion
continues at L.

The non-attention work (projections, MLP, norms) of a step falls from ``n G (P + R)`` tokens to
``n (P + G R)``; the completions' attention is unchanged (each still scores ``P + R`` keys), the
prompts' attention is done once instead of G times.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rl_jax.models.layers import DecoderLayer, rotary_cos_sin
from rl_jax.models.transformer import (
    Transformer,
    attention_mask,
    positions_from_mask,
    remat_policy,
)


def prefix_positions_and_masks(
    prompt_mask: jax.Array, response_mask: jax.Array
) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]:
    """Rotary positions and attention masks of the shared-prefix layout.

    Args:
      prompt_mask: ``[n, P]`` 1 on real prompt tokens (any padding side, usually left).
      response_mask: ``[n * G, R]`` 1 on real completion tokens.

    Returns:
      ``((prompt_positions [n, P], response_positions [n * G, R]),
      (prompt_attention [n, P, P], response_attention [n * G, R, P + R]))``: the positions and
      masks the plain forward gives those tokens on ``concat(prompt, completion)`` rows.
    """
    n, p = prompt_mask.shape
    rows, r = response_mask.shape
    group = rows // n
    prompt_len = jnp.repeat(jnp.sum(prompt_mask.astype(jnp.int32), axis=-1), group)  # [n * G]
    steps = jnp.cumsum(response_mask.astype(jnp.int32), axis=-1)
    response_positions = jnp.maximum(prompt_len[:, None] + steps - 1, 0).astype(jnp.int32)
    over_prompt = jnp.repeat(prompt_mask != 0, group, axis=0)[:, None, :]  # every slot precedes
    over_prompt = jnp.broadcast_to(over_prompt, (rows, r, p))
    response_attention = jnp.concatenate([over_prompt, attention_mask(response_mask, r)], -1)
    return (
        (positions_from_mask(prompt_mask), response_positions),
        (attention_mask(prompt_mask, p), response_attention),
    )


def _layer(
    layer: DecoderLayer, hp: jax.Array, hr: jax.Array, rope: Any, masks: Any, group: int
) -> tuple[jax.Array, jax.Array]:
    """One decoder layer on prompts hp ``[n, P, hidden]`` and completions hr ``[nG, R, hidden]``."""
    (cos_p, sin_p), (cos_r, sin_r) = rope
    mask_p, mask_r = masks
    attn = layer.self_attn
    qp, kp, vp = attn.project_qkv(layer.input_layernorm(hp), cos_p, sin_p)
    qr, kr, vr = attn.project_qkv(layer.input_layernorm(hr), cos_r, sin_r)
    hp = hp + attn.attend(qp, kp, vp, mask_p)
    # The prompt's K/V repeated over its group: the transpose (backward) sums the group's
    # gradients into the one prompt.
    k = jnp.concatenate([jnp.repeat(kp, group, axis=0), kr], axis=1)
    v = jnp.concatenate([jnp.repeat(vp, group, axis=0), vr], axis=1)
    hr = hr + attn.attend(qr, k, v, mask_r)
    hp = hp + layer.mlp(layer.post_attention_layernorm(hp))
    hr = hr + layer.mlp(layer.post_attention_layernorm(hr))
    return hp, hr


def shared_prefix_hidden(
    backbone: Transformer,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    response_tokens: jax.Array,
    response_mask: jax.Array,
) -> jax.Array:
    """Final (normed) hidden states ``[n * G, R, hidden]`` at the positions that predict each
    completion token: the prompt's last slot, then the completion's first ``R - 1`` slots.

    ``prompt_tokens``/``prompt_mask`` ``[n, P]`` (left-padded: slot ``P - 1`` is the last prompt
    token); ``response_tokens``/``response_mask`` ``[n * G, R]``, rows ``[i G, (i + 1) G)``
    completing prompt ``i``. Equals the plain forward's ``hidden[:, P - 1 : P + R - 1]`` on
    ``concat(prompt[b // G], completion[b])`` rows (the module docstring).
    """
    n, rows = prompt_tokens.shape[0], response_tokens.shape[0]
    if rows % n:
        raise ValueError(f"{rows} completion rows do not split into groups of the {n} prompts")
    group = rows // n
    config = backbone.config
    (pos_p, pos_r), masks = prefix_positions_and_masks(prompt_mask, response_mask)
    rope = (rotary_cos_sin(config, pos_p), rotary_cos_sin(config, pos_r))
    hp, hr = backbone.embed_tokens(prompt_tokens), backbone.embed_tokens(response_tokens)

    def forward(layer, hp, hr, rope, masks):
        return _layer(layer, hp, hr, rope, masks, group)

    if config.scan_layers:
        graphdef, stacked = nnx.split(backbone.layers)

        def body(carry, layer_state):
            return forward(nnx.merge(graphdef, layer_state), *carry, rope, masks), None

        if config.remat != "none":
            body = jax.checkpoint(body, policy=remat_policy(config.remat))
        hp, hr = jax.lax.scan(body, (hp, hr), stacked)[0]
    else:
        if config.remat != "none":
            forward = nnx.remat(forward, policy=remat_policy(config.remat))
        for layer in backbone.layers:
            hp, hr = forward(layer, hp, hr, rope, masks)
    last_prompt = jnp.repeat(backbone.norm(hp[:, -1:]), group, axis=0)  # predicts token 0
    return jnp.concatenate([last_prompt, backbone.norm(hr[:, :-1])], axis=1)


def apply_lm_shared_prefix(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    response_tokens: jax.Array,
    response_mask: jax.Array,
) -> tuple[jax.Array, jax.Array, bool]:
    """A `CausalLM`'s shared-prefix forward on its split state; safe inside jax.jit.

    Returns (hidden ``[n * G, R, hidden]`` predicting each completion token, head weight,
    vocab_major): the pieces of the completion logits (``rl_jax.chunked.head_logits``), as
    `apply_lm_hidden` returns them for the plain layout.
    """
    model = nnx.merge(graphdef, state)
    hidden = shared_prefix_hidden(
        model.model, prompt_tokens, prompt_mask, response_tokens, response_mask
    )
    return (hidden, *model.head_weight())


def apply_values_shared_prefix(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    prompt_tokens: jax.Array,
    prompt_mask: jax.Array,
    response_tokens: jax.Array,
    response_mask: jax.Array,
) -> jax.Array:
    """A `ValueModel`'s values ``[n * G, R]`` float32 of the states before each completion token,
    by the shared-prefix forward (the plain layout's ``values[:, P - 1 : P + R - 1]``)."""
    model = nnx.merge(graphdef, state)
    hidden = shared_prefix_hidden(
        model.model, prompt_tokens, prompt_mask, response_tokens, response_mask
    )
    return model.score(hidden.astype(jnp.float32))[..., 0]
