"""A per-device memory estimate of a run, printed at start-up, and the check that it fits.

``estimate(settings, model_config, ...)`` is a pure function of the run's settings
(``rl_jax.settings.RunSettings``), the model's shapes and the mesh: it allocates nothing
(parameter shapes come from ``nnx.eval_shape``) and returns bytes per device for each item below.
``check_fits`` raises ``MemoryError`` naming the config fields that reduce the total, before
anything is compiled (``rl_jax.trainers.run`` calls both).

Notation: ``L`` layers, hidden ``H``, intermediate ``I``, ``n_q`` query and ``n_kv`` key/value heads
of size ``d``, vocabulary ``V``; ``b`` bytes of the compute dtype (``model.dtype``), ``p`` bytes of
the parameter dtype; ``D`` devices, of which ``F`` share one copy of the parameters (``fsdp``).
Rows per device are rounded up (``ceil(rows / D)``). ``P`` is the prompt bucket (the longest
prompt rounded up to a power of two, at least 16, as the sampler does), ``N`` = ``max_new_tokens``,
``T = P + N`` the training sequence.

Persistent (whole run):
  * ``policy``: the policy's parameters in ``p``; every array of at least 2**14 elements with a
    dimension divisible by ``F`` is split over the fsdp axis (``parallel.param_sharding``), the
    others are replicated.
  * ``optimizer``: AdamW's two moments, like the parameters (optax keeps them in ``p``); a third
    copy with ``optim.grad_accum_steps > 1`` (``optax.MultiSteps``' accumulator).
  * ``reference``: a copy of the policy when ``kl.coef > 0`` (``RLSettings.needs_reference``) or
    when RFT samples the initial policy (``RLSettings.samples_from_reference``).
  * ``critic``: GAE's value model (the policy's backbone + a scalar head) with its optimizer
    state and gradient: 4x its parameters.
  * ``reward_model``: the learned reward's backbone when ``rewards.model_weight != 0``, and the
    process reward model's with ``rl.step_rewards = "model"``.
  * ``initial_weights``: ``ctx.policy``, the model as built or loaded, stays alive for the run
    (``trainers.setup.build_context``): a loaded model (``model.path``) is placed shard by shard
    in the policy's layout, so it counts like ``policy``; a fresh model is built on the first
    device and counts whole.

Sampling (the rollout batch, ``R_s = ceil(num_prompts * group_size / D)`` rows per device):
  * ``kv_cache = L x 2 x R_s x (P + N_b) x n_kv x d x b`` (keys and values; ``N_b`` the new-token
    bucket), plus ``kv_cache_grow``: the cache of the previous stage, alive while the sampler grows
    it (4 stages: ``P + 3 N_b / 4`` slots).
  * ``sampling_logits = 4 x R_s x V x 4``: the step's float32 logits and the top-k/top-p sorts.
  * evaluation samples the held-out prompts in calls of at most the rollout batch
    (``trainers.evaluation.eval_chunks``): greedy ``min(eval.num_examples, num_prompts x
    group_size)`` rows a call, and with ``eval.k > 1`` ``min(eval.num_examples, max(1,
    num_prompts x group_size // k)) x k``; the same items for the larger, split over ``D``
    (``eval_*``).

Prepare (forward only, each device's whole share of the rollout batch, ``R_s`` rows, at once;
when the old log-probs, the reference or the values are computed): one layer's forward peak
(``R_s x T x (b 2H + 8H + max(attention, MLP))``, attention ``b (3 n_q d + 4 n_kv d) + n_q T
(4 + b)``, MLP ``3 I b``) and the logits
(``2 x R_s x T x V x 4`` full, or ``2 x R_s x c x V x 4`` chunked with ``c = model.logits_chunk``).

Update (one minibatch, ``R_u = ceil(num_prompts * group_size / num_minibatches / D)`` rows):
  * ``gradients``: one gradient per trained parameter, sharded like it.
  * ``activations``: per layer and token, without remat, the saved tensors are
    ``layer_bytes = b (4H + 3 n_q d + 4 n_kv d + 3I) + 8H`` (layer input, norm outputs, q/k/v
    before and after rotary, attention output, residual, gate/up/product; float32 norm stats) plus
    attention's ``n_q T (4 + b)`` (float32 softmax and its cast; 0 with cuDNN flash attention).
    ``none``: ``L x R_u x T x layer``; ``full`` remat: ``L x R_u x T x H x b`` (each layer's
    input) + one layer's; ``dots_saveable``: the layer input and every matmul output
    (``b (2H + (n_q + 2 n_kv) d + n_q T + n_q d + 2I)``) per layer + one layer's;
    ``dots_with_no_batch_dims_saveable``: the same without attention's ``n_q T + n_q d``.
  * ``logits``: ``3 x R_u x T x V x 4`` with the full head (logits, their softmax and its gradient;
    measured ~2.9 buffers in experiments/benchmarks/memory.py), ``3 x R_u x c x V x 4`` chunked.
  * ``weights_workspace``: with ``F > 1`` or ``b < p`` the weights are gathered / cast for use:
    one full copy in ``b`` without ``scan_layers`` (XLA may hoist them all), two layers' with it.
  * ``batch``: the rollout arrays, ~12 float32 ``[R_s, T]`` arrays (inputs, shuffled minibatches).

SFT (if a stage): ``R = ceil(sft.batch_size / D)`` rows of the SFT sequence length, the same
activation and logits formulas, its own gradients (the policy's optimizer state is counted above).

``total = persistent + max(sampling, prepare, update, sft)``. Activation sizes are estimates
(XLA fuses and schedules as it likes); tests/test_memory.py compares the update with XLA's
compiled ``memory_analysis()`` on a tiny model. Without ``scan_layers`` XLA on CPU was measured
to undo most of a remat policy's saving (it schedules the recomputation early): the estimate
counts the policy as configured.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rl_jax import models, parallel
from rl_jax.models.config import ModelConfig
from rl_jax.rollout.decode import stage_ends
from rl_jax.rollout.padding import bucket_length
from rl_jax.settings import MemorySettings, RunSettings

GIB = 2**30
PERSISTENT = ("policy", "optimizer", "reference", "critic", "reward_model", "initial_weights")
PHASES = {
    "sampling": ("kv_cache", "kv_cache_grow", "sampling_logits", "weights_workspace"),
    "evaluation": ("eval_kv_cache", "eval_kv_cache_grow", "eval_sampling_logits",
                   "weights_workspace"),
    "prepare": ("prepare_activations", "prepare_logits", "weights_workspace"),
    "update": ("gradients", "activations", "logits", "weights_workspace", "batch"),
    "sft": ("sft_gradients", "sft_activations", "sft_logits", "weights_workspace"),
}
# The fields that reduce each item, named in the error.
REMEDIES = {
    "policy": "fsdp > 1 (a mesh with an fsdp axis)",
    "initial_weights": "a loaded model (model.path) is split like the policy: fsdp > 1",
    "optimizer": "fsdp > 1 (a mesh with an fsdp axis), rl.optim.grad_accum_steps = 1",
    "reference": "kl.coef = 0 (no reference model), fsdp > 1",
    "critic": "rl.estimator other than 'gae' (no critic), fsdp > 1",
    "kv_cache": "rl.num_prompts, rl.group_size, rollout.max_new_tokens, more devices",
    "eval_kv_cache": "rl.num_prompts x rl.group_size (rows per evaluation call), eval.k, "
                     "rollout.max_new_tokens",
    "activations": "rl.num_minibatches (more, smaller minibatches), model.remat='full', "
                   "model.scan_layers=True, model.attention_impl='cudnn' (GPU)",
    "logits": "model.logits_chunk (e.g. 128; 0 = the full [rows, T, vocab] logits), "
              "rl.num_minibatches",
    "prepare_logits": "model.logits_chunk, more devices",
    "prepare_activations": "rl.num_prompts or rl.group_size (prepare runs each device's whole "
                           "rollout share at once), model.attention_impl='cudnn' (GPU), "
                           "more devices",
    "weights_workspace": "model.scan_layers=True",
    "sft_activations": "sft.batch_size, model.remat='full', model.scan_layers=True",
    "sft_logits": "model.logits_chunk, sft.batch_size",
}


def _bytes(dtype: str) -> int:
    return jnp.dtype(dtype).itemsize


def param_shapes(model_config: ModelConfig) -> list[tuple[int, ...]]:
    """The shapes of the policy's parameters (``nnx.eval_shape``: nothing is allocated)."""
    state = nnx.eval_shape(lambda: nnx.state(models.CausalLM(model_config, rngs=nnx.Rngs(0))))
    return [tuple(x.shape) for x in jax.tree.leaves(state)]


