"""Building blocks of the decoder: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Parameter names mirror the Hugging Face Llama/Qwen modules (`q_proj`, `input_layernorm`, ...), so
that a parameter path maps onto a checkpoint tensor name without a table (see `hf_io.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_jax.models.config import ModelConfig

# Masked attention scores get this instead of -inf: a query whose keys are all masked (a padding
# row) then gets a uniform softmax instead of NaN. Its output is never read at real tokens.
MASK_VALUE = -1e30

PARAM_INIT = nnx.initializers.normal(stddev=0.02)


def _dense(config: ModelConfig, d_in: int, d_out: int, bias: bool, rngs: nnx.Rngs) -> nnx.Linear:
    return nnx.Linear(
        d_in,
        d_out,
        use_bias=bias,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.dtype(config.param_dtype),
        kernel_init=PARAM_INIT,
        rngs=rngs,
    )


class RMSNorm(nnx.Module):
    """y = weight * x / sqrt(mean(x^2) + eps), normalised in float32 over the last axis."""

    def __init__(self, dim: int, eps: float, config: ModelConfig):
        self.weight = nnx.Param(jnp.ones((dim,), jnp.dtype(config.param_dtype)))
        self.eps = eps
        self.dtype = jnp.dtype(config.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., dim] -> [..., dim] in the compute dtype."""
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.weight[...].astype(self.dtype) * x32.astype(self.dtype)


