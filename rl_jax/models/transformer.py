"""Decoder-only transformer backbone, its heads (LM, value, reward) and functional wrappers."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from rl_jax.models.config import ModelConfig
from rl_jax.models.layers import DecoderLayer, RMSNorm, param_init, rotary_cos_sin


class DecodeCache(NamedTuple):
    """The KV cache: keys and values of all layers, laid out for fast decoding.

    k: tuple of num_layers arrays [batch, num_kv_heads, head_dim, max_len] (keys transposed).
    v: tuple of num_layers arrays [batch, num_kv_heads, max_len, head_dim].
    With `scan_layers` each is one stacked array instead: k [num_layers, batch, num_kv_heads,
    head_dim, max_len], v [num_layers, batch, num_kv_heads, max_len, head_dim] (`k[i]` and `v[i]`
    are layer i's buffers in both layouts).
    """

    k: tuple[jax.Array, ...] | jax.Array
    v: tuple[jax.Array, ...] | jax.Array


def init_decode_cache(
    config: ModelConfig, batch: int, max_len: int, dtype: Any = None
) -> DecodeCache:
    """A zero `DecodeCache`; `dtype` defaults to the compute dtype of `config`.

    With `config.scan_layers` the layers' buffers are stacked into one array each (see
    `DecodeCache`), read and written in place by the scanned layers.

    One key and one value buffer per layer, keys transposed: a decode step's attention is then
    two batched matmuls that read each layer's buffers in place (see
    `Attention.attend_transposed`). On CPU the sampler's decode step for the 3.4M model (64 rows,
    80 slots) took ~20% less time than with per-layer [batch, max_len, kv_heads, head_dim]
    buffers. `Sampler.from_model` uses it.
    """
    dtype = jnp.dtype(config.dtype if dtype is None else dtype)
    b, kv, d = batch, config.num_kv_heads, config.head_dim
    layers = range(config.num_layers)
    if config.scan_layers:
        n = config.num_layers
        return DecodeCache(
            k=jnp.zeros((n, b, kv, d, max_len), dtype), v=jnp.zeros((n, b, kv, max_len, d), dtype)
        )
    return DecodeCache(
        k=tuple(jnp.zeros((b, kv, d, max_len), dtype) for _ in layers),
        v=tuple(jnp.zeros((b, kv, max_len, d), dtype) for _ in layers),
    )


def positions_from_mask(mask: jax.Array) -> jax.Array:
    """Rotary positions [B, T] int32 from a 0/1 mask [B, T]: cumsum(mask) - 1, clipped at 0.

    Real tokens get 0, 1, 2, ... whatever the padding on either side, so padded and unpadded
    sequences see the same positions.
    """
    return jnp.maximum(jnp.cumsum(mask.astype(jnp.int32), axis=-1) - 1, 0).astype(jnp.int32)


def attention_mask(key_mask: jax.Array, num_queries: int, cache_index: Any = 0) -> jax.Array:
    """Causal and padding mask [B, T, S] bool.

    key_mask: [B, S] (1 = real token). The query i sits at slot cache_index + i and may attend
    to slots j <= cache_index + i with key_mask[b, j] == 1.
    """
    query_slots = cache_index + jnp.arange(num_queries, dtype=jnp.int32)
    key_slots = jnp.arange(key_mask.shape[-1], dtype=jnp.int32)
    causal = key_slots[None, :] <= query_slots[:, None]
    return causal[None] & (key_mask[:, None, :] != 0)


def last_token_index(mask: jax.Array) -> jax.Array:
    """Index [B] int32 of the last position with mask == 1 in each row of mask [B, T] (0: none)."""
    steps = jnp.arange(mask.shape[-1], dtype=jnp.int32)
    return jnp.max(jnp.where(mask != 0, steps, 0), axis=-1)


def _layer_forward(
    layer: DecoderLayer, h: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array
) -> jax.Array:
    return layer(h, cos, sin, mask)


def remat_policy(name: str) -> Any:
    """The `jax.checkpoint` policy of a `ModelConfig.remat` name (not for "none": no checkpoint).

    "full": nothing is saved inside a layer (its input is, as the checkpoint's argument); the
    backward recomputes the layer's forward. "dots_saveable": the outputs of every matmul are
    saved, elementwise ops (norms, rotary, silu, softmax) recomputed.
    "dots_with_no_batch_dims_saveable": only matmuls without batch dimensions (the weight
    projections) are saved; attention's batched score and value matmuls are recomputed.
    """
    policies = {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots_saveable": jax.checkpoint_policies.dots_saveable,
        "dots_with_no_batch_dims_saveable": (
            jax.checkpoint_policies.dots_with_no_batch_dims_saveable
        ),
    }
    if name not in policies:
        raise ValueError(f"remat policy {name!r}: expected one of {sorted(policies)}")
    return policies[name]


def stack_modules(modules: Sequence[nnx.Module]) -> nnx.Module:
    """One module of `modules[0]`'s structure whose every array is the stack of the modules'
    arrays along a new leading axis: leaves [len(modules), ...]. For `lax.scan` over layers."""
    graphdef, _ = nnx.split(modules[0])
    states = [nnx.state(m) for m in modules]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


# Config fields a built model can change without touching its weights.
RECONFIGURABLE = ("remat", "scan_layers", "attention_impl")


def reconfigure(model: nnx.Module, **changes: Any) -> nnx.Module:
    """`model` (a CausalLM, ValueModel or RewardModel) with config fields of `RECONFIGURABLE`
    changed: the same class and weights. `scan_layers` converts the decoder layers between the
    list and the stacked ([num_layers, ...] leaves) layouts (a copy); other changes reuse the
    arrays. Returns `model` itself when nothing changes.

    Raises:
      ValueError: for a field outside `RECONFIGURABLE` (it would change the weights' shapes).
    """
    unknown = sorted(set(changes) - set(RECONFIGURABLE))
    if unknown:
        raise ValueError(f"reconfigure: {unknown} cannot change; expected fields of "
                         f"{RECONFIGURABLE}")
    config = model.config
    new_config = dataclasses.replace(config, **changes)
    if new_config == config:
        return model
    graphdef, state = nnx.split(nnx.eval_shape(lambda: type(model)(new_config, rngs=nnx.Rngs(0))))
    pure = nnx.to_pure_dict(nnx.state(model))
    layers = pure["model"]["layers"]
    if new_config.scan_layers and not config.scan_layers:  # {0: tree, ...} -> [L, ...] leaves
        per_layer = [layers[i] for i in range(config.num_layers)]
        pure["model"]["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs), *per_layer)
    elif config.scan_layers and not new_config.scan_layers:
        pure["model"]["layers"] = {
            i: jax.tree.map(lambda x, i=i: x[i], layers) for i in range(config.num_layers)
        }
    nnx.replace_by_pure_dict(state, pure)
    return nnx.merge(graphdef, state)


class Transformer(nnx.Module):
    """Embedding, decoder layers and final norm: tokens -> hidden states.

    Shared by `CausalLM`, `ValueModel` and `RewardModel`, so a critic or reward model can start
    from a policy's backbone (see `ValueModel.from_policy`).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.embed_tokens = nnx.Embed(
            config.vocab_size,
            config.hidden_size,
            dtype=jnp.dtype(config.dtype),
            param_dtype=jnp.dtype(config.param_dtype),
            embedding_init=param_init(config),
            rngs=rngs,
        )
        layers = [DecoderLayer(config, rngs=rngs) for _ in range(config.num_layers)]
        # Scanned: one DecoderLayer whose arrays are [num_layers, ...] (the same initial weights).
        self.layers = stack_modules(layers) if config.scan_layers else nnx.List(layers)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps, config)

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        *,
        cache: DecodeCache | None = None,
        cache_index: Any = 0,
    ) -> tuple[jax.Array, DecodeCache | None]:
        """Hidden states [B, T, hidden] (compute dtype) and the updated cache (or None).

        tokens, positions: [B, T] int32; key_mask: [B, S] with S == T without a cache and
        S == cache max_len with one. See `CausalLM.__call__` for the cache semantics.
        """
        h = self.embed_tokens(tokens)
        cos, sin = rotary_cos_sin(self.config, positions)
        if cache is None:
            if key_mask.shape != tokens.shape:
                raise ValueError(
                    f"without a cache key_mask must be [B, T] = {tokens.shape}, "
                    f"got {key_mask.shape}"
                )
            mask = attention_mask(key_mask, tokens.shape[1])
            if self.config.scan_layers:
                return self.norm(self._scan_forward(h, cos, sin, mask)), None
            forward = _layer_forward
            if self.config.remat != "none":
                forward = nnx.remat(_layer_forward, policy=remat_policy(self.config.remat))
            for layer in self.layers:
                h = forward(layer, h, cos, sin, mask)
            return self.norm(h), None
        batch_and_len = (cache.v[0].shape[0], cache.v[0].shape[2])  # v: [B, kv_heads, S, D]
        if key_mask.shape != batch_and_len:
            raise ValueError(
                f"with a cache key_mask must be [B, max_len] = {batch_and_len}, "
                f"got {key_mask.shape}"
            )
        cache_index = jnp.asarray(cache_index, jnp.int32)
        mask = attention_mask(key_mask, tokens.shape[1], cache_index)
        if self.config.scan_layers:
            h, cache = self._scan_decode(h, cos, sin, mask, cache, cache_index)
            return self.norm(h), cache
        keys_t, values = list(cache.k), list(cache.v)
        for i, layer in enumerate(self.layers):
            h, keys_t[i], values[i] = layer.decode_in_place(
                h, cos, sin, mask, keys_t[i], values[i], cache_index
            )
        return self.norm(h), DecodeCache(tuple(keys_t), tuple(values))

    def _scan_forward(
        self, h: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array
    ) -> jax.Array:
        """The stacked layers over h [B, T, hidden] in one `lax.scan` (each step under
        `jax.checkpoint` with the configured remat policy)."""
        graphdef, stacked = nnx.split(self.layers)

        def body(h, layer_state):
            return nnx.merge(graphdef, layer_state)(h, cos, sin, mask), None

        if self.config.remat != "none":
            body = jax.checkpoint(body, policy=remat_policy(self.config.remat))
        return jax.lax.scan(body, h, stacked)[0]

    def _scan_decode(
        self, h: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array,
        cache: DecodeCache, cache_index: jax.Array,
    ) -> tuple[jax.Array, DecodeCache]:
        """`DecoderLayer.decode_in_place` of every stacked layer in one `lax.scan`.

        The stacked cache (k [L, B, K, D, S], v [L, B, K, S, D]) is carried through the scan and
        only the new tokens' slots of layer i are written (a dynamic-update-slice of
        [1, B, K, D, T]), so the cache is updated in place, never copied per step.
        """
        graphdef, stacked = nnx.split(self.layers)

        def body(carry, xs):
            h, keys_t, values = carry
            layer_state, i = xs
            layer = nnx.merge(graphdef, layer_state)
            attn = layer.self_attn
            q, k, v = attn.project_qkv(layer.input_layernorm(h), cos, sin)
            k_t = k.transpose(0, 2, 3, 1)[None].astype(keys_t.dtype)  # [1, B, K, D, T]
            v_t = v.transpose(0, 2, 1, 3)[None].astype(values.dtype)  # [1, B, K, T, D]
            keys_t = jax.lax.dynamic_update_slice(keys_t, k_t, (i, 0, 0, 0, cache_index))
            values = jax.lax.dynamic_update_slice(values, v_t, (i, 0, 0, cache_index, 0))
            h = h + attn.attend_transposed(q, keys_t[i], values[i], mask)
            h = h + layer.mlp(layer.post_attention_layernorm(h))
            return (h, keys_t, values), None

        layer_ids = jnp.arange(self.config.num_layers, dtype=jnp.int32)
        (h, keys_t, values), _ = jax.lax.scan(
            body, (h, cache.k, cache.v), (stacked, layer_ids)
        )
        return h, DecodeCache(keys_t, values)