def sharded_elements(shapes: list[tuple[int, ...]], fsdp: int) -> int:
    """Elements per device of arrays sharded by ``parallel.param_sharding``'s rule."""
    total = 0
    for shape in shapes:
        size = int(np.prod(shape, dtype=np.int64))
        split = parallel._param_spec(shape, fsdp, 2**14) != jax.sharding.PartitionSpec()
        total += size // fsdp if split else size
    return total


def layer_bytes(c: ModelConfig, time: int, compute_bytes: int, remat: str) -> tuple[int, int, int]:
    """``(saved, full, forward_peak)`` bytes per row and token of one layer: what it keeps for
    the backward under ``remat``, all it holds without remat, and the most a forward-only pass
    holds at once (the residual stream and its norm, plus the larger of the attention and MLP
    intermediates). See the module docstring."""
    b, h, i, d = compute_bytes, c.hidden_size, c.intermediate_size, c.head_dim
    nq, nkv = c.num_heads, c.num_kv_heads
    scores = 0 if c.attention_impl == "cudnn" else nq * time * (4 + b)
    attention = b * (3 * nq * d + 4 * nkv * d) + scores
    mlp = 3 * i * b
    full = b * 4 * h + 8 * h + attention + mlp
    dots_no_batch = b * (2 * h + (nq + 2 * nkv) * d + 2 * i)
    saved = {
        "none": full,
        "full": h * b,
        "dots_saveable": dots_no_batch + b * (nq * time + nq * d),
        "dots_with_no_batch_dims_saveable": dots_no_batch,
    }[remat]
    return saved, full, 2 * h * b + 8 * h + max(attention, mlp)


