"""LoRA: low-rank adapters on a `CausalLM`'s projections, the frozen base, and merging.

A projection W [in, out] of `ModelConfig.lora_targets` becomes W + s A B with A [in, rank],
B [rank, out] and s = alpha / rank (`layers.LoRALinear`). The adapters are per logical projection,
named as in Hugging Face/PEFT (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj):
the fused q/k/v and gate/up matmuls stay fused on the base kernels and add each adapter's output
to its own part. Adapter leaves are `nnx.LoRAParam` (a subclass of `nnx.Param`); the base leaves
keep their paths, so a checkpoint's tensor names do not change.

What trains: a model state holding adapters trains only them (`rl_jax.trainers.loop`'s
`split_trainable`); the base weights are bit-identical after any number of steps and serve as the
reference policy with the adapters off (`adapters_off`: B = 0, the same base arrays, no copy).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import transformers
from flax import nnx

from rl_jax.models.config import ModelConfig
from rl_jax.models.hf_io import save_pretrained
from rl_jax.models.layers import LoRALinear
from rl_jax.models.transformer import CausalLM


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def has_adapters(state) -> bool:
    """Whether an nnx state (or module) holds LoRA adapter leaves."""
    if isinstance(state, nnx.Module):
        state = nnx.state(state)
    leaves = jax.tree.leaves(state, is_leaf=_is_variable)
    return any(isinstance(leaf, nnx.LoRAParam) for leaf in leaves)


def with_lora_config(
    config: ModelConfig, rank: int, alpha: float, targets: Sequence[str]
) -> ModelConfig:
    """`config` with adapters of `rank` on `targets` (rank 0: none)."""
    return dataclasses.replace(
        config, lora_rank=rank, lora_alpha=alpha, lora_targets=tuple(targets) if rank else ()
    )


def _leaf_name(path) -> str:
    return str(getattr(path[-1], "key", path[-1]))


def _fresh_adapter(rngs: nnx.Rngs, name: str, variable: nnx.Variable) -> nnx.Variable:
    """A's init (PEFT's kaiming-uniform, a = sqrt(5)) or B = 0, of the abstract leaf's shape."""
    shape, dtype = variable.shape, variable.dtype
    if name == "lora_b":
        return variable.replace(jnp.zeros(shape, dtype))
    init = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")
    return variable.replace(init(rngs.params(), shape, dtype))


def add_adapters(
    model: CausalLM, *, rank: int, alpha: float, targets: Sequence[str], rngs: nnx.Rngs
) -> CausalLM:
    """A new CausalLM with `model`'s weights (the same arrays, not copies) and fresh adapters of
    `rank` on `targets`: A random, B = 0, so its logits are exactly `model`'s.

    Raises ValueError if `model` already has adapters.
    """
    if model.config.lora_rank:
        raise ValueError("add_adapters: the model already has adapters (merge_adapters first)")
    config = with_lora_config(model.config, rank, alpha, targets)
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0))))
    adapters = jax.tree_util.tree_map_with_path(
        lambda path, v: _fresh_adapter(rngs, _leaf_name(path), v),
        nnx.split_state(abstract, nnx.LoRAParam, ...)[0],
        is_leaf=_is_variable,
    )
    base = jax.tree.map(lambda x: x, nnx.state(model))  # new Variables, the same arrays
    return nnx.merge(graphdef, nnx.merge_state(adapters, base))


def adapters_off(state):
    """The nnx state with every adapter's B set to zero: the base model's function.

    The base leaves are the same arrays (no copy): the reference policy of a LoRA run.
    """

    def off(path, variable):
        if isinstance(variable, nnx.LoRAParam) and _leaf_name(path) == "lora_b":
            return variable.replace(jnp.zeros_like(variable[...]))
        return variable

    return jax.tree_util.tree_map_with_path(off, state, is_leaf=_is_variable)


def merged_kernel(kernel: jax.Array, lora_a: jax.Array, lora_b: jax.Array, scale: float):
    """W + scale A B in float32, cast back to W's dtype. W [in, out], A [in, r], B [r, out]."""
    delta = scale * (lora_a.astype(jnp.float32) @ lora_b.astype(jnp.float32))
    return (kernel.astype(jnp.float32) + delta).astype(kernel.dtype)


def fold_adapters(graphdef: nnx.GraphDef, state):
    """The nnx state with each adapter folded into its base kernel (W + s A B) and B reset to 0.

    The model computes the same function (up to float32 rounding of W + s A B); its base is now
    the adapted model (e.g. the policy after LoRA SFT: the reference of the RL stage after it).
    """
    model = nnx.merge(graphdef, jax.tree.map(lambda x: x, state))  # new Variables
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, LoRALinear):
            a, b = layer.lora.lora_a[...], layer.lora.lora_b[...]
            layer.kernel[...] = merged_kernel(layer.kernel[...], a, b, layer.scale)
            layer.lora.lora_b[...] = jnp.zeros_like(b)
    return nnx.state(model)


def merge_adapters(model: CausalLM) -> CausalLM:
    """A CausalLM without adapters whose kernels are W + (alpha / rank) A B (float32 sums): the
    same function as `model`, as a plain model (Hugging Face's layout, see `save_merged`)."""
    config = with_lora_config(model.config, 0, model.config.lora_alpha, ())
    folded = fold_adapters(*nnx.split(model))
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0))))
    return nnx.merge(graphdef, nnx.split_state(folded, nnx.LoRAParam, ...)[1])


def save_merged(
    model: CausalLM,
    tokenizer: transformers.PreTrainedTokenizerBase | None,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> None:
    """Folds the adapters into the base weights and writes a Hugging Face directory
    (config.json, model.safetensors, tokenizer) that `transformers` loads as a plain model."""
    save_pretrained(merge_adapters(model), tokenizer, path, overwrite=overwrite)