def rope_inv_freq(config: ModelConfig) -> np.ndarray:
    """Inverse rotary frequencies [head_dim // 2] (float32), with Llama-3 scaling if configured.

    inv_freq_i = theta^(-2i / head_dim). Llama-3 scaling divides the low frequencies (wavelength
    above original_max / low_freq_factor) by `factor`, keeps the high ones (wavelength below
    original_max / high_freq_factor) and interpolates in between, as transformers does.
    """
    dim = config.head_dim
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    inv_freq = (1.0 / (np.float32(config.rope_theta) ** exponents)).astype(np.float32)
    scaling = config.rope_scaling
    if scaling is None:
        return inv_freq
    low_freq_wavelen = scaling.original_max_position_embeddings / scaling.low_freq_factor
    high_freq_wavelen = scaling.original_max_position_embeddings / scaling.high_freq_factor
    wavelen = (2 * np.pi / inv_freq).astype(np.float32)
    scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (scaling.original_max_position_embeddings / wavelen - scaling.low_freq_factor) / (
        scaling.high_freq_factor - scaling.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return np.where(is_medium, smoothed, scaled).astype(np.float32)


def rotary_cos_sin(config: ModelConfig, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """positions: [batch, time] int -> (cos, sin), each [batch, time, head_dim] float32."""
    inv_freq = jnp.asarray(rope_inv_freq(config))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates x: [batch, time, heads, head_dim] by cos/sin: [batch, time, head_dim]."""
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def _attend_one_query(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Attention of a single query step, for decoding.

    q: [B, kv_heads, groups, D]; k, v: [B, S, kv_heads, D]; mask: [B, S] bool.
    Returns [B, kv_heads, groups, D]. Written as broadcast-multiply-and-sum rather than einsum:
    on CPU, XLA lowers the einsum to many tiny batched matmuls plus transposes of the cache
    (about 3-4x slower for a decode step), while this form streams through k and v once.
    """
    d = q.shape[-1]
    scores = jnp.sum(q[:, None] * k[:, :, :, None, :], axis=-1) * (d**-0.5)  # [B, S, K, G]
    scores = jnp.where(mask[:, :, None, None], scores.astype(jnp.float32), MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=1).astype(v.dtype)
    return jnp.sum(probs[..., None] * v[:, :, :, None, :], axis=1)


class Attention(nnx.Module):
    """Grouped-query self-attention with optional q/k/v bias and per-head q/k RMSNorm."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        h, d = config.hidden_size, config.head_dim
        self.config = config
        self.q_proj = _dense(config, h, config.num_heads * d, config.attention_bias, rngs)
        self.k_proj = _dense(config, h, config.num_kv_heads * d, config.attention_bias, rngs)
        self.v_proj = _dense(config, h, config.num_kv_heads * d, config.attention_bias, rngs)
        self.o_proj = _dense(config, config.num_heads * d, h, config.attention_out_bias, rngs)
        if config.qk_norm:
            self.q_norm = RMSNorm(d, config.rms_norm_eps, config)
            self.k_norm = RMSNorm(d, config.rms_norm_eps, config)

    def project_kv(
        self, x: jax.Array, cos: jax.Array, sin: jax.Array
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """x: [B, T, hidden] -> q [B, T, heads, D], k and v [B, T, kv_heads, D] (rotated q, k)."""
        c = self.config
        b, t, _ = x.shape
        q = self.q_proj(x).reshape(b, t, c.num_heads, c.head_dim)
        k = self.k_proj(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        v = self.v_proj(x).reshape(b, t, c.num_kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def attend(self, q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
        """Attention without repeating k/v over the query groups.

        q: [B, T, heads, D]; k, v: [B, S, kv_heads, D]; mask: [B, T, S] bool (True = may attend).
        Returns [B, T, hidden]. Query head h uses kv head h // groups, as in transformers.
        """
        c = self.config
        b, t, _, d = q.shape
        q = q.reshape(b, t, c.num_kv_heads, c.num_groups, d)
        if t == 1:
            out = _attend_one_query(q[:, 0], k, v, mask[:, 0])[:, None]
        else:
            scores = jnp.einsum("btkgd,bskd->bkgts", q, k) * (d**-0.5)
            scores = jnp.where(mask[:, None, None], scores.astype(jnp.float32), MASK_VALUE)
            probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
            out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
        return self.o_proj(out.reshape(b, t, c.num_heads * d))


class MLP(nnx.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        h, m = config.hidden_size, config.intermediate_size
        self.gate_proj = _dense(config, h, m, False, rngs)
        self.up_proj = _dense(config, h, m, False, rngs)
        self.down_proj = _dense(config, m, h, False, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x: [..., hidden] -> [..., hidden]."""
        return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nnx.Module):
    """Pre-norm block: h += attn(norm(h)); h += mlp(norm(h))."""

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.self_attn = Attention(config, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps, config)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(
        self, h: jax.Array, cos: jax.Array, sin: jax.Array, mask: jax.Array
    ) -> jax.Array:
        """Full-sequence forward without a cache. h: [B, T, hidden]; mask: [B, T, T] bool."""
        q, k, v = self.self_attn.project_kv(self.input_layernorm(h), cos, sin)
        h = h + self.self_attn.attend(q, k, v, mask)
        return h + self.mlp(self.post_attention_layernorm(h))

    def decode(
        self,
        h: jax.Array,
        cos: jax.Array,
        sin: jax.Array,
        mask: jax.Array,
        cache_k: jax.Array,
        cache_v: jax.Array,
        layer: int,
        cache_index: jax.Array,
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Forward with a KV cache.

        h: [B, T, hidden]; mask: [B, T, S] bool; cache_k, cache_v: [layers, B, S, kv_heads, D].
        The T new keys/values are written at slots [cache_index, cache_index + T) of `layer`.
        Returns (h, cache_k, cache_v).
        """
        q, k, v = self.self_attn.project_kv(self.input_layernorm(h), cos, sin)
        start = (layer, 0, cache_index, 0, 0)
        cache_k = jax.lax.dynamic_update_slice(cache_k, k[None].astype(cache_k.dtype), start)
        cache_v = jax.lax.dynamic_update_slice(cache_v, v[None].astype(cache_v.dtype), start)
        keys = cache_k[layer].astype(q.dtype)
        values = cache_v[layer].astype(q.dtype)
        h = h + self.self_attn.attend(q, keys, values, mask)
        return h + self.mlp(self.post_attention_layernorm(h)), cache_k, cache_v
