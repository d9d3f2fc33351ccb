"""High-level sampler: token lists in, bucketed and jitted decode, padded arrays out.

Example (with an rl_jax model)::

    sampler = Sampler.from_model(model, eos_ids=(tok.eos_token_id,), pad_id=tok.pad_token_id)
    params = nnx.state(model)
    out = sampler.generate(params, prompt_token_lists, jax.random.key(0), n=8, max_new_tokens=64)
    out.response_tokens    # [num_prompts * 8, 64]; rows [i * 8, (i + 1) * 8) answer prompt i
    out = sampler.generate(new_params, ...)  # after a training step: same structure, no recompile

The sampler holds no weights: every call samples from the params it is given, so sharing one
sampler between training and evaluation cannot change what either samples from.

Compilation: one compile per distinct (num_prompts, prompt bucket, new-token bucket, n, greedy,
top_k, top-p on/off). Prompt lengths are rounded up to powers of two (at least
`min_prompt_bucket`) and max_new_tokens likewise (at least `min_new_tokens_bucket`); temperature,
the top_p value and max_new_tokens itself are traced. A run of 100 batches of 8 prompts whose
longest prompt varies between 4 and 60 tokens, at a fixed max_new_tokens, compiles 3 times
(prompt buckets 16, 32, 64), as measured by
tests/test_sampler.py::test_hundred_batches_compile_once_per_bucket.
`Sampler.num_compiles` counts the compilations of this sampler.

Devices: with a `mesh` (`Sampler(..., mesh=mesh)`, a `rl_jax.parallel.make_mesh` mesh, fixed at
construction; the trainers build theirs on the run's mesh), the prompts go in split over the
mesh's devices and the decode loop's rows (`num_prompts * n`) are constrained to stay split, so
each device decodes only its share; the parameters are read with the sharding they have (the
trainer's own arrays: no copy). When `num_prompts * n` does not divide by the device count,
copies of the last prompt are appended until it does, and their rows are dropped from the output
(the kept rows are the same as without the padding). The prefill of the prompts is split too
when `num_prompts` (after padding) divides by the device count, else it runs on every device (a
small part of the work: one forward pass per prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from rl_jax import parallel
from rl_jax.rollout.decode import ApplyFn, DecodeOutput, DecodeSettings, InitCacheFn, decode
from rl_jax.rollout.padding import (
    check_prompt_lengths,
    choose_buckets,
    left_pad,
    rows_from_padded,
)

Prompts = Sequence[Sequence[int] | np.ndarray] | np.ndarray | jax.Array


class SampleOutput(NamedTuple):
    """Result of `Sampler.generate`; B = num_prompts * n, P = prompt bucket, N = max_new_tokens.

    Attributes:
      prompt_tokens: [B, P] int32, left-padded with pad_id; row b holds prompt b // n.
      prompt_mask: [B, P] int32, 1 on real prompt tokens.
      response_tokens: [B, N] int32, pad_id after the sequence stopped.
      response_mask: [B, N] int32, 1 up to and including the EOS token, 0 after.
      response_logprobs: [B, N] float32, log_softmax(logits / temperature)[token]: the tempered,
        UNFILTERED distribution (also with top-k / top-p), i.e. what a trainer recomputes; 0 where
        the mask is 0.
      response_lengths: [B] int32, generated tokens per row, EOS included.
      num_generated_tokens: [] int32, sum of response_lengths.
      num_steps: [] int32, decode steps run (< N when every row stopped early).
    """

    prompt_tokens: jax.Array
    prompt_mask: jax.Array
    response_tokens: jax.Array
    response_mask: jax.Array
    response_logprobs: jax.Array
    response_lengths: jax.Array
    num_generated_tokens: jax.Array
    num_steps: jax.Array


class Sampler:
    """Batched KV-cache sampler around a pure `apply_fn`; see the module docstring.

    The weights are an argument of `generate` (any params of the same structure, shapes and
    dtypes reuse the compiled programs); the mesh is fixed at construction (`Sampler.mesh`).
    """

    def __init__(
        self,
        apply_fn: ApplyFn,
        init_cache_fn: InitCacheFn,
        *,
        max_len: int,
        eos_ids: Sequence[int] = (),
        pad_id: int = 0,
        min_prompt_bucket: int = 16,
        min_new_tokens_bucket: int = 16,
        cache_stages: int = 4,
        mesh: jax.sharding.Mesh | None = None,
    ):
        """Args:
        apply_fn: (params, tokens, positions, key_mask, cache, cache_index) -> (logits, cache),
          see rl_jax.rollout.decode.
        init_cache_fn: (batch, cache_len) -> cache.
        max_len: the model's context; prompt length + max_new_tokens must not exceed it.
        eos_ids: ids that end a sequence (empty: always generate max_new_tokens).
        pad_id: id used for prompt left padding and after a sequence ends.
        min_prompt_bucket, min_new_tokens_bucket: smallest bucket sizes.
        cache_stages: the decode loop runs in this many stages over growing caches (at most one
          per new token; see rl_jax.rollout.decode): fewer empty cache slots are read per step,
          at the cost of one compiled loop body per stage. 1: a single loop.
        mesh: None (run where the params are, on one device: all rows everywhere), or a
          `jax.sharding.Mesh` with the `rl_jax.parallel` batch axes: rows split over its devices.
        """
        if cache_stages < 1:
            raise ValueError(f"cache_stages must be >= 1, got {cache_stages}")
        self._mesh = mesh
        self.max_len = int(max_len)
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.pad_id = int(pad_id)
        self.min_prompt_bucket = int(min_prompt_bucket)
        self.min_new_tokens_bucket = int(min_new_tokens_bucket)
        self.cache_stages = int(cache_stages)
        self._apply_fn = apply_fn
        self._init_cache_fn = init_cache_fn
        self._num_compiles = 0
        self._decode = jax.jit(self._traced_decode, static_argnames=("settings", "mesh"))

    @classmethod
    def from_model(
        cls,
        model: Any,
        *,
        eos_ids: Sequence[int] = (),
        pad_id: int = 0,
        max_len: int | None = None,
        cache_dtype: Any = None,
        mesh: jax.sharding.Mesh | None = None,
        **kwargs: Any,
    ) -> Sampler:
        """A sampler for an `rl_jax.models.CausalLM`: its graphdef (the structure) is kept, not
        its weights; `generate` takes `nnx.state(model)` or params of the same structure.

        max_len defaults to the config's max_position_embeddings; cache_dtype to
        `init_decode_cache`'s (the model's compute dtype).
        """
        from flax import nnx

        from rl_jax.models import apply_lm, init_decode_cache

        graphdef, _ = nnx.split(model)
        config = model.config

        def apply_fn(params, tokens, positions, key_mask, cache, cache_index):
            return apply_lm(graphdef, params, tokens, positions, key_mask, cache, cache_index)

        def init_cache_fn(batch: int, cache_len: int):
            return init_decode_cache(config, batch, cache_len, dtype=cache_dtype)

        if max_len is None:
            max_len = config.max_position_embeddings
        return cls(
            apply_fn,
            init_cache_fn,
            max_len=max_len,
            eos_ids=eos_ids,
            pad_id=pad_id,
            mesh=mesh,
            **kwargs,
        )

    @property
    def mesh(self) -> jax.sharding.Mesh | None:
        """The mesh the rows are split over (None: one device), fixed at construction."""
        return self._mesh

    @property
    def num_compiles(self) -> int:
        """How many times the decode function was traced and compiled by this sampler."""
        return self._num_compiles

    def _traced_decode(
        self,
        params: Any,
        prompt_tokens: jax.Array,
        prompt_mask: jax.Array,
        key: jax.Array,
        temperature: jax.Array,
        top_p: jax.Array,
        max_new_tokens: jax.Array,
        settings: DecodeSettings,
        mesh: jax.sharding.Mesh | None = None,
    ) -> DecodeOutput:
        self._num_compiles += 1  # runs only while tracing, i.e. once per compilation
        shard_rows = None
        if mesh is not None:
            shard_rows = lambda x, axis: parallel.constrain_rows(x, mesh, axis)  # noqa: E731
        return decode(
            self._apply_fn,
            self._init_cache_fn,
            params,
            prompt_tokens,
            prompt_mask,
            key,
            temperature,
            top_p,
            max_new_tokens,
            settings,
            shard_rows,
        )

    def prepare_prompts(
        self, prompts: Prompts, max_new_tokens: int, prompt_mask: Any = None
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """Left-pads prompts to their bucket and checks their lengths.

        Args:
          prompts: a list of token-id sequences, or a [batch, time] array with `prompt_mask`
            (any padding side; the real tokens are where the mask is 1).
          max_new_tokens: tokens to generate.
          prompt_mask: [batch, time] mask for array prompts, else None.

        Returns:
          tokens, mask: [batch, P] int32 left-padded; N: the new-token bucket.
        """
        if prompt_mask is not None:
            rows = rows_from_padded(np.asarray(prompts), np.asarray(prompt_mask))
        elif isinstance(prompts, np.ndarray | jax.Array):
            raise ValueError("array prompts need prompt_mask (pass token lists for unpadded)")
        else:
            rows = [np.asarray(p, np.int32).reshape(-1) for p in prompts]
        if not rows:
            raise ValueError("no prompts")
        lengths = [len(r) for r in rows]
        check_prompt_lengths(lengths, max_new_tokens, self.max_len)
        prompt_bucket, new_bucket = choose_buckets(
            max(lengths),
            max_new_tokens,
            self.max_len,
            self.min_prompt_bucket,
            self.min_new_tokens_bucket,
        )
        tokens, mask = left_pad(rows, prompt_bucket, self.pad_id)
        return tokens, mask, new_bucket

    def generate(
        self,
        params: Any,
        prompts: Prompts,
        key: jax.Array,
        *,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        prompt_mask: Any = None,
    ) -> SampleOutput:
        """Samples `n` responses per prompt.

        Args:
          params: the weights to sample from, as apply_fn takes them (for `from_model`,
            `nnx.state(model)`); the same structure, shapes and dtypes reuse the compiled program.
          prompts: list of token-id sequences, or a [num_prompts, time] array with prompt_mask.
          key: PRNG key; the same key and inputs give the same output.
          max_new_tokens: at most this many tokens per response (fewer after an EOS id).
          n: samples per prompt; output rows [i * n, (i + 1) * n) belong to prompt i.
          temperature: > 0; logits are divided by it before sampling and for the logprobs.
          top_k: keep only the k most likely tokens (ties with the k-th are kept), or None.
          top_p: nucleus mass in (0, 1], or None (1.0 also means no filter).
          greedy: argmax decoding (temperature only affects the reported logprobs).
          prompt_mask: [num_prompts, time] for array prompts.

        Returns:
          SampleOutput; logprobs are under the tempered unfiltered distribution.
        """
        args, kwargs, (tokens, mask) = self._decode_call(
            params, prompts, key, max_new_tokens=max_new_tokens, n=n, temperature=temperature,
            top_k=top_k, top_p=top_p, greedy=greedy, prompt_mask=prompt_mask,
        )
        out = self._decode(*args, **kwargs)
        rows = len(tokens) * n  # without the rows of padding prompts (see the module docstring)
        return SampleOutput(
            prompt_tokens=jnp.asarray(np.repeat(tokens, n, axis=0)),
            prompt_mask=jnp.asarray(np.repeat(mask, n, axis=0)),
            response_tokens=out.response_tokens[:rows, :max_new_tokens],
            response_mask=out.response_mask[:rows, :max_new_tokens],
            response_logprobs=out.response_logprobs[:rows, :max_new_tokens],
            response_lengths=out.response_lengths[:rows],
            num_generated_tokens=jnp.sum(out.response_lengths[:rows]),
            num_steps=out.num_steps,
        )

    def lower(
        self, params: Any, prompts: Prompts, key: jax.Array, **options: Any
    ) -> jax.stages.Lowered:
        """The decode program `generate(params, prompts, key, **options)` runs, lowered (not
        run): to inspect what each device computes (`rl_jax.parallel.compiled_work`)."""
        args, kwargs, _ = self._decode_call(params, prompts, key, **options)
        return self._decode.lower(*args, **kwargs)

    def _decode_call(
        self,
        params: Any,
        prompts: Prompts,
        key: jax.Array,
        *,
        max_new_tokens: int,
        n: int = 1,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        greedy: bool = False,
        prompt_mask: Any = None,
    ) -> tuple[tuple, dict, tuple[np.ndarray, np.ndarray]]:
        """Checks `generate`'s options; the decode function's arguments, and the host prompts
        ``(tokens, mask)`` ``[num_prompts, P]``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 (use greedy=True), got {temperature}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] or None, got {top_p}")
        tokens, mask, new_bucket = self.prepare_prompts(prompts, max_new_tokens, prompt_mask)
        use_top_p = top_p is not None and top_p < 1.0
        settings = DecodeSettings(
            max_new_tokens=new_bucket,
            num_samples=int(n),
            greedy=bool(greedy),
            top_k=None if greedy or top_k is None else int(top_k),
            use_top_p=use_top_p and not greedy,
            eos_ids=self.eos_ids,
            pad_id=self.pad_id,
            cache_stages=self.cache_stages,
        )
        args = (
            params,
            *self._place_prompts(tokens, mask, n),
            key,
            jnp.float32(temperature),
            jnp.float32(top_p if use_top_p else 1.0),
            jnp.int32(max_new_tokens),
        )
        return args, {"settings": settings, "mesh": self._mesh}, (tokens, mask)

    def _place_prompts(
        self, tokens: np.ndarray, mask: np.ndarray, n: int
    ) -> tuple[jax.Array, jax.Array]:
        """The prompt arrays as the decode function takes them: as they are without a mesh;
        with one, padded (copies of the last prompt) until ``prompts * n`` divides by the device
        count, and split over the devices when the prompts themselves divide."""
        if self._mesh is None:
            return jnp.asarray(tokens), jnp.asarray(mask)
        devices = parallel.num_batch_devices(self._mesh)
        step = devices // np.gcd(n, devices)  # prompts * n divides iff prompts divides by this
        pad = -len(tokens) % step
        tokens, mask = (np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for x in (tokens, mask))
        if len(tokens) % devices:
            return tuple(jax.device_put(x, parallel.replicated(self._mesh)) for x in (tokens, mask))
        return parallel.place_rows((tokens, mask), self._mesh)[0]