def activation_bytes(c: ModelConfig, rows: int, time: int, *, backward: bool) -> int:
    """Activations of the decoder on ``[rows, time]`` tokens: with ``backward`` what every layer
    saves (``L x saved``) plus one layer recomputed; without, one layer's forward peak."""
    saved, full, forward_peak = layer_bytes(c, time, _bytes(c.dtype), c.remat)
    if not backward:
        return rows * time * forward_peak
    extra = full if c.remat != "none" else 0
    return rows * time * (c.num_layers * saved + extra)


def logits_bytes(rows: int, time: int, response: int, vocab: int, chunk: int, copies: int) -> int:
    """``copies`` float32 logits buffers: ``[rows, time, vocab]`` (chunk 0) or
    ``[rows, min(chunk, response), vocab]``."""
    positions = time if chunk <= 0 else min(chunk, response)
    return copies * rows * positions * vocab * 4


def estimate(
    settings: RunSettings,
    model_config: ModelConfig,
    *,
    num_devices: int,
    fsdp: int = 1,
    prompt_len: int,
    sft_len: int | None = None,
) -> dict[str, int]:
    """Bytes per device of each item of the module docstring, the phase peaks and ``total``.

    Args:
      settings: the run's settings (stages, the RL stage, sampling, rewards, evaluation, model,
        SFT); the RL step's options (``settings.rl.algorithm``) say which models exist and
        whether ``prepare`` runs a forward pass, exactly as the step decides it.
      model_config: the policy's architecture, dtypes, remat and scan_layers.
      num_devices: devices of the mesh (``D``); fsdp: devices per parameter copy (``F``).
      prompt_len: the longest prompt in tokens (bucketed here as the sampler does).
      sft_len: the SFT sequence length (bucketed); None: no SFT term even if "sft" is a stage.

    Returns:
      ``{item: bytes}`` for every item, ``phase/<name>`` for each phase's sum,
      ``persistent`` and ``total`` (persistent + the largest phase).
    """
    c, rl, step = model_config, settings.rl, settings.rl.algorithm
    stages = settings.stages
    chunk = settings.model.logits_chunk
    p_bytes, b = _bytes(c.param_dtype), _bytes(c.dtype)
    shapes = param_shapes(c)
    n_params = sum(int(np.prod(s, dtype=np.int64)) for s in shapes)
    per_device = sharded_elements(shapes, fsdp) * p_bytes
    head = c.vocab_size * c.hidden_size if not c.tie_word_embeddings else 0
    backbone = (n_params - head) * p_bytes
    out: dict[str, int] = dict.fromkeys(
        [*PERSISTENT, *(k for ks in PHASES.values() for k in ks)], 0)
    is_rl = "rl" in stages
    out["policy"] = per_device
    accum = 1 if rl.optim.grad_accum_steps > 1 else 0
    out["optimizer"] = (2 + accum) * per_device
    out["initial_weights"] = per_device if settings.model.path else n_params * p_bytes
    if is_rl:
        if step.needs_reference or step.samples_from_reference:
            out["reference"] = per_device
        if step.has_critic:
            out["critic"] = 4 * backbone // fsdp
        if settings.rewards.model_weight != 0:
            out["reward_model"] = backbone // fsdp
        if rl.rollout.step_rewards == "model":  # the process reward model
            out["reward_model"] += backbone // fsdp
    rows = rl.rollout.num_prompts * rl.rollout.group_size
    prompt = bucket_length(prompt_len, 16)
    new = settings.sampling.max_new_tokens
    new_bucket = bucket_length(new, 16)
    time = prompt + new
    embed = c.vocab_size * c.hidden_size
    workspace = n_params * b  # every layer's weights gathered / cast at once
    if c.scan_layers:  # two layers at a time (one in use, one prefetched), and the embeddings
        layer = (n_params - embed - head - c.hidden_size) // c.num_layers
        workspace = (2 * layer + embed + head) * b
    if fsdp > 1 or b < p_bytes:
        out["weights_workspace"] = workspace
    def sampling(rows_per_device: int) -> tuple[int, int, int]:
        kv = c.num_layers * 2 * rows_per_device * c.num_kv_heads * c.head_dim * b
        ends = stage_ends(new_bucket, 4)
        grow = kv * (prompt + ends[-2]) if len(ends) > 1 else 0
        return kv * (prompt + new_bucket), grow, 4 * rows_per_device * c.vocab_size * 4

    if "rl" in stages or "sft" in stages:  # both evaluate by sampling
        evaluation = settings.evaluation
        per_call = evaluation.rows_per_call
        eval_rows = min(evaluation.num_examples, per_call)
        if evaluation.k > 1:
            prompts = min(evaluation.num_examples, max(1, per_call // evaluation.k))
            eval_rows = max(eval_rows, prompts * evaluation.k)
        eval_items = sampling(math.ceil(eval_rows / num_devices))
        out["eval_kv_cache"], out["eval_kv_cache_grow"], out["eval_sampling_logits"] = eval_items
    if is_rl:
        r_s = math.ceil(rows / num_devices)
        out["kv_cache"], out["kv_cache_grow"], out["sampling_logits"] = sampling(r_s)
        if not step.single_pass or step.needs_reference or step.has_critic:
            out["prepare_activations"] = activation_bytes(c, r_s, time, backward=False)
            out["prepare_logits"] = logits_bytes(r_s, time, new, c.vocab_size,
                                                 chunk, 2)
        r_u = math.ceil(rows / step.num_minibatches / num_devices)
        out["gradients"] = per_device + (backbone // fsdp if step.has_critic else 0)
        out["activations"] = activation_bytes(c, r_u, time, backward=True) * (
            2 if step.has_critic else 1)
        out["logits"] = logits_bytes(r_u, time, new, c.vocab_size, chunk, 3)
        out["batch"] = 12 * r_s * time * 4
    if "sft" in stages and sft_len:
        r = math.ceil(settings.sft.batch_size / num_devices)
        length = bucket_length(sft_len, 16)
        out["sft_gradients"] = per_device
        out["sft_activations"] = activation_bytes(c, r, length, backward=True)
        out["sft_logits"] = logits_bytes(r, length, length, c.vocab_size,
                                         chunk, 3)
    for phase, items in PHASES.items():  # the shared workspace counts only in a phase that runs
        own = sum(out[k] for k in items if k != "weights_workspace")
        out[f"phase/{phase}"] = own + out["weights_workspace"] if own else 0
    out["persistent"] = sum(out[k] for k in PERSISTENT)
    out["total"] = out["persistent"] + max(out[f"phase/{p}"] for p in PHASES)
    return out


def format_table(est: dict[str, int], limit: int | None = None) -> str:
    """The estimate as a table of GiB per device (items that are 0 left out)."""
    lines = ["memory per device (estimate, GiB; rl_jax.memory):"]
    for group, items in [("persistent", PERSISTENT), *PHASES.items()]:
        parts = [f"{k} {est[k] / GIB:.3g}" for k in items if est[k]]
        total = est["persistent" if group == "persistent" else f"phase/{group}"]
        if parts and total:
            lines.append(f"  {group:<10} {total / GIB:>9.3f}  ({', '.join(parts)})")
    peak = max(PHASES, key=lambda p: est[f"phase/{p}"])
    lines.append(f"  {'total':<10} {est['total'] / GIB:>9.3f}  (persistent + {peak})")
    if limit:
        lines.append(f"  {'device':<10} {limit / GIB:>9.3f}  (the limit it is checked against)")
    return "\n".join(lines)


def device_limit(settings: MemorySettings) -> int | None:
    """The bytes a device may use: ``memory.device_gb`` (GiB) when set, else the device's
    ``memory_stats()["bytes_limit"]``; None when neither is known (CPUs report none)."""
    if settings.device_gb > 0:
        return int(settings.device_gb * GIB)
    stats = jax.local_devices()[0].memory_stats() or {}  # addressable on every process
    return int(stats["bytes_limit"]) if "bytes_limit" in stats else None


def check_fits(est: dict[str, int], limit: int | None) -> None:
    """Raises ``MemoryError`` when ``est["total"] > limit``, naming every item, largest first, and
    the config fields that reduce it. ``limit`` None: nothing to check against."""
    if limit is None or est["total"] <= limit:
        return
    items = [k for k in REMEDIES if est.get(k, 0)]
    items.sort(key=lambda k: -est[k])
    advice = "\n".join(f"  {k} ({est[k] / GIB:.3g} GiB): {REMEDIES[k]}" for k in items)
    raise MemoryError(
        f"the run needs an estimated {est['total'] / GIB:.3g} GiB per device, more than the "
        f"{limit / GIB:.3g} GiB available (memory.device_gb or the device's bytes_limit). "
        f"The largest items and the config fields that reduce them:\n{advice}\n"
        "memory.check = False runs anyway (the estimate is approximate)."
    )