class CausalLM(nnx.Module):
    """Decoder with a next-token head (`lm_head`, or the embedding when tied)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Transformer(config, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = nnx.Linear(
                config.hidden_size,
                config.vocab_size,
                use_bias=False,
                dtype=jnp.float32,
                param_dtype=jnp.dtype(config.param_dtype),
                kernel_init=param_init(config),
                rngs=rngs,
            )

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        key_mask: jax.Array,
        *,
        cache: DecodeCache | None = None,
        cache_index: Any = 0,
    ) -> tuple[jax.Array, DecodeCache | None]:
        """Next-token logits.

        tokens, positions: [B, T] int32. key_mask: [B, S] (1 = real token).
        Without cache: S == T, attention is causal and masked by key_mask.
        With cache: S == cache max_len; the T new tokens' k/v are written into slots
        [cache_index, cache_index + T) (cache_index: int32 scalar, may be traced); the query at
        slot cache_index + i attends to slots j <= cache_index + i with key_mask[b, j] == 1.
        The caller keeps cache_index + T <= max_len: a traced index cannot be checked here, and
        lax.dynamic_update_slice would clamp it (overwriting the last slots).
        Returns (logits [B, T, vocab] float32, new cache or None).
        """
        h, cache = self.model(tokens, positions, key_mask, cache=cache, cache_index=cache_index)
        return self.logits(h), cache

    def hidden_states(
        self, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array
    ) -> jax.Array:
        """Final (normed) hidden states [B, T, hidden] in the compute dtype, without the head.

        For losses that apply the head themselves, e.g. in chunks (`rl_jax.chunked`).
        """
        return self.model(tokens, positions, key_mask)[0]

    def head_weight(self) -> tuple[jax.Array, bool]:
        """The LM head weight as stored, and whether it is vocab-major.

        Tied: (the input embedding [vocab, hidden], True); untied: (the `lm_head` kernel
        [hidden, vocab], False). `logits(h)` is `h @ weight.T` or `h @ weight` in float32,
        bias-free; `rl_jax.chunked.head_logits` computes the same from this pair.
        """
        if self.config.tie_word_embeddings:
            return self.model.embed_tokens.embedding[...], True
        return self.lm_head.kernel[...], False

    def logits(self, h: jax.Array) -> jax.Array:
        """h: [B, T, hidden] -> logits [B, T, vocab] float32."""
        h = h.astype(jnp.float32)
        if self.config.tie_word_embeddings:
            embedding = self.model.embed_tokens.embedding[...].astype(jnp.float32)
            return jnp.einsum("bth,vh->btv", h, embedding)
        return self.lm_head(h)


class _ScalarHeadModel(nnx.Module):
    """Backbone + linear head to one scalar per token (float32)."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.model = Transformer(config, rngs=rngs)
        self.score = nnx.Linear(
            config.hidden_size,
            1,
            use_bias=True,
            dtype=jnp.float32,
            param_dtype=jnp.float32,
            kernel_init=param_init(config),
            rngs=rngs,
        )

    def token_scores(
        self, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array
    ) -> jax.Array:
        """tokens, positions, key_mask: [B, T] -> one float32 score per token [B, T]."""
        h, _ = self.model(tokens, positions, key_mask)
        return self.score(h.astype(jnp.float32))[..., 0]

    @classmethod
    def from_policy(cls, policy: CausalLM, *, rngs: nnx.Rngs) -> _ScalarHeadModel:
        """A new model whose backbone starts from a copy of `policy.model`; fresh head.

        A LoRA policy's adapters are not copied: the new model is its base, without adapters
        (a critic or reward model trains in full).
        """
        config = dataclasses.replace(policy.config, lora_rank=0, lora_targets=())
        new = cls(config, rngs=rngs)
        base = nnx.split_state(nnx.state(policy.model), nnx.LoRAParam, ...)[1]
        nnx.update(new.model, jax.tree.map(jnp.copy, base))
        return new


