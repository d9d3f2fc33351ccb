"""What every stage shares: tokenizer, task, policy model and sampler, built from a config."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import transformers
from flax import nnx
from jax.experimental import multihost_utils

from rl_jax import data, models
from rl_jax.rollout import Sampler


@dataclasses.dataclass
class Context:
    """The objects a run is made of (built once by ``build_context``)."""

    config: ml_collections.ConfigDict
    workdir: str
    tokenizer: transformers.PreTrainedTokenizerBase
    task: Any  # rl_jax.data.Task
    eval_examples: list
    policy: models.CausalLM  # initial weights (pretrained or fresh)
    graphdef: nnx.GraphDef
    sampler: Sampler

    def encode_prompts(self, examples: Sequence[data.Example]) -> list[list[int]]:
        """Prompt token ids, with the BOS token first when the tokenizer has one."""
        bos = [self.tokenizer.bos_token_id] if self.tokenizer.bos_token_id is not None else []
        return [bos + self.tokenizer.encode(ex.prompt, add_special_tokens=False) for ex in examples]

    def decode_responses(self, tokens: np.ndarray, mask: np.ndarray) -> list[str]:
        """Response texts: the masked tokens, EOS removed."""
        eos = set(self.eos_ids)
        rows = [
            [int(t) for t, m in zip(r, ms, strict=True) if m and int(t) not in eos]
            for r, ms in zip(np.asarray(tokens), np.asarray(mask), strict=True)
        ]
        return self.tokenizer.batch_decode(rows, skip_special_tokens=False)

    @property
    def eos_ids(self) -> tuple[int, ...]:
        return (int(self.tokenizer.eos_token_id),)


def build_tokenizer(config: ml_collections.ConfigDict, task: Any, workdir: str):
    """The tokenizer: from ``model.path``, or a byte-level BPE trained on the task's text.

    A trained tokenizer is saved in ``workdir/tokenizer`` and reloaded on resume, so a resumed run
    uses the same ids.
    """
    if config.model.path:
        try:
            return transformers.AutoTokenizer.from_pretrained(
                config.model.path, local_files_only=True
            )
        except Exception as error:  # HF raises OSError, ValueError, TypeError, ...
            raise ValueError(
                f"config.model.path = {config.model.path!r}: cannot load its tokenizer "
                f"({_one_line(error)}); expected a Hugging Face directory with tokenizer files"
            ) from error
    saved = os.path.join(workdir, "tokenizer")
    found = os.path.isdir(saved)
    if jax.process_count() > 1:  # every process has looked before process 0 may write it
        multihost_utils.sync_global_devices("tokenizer looked up")
    if found:
        return transformers.AutoTokenizer.from_pretrained(saved, local_files_only=True)
    tokenizer = None
    if jax.process_index() == 0:  # one process trains and writes it; the others read it
        texts = [ex.prompt + ex.target for ex in task.batch(0, 2000)]
        tokenizer = models.train_bpe_tokenizer(texts, config.model.vocab_size)
        tokenizer.save_pretrained(saved)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("tokenizer written")
    if tokenizer is None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(saved, local_files_only=True)
    return tokenizer


def build_policy(config: ml_collections.ConfigDict, tokenizer) -> models.CausalLM:
    """The policy: a Hugging Face checkpoint (``model.path``) or a fresh model from the config."""
    m = config.model
    if m.path:
        try:
            policy, _ = models.load_pretrained(m.path, dtype=m.dtype)
        except Exception as error:  # safetensors.SafetensorError, OSError, KeyError, ...
            raise ValueError(
                f"config.model.path = {m.path!r}: cannot load the model ({_one_line(error)}); "
                "expected a Hugging Face directory with config.json and complete *.safetensors"
            ) from error
        return policy
    # tiny_config sets the architectural flags of the model type (Qwen2 qkv bias, Qwen3 q/k norm).
    model_config = models.tiny_config(
        m.model_type,
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        intermediate_size=m.intermediate_size,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads,
        max_position_embeddings=m.max_len,
        initializer_range=m.init_std,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype=m.dtype,
        remat=m.remat,
        attention_impl=m.attention_impl,
    )
    return models.CausalLM(model_config, rngs=nnx.Rngs(config.seed))


def _one_line(error: BaseException) -> str:
    text = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {text}"


def build_task(config: ml_collections.ConfigDict):
    """The task of ``config.task``; a data file (``task.kwargs.path``) must hold examples."""
    path = config.task.kwargs.get("path", "")
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            if not any(line.strip() for line in f):
                raise ValueError(f"config.task.kwargs.path = {path!r}: the file is empty "
                                 f"(expected the examples of task {config.task.name!r})")
    try:
        return data.make_task(config.task.name, seed=config.seed, **config.task.kwargs.to_dict())
    except (ValueError, KeyError) as error:
        if not path:
            raise
        raise ValueError(f"config.task.kwargs.path = {path!r}: {_one_line(error)}") from error


def build_context(config: ml_collections.ConfigDict, workdir: str) -> Context:
    os.makedirs(workdir, exist_ok=True)
    task = build_task(config)
    tokenizer = build_tokenizer(config, task, workdir)
    policy = build_policy(config, tokenizer)
    graphdef, _ = nnx.split(policy)
    sampler = Sampler.from_model(
        policy, eos_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id
    )
    return Context(
        config=config,
        workdir=workdir,
        tokenizer=tokenizer,
        task=task,
        eval_examples=task.eval_set(config.eval.num_examples),
        policy=policy,
        graphdef=graphdef,
        sampler=sampler,
    )


STREAMS = {"sft": 1, "rl": 2, "eval/sft": 3, "rm": 4, "eval/rl": 5, "eval/rm": 6}


def stage_key(seed: int, stream: str, step: int) -> jax.Array:
    """The PRNG key of ``step`` of a named ``stream`` (one of ``STREAMS``: a stage's training
    draws, or ``"eval/<stage>"`` for its evaluation at ``step``).

    ``fold_in(fold_in(key(seed), stream id), step)``: a pure function, so a resumed run draws the
    same numbers.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown PRNG stream {stream!r}; known: {sorted(STREAMS)}")
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAMS[stream]), step)