class ValueModel(_ScalarHeadModel):
    """Critic: a value per token."""

    def __call__(self, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array) -> jax.Array:
        """tokens, positions, key_mask: [B, T] -> values [B, T] float32."""
        return self.token_scores(tokens, positions, key_mask)


class RewardModel(_ScalarHeadModel):
    """Sequence reward: the head read at the last real token of each sequence."""

    def __call__(self, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array) -> jax.Array:
        """tokens, positions, key_mask: [B, T] -> rewards [B] float32.

        Read at the last index where key_mask == 1 (works for left and right padding).
        """
        scores = self.token_scores(tokens, positions, key_mask)
        index = last_token_index(key_mask)
        return jnp.take_along_axis(scores, index[:, None], axis=-1)[:, 0]


class ProcessRewardModel(_ScalarHeadModel):
    """Process reward model: a step-correctness logit at every token, read at the tokens where
    steps end (``rl_jax.reward_losses.process_reward_loss``)."""

    def __call__(self, tokens: jax.Array, positions: jax.Array, key_mask: jax.Array) -> jax.Array:
        """tokens, positions, key_mask: [B, T] -> logits [B, T] float32."""
        return self.token_scores(tokens, positions, key_mask)


def apply_lm(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    positions: jax.Array,
    key_mask: jax.Array,
    cache: DecodeCache | None = None,
    cache_index: Any = 0,
) -> tuple[jax.Array, DecodeCache | None]:
    """Pure `CausalLM.__call__` on `graphdef, state = nnx.split(model)`; safe inside jax.jit.

    Returns (logits [B, T, vocab] float32, new cache or None).
    """
    model = nnx.merge(graphdef, state)
    return model(tokens, positions, key_mask, cache=cache, cache_index=cache_index)


def apply_lm_hidden(
    graphdef: nnx.GraphDef,
    state: nnx.State,
    tokens: jax.Array,
    positions: jax.Array,
    key_mask: jax.Array,
) -> tuple[jax.Array, jax.Array, bool]:
    """Pure `CausalLM.hidden_states` and `head_weight` on a split model; safe inside jax.jit.

    Returns (hidden [B, T, hidden] compute dtype, head weight, vocab_major): the pieces of the
    logits `apply_lm` would return, for losses that apply the head in chunks.
    """
    model = nnx.merge(graphdef, state)
    return (model.hidden_states(tokens, positions, key_mask), *model.head_weight())


def apply_model(
    graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array, positions: jax.Array,
    key_mask: jax.Array,
) -> jax.Array:
    """Pure call of a `ValueModel` or `ProcessRewardModel` ([B, T]) or `RewardModel` ([B]) from
    its split state."""
    return nnx.merge(graphdef, state)(tokens, positions, key_mask)
