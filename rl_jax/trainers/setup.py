"""What every stage shares: tokenizer, task, policy model and sampler, built from the run's
settings (``rl_jax.settings``)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
import transformers
from flax import nnx
from jax.experimental import multihost_utils

from rl_jax import data, models
from rl_jax.rollout import Sampler
from rl_jax.settings import ModelSettings, RunSettings, TaskSettings
from rl_jax.trainers.checkpoint import one_line


@dataclasses.dataclass
class Context:
    """The objects a run is made of (built once by ``build_context``)."""

    workdir: str
    tokenizer: transformers.PreTrainedTokenizerBase
    task: Any  # rl_jax.data.Task
    eval_examples: list
    policy: models.CausalLM  # initial weights (pretrained or fresh)
    graphdef: nnx.GraphDef
    sampler: Sampler  # built on the run's mesh; every call passes the weights it samples from
    eos_ids: tuple[int, ...]  # every id that ends a response (``resolve_eos_ids``)
    chat_template: bool  # prompts as the user's turn of the tokenizer's chat template
    system_prompt: str  # with chat_template: a system message first ("" = none)

    def check_mesh(self, mesh: jax.sharding.Mesh | None) -> None:
        """ValueError unless the sampler was built on ``mesh`` (``build_context(settings,
        workdir, mesh)``): a stage samples on the mesh it trains on."""
        if self.sampler.mesh != mesh:
            raise ValueError(f"the context's sampler runs on mesh {self.sampler.mesh}, the stage "
                             f"on {mesh}; expected build_context(settings, workdir, mesh) with the "
                             "stage's mesh")

    def encode_prompts(self, examples: Sequence[data.Example]) -> list[list[int]]:
        """Prompt token ids: with ``chat_template``, each prompt as the user's turn of the
        tokenizer's chat template (``chat_prompt_ids``); else the BOS token (when the tokenizer
        has one) and the prompt's tokens."""
        if self.chat_template:
            return [chat_prompt_ids(self.tokenizer, ex.prompt, self.system_prompt)
                    for ex in examples]
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


def check_chat_template(tokenizer: transformers.PreTrainedTokenizerBase, source: str) -> None:
    """ValueError naming ``config.task.chat_template`` unless ``tokenizer`` has a chat template."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"config.task.chat_template = True: the tokenizer of {source} has no chat template; "
            "expected a tokenizer with one (an instruct model's), or task.chat_template=False"
        )


def chat_prompt_ids(
    tokenizer: transformers.PreTrainedTokenizerBase, prompt: str, system_prompt: str = ""
) -> list[int]:
    """Token ids of ``prompt`` as the user's turn of a chat, ending with the assistant's header.

    ``messages = [{"role": "system", "content": system_prompt}] (only if non-empty)
    + [{"role": "user", "content": prompt}]``, rendered by the tokenizer's chat template with
    ``add_generation_prompt=True`` and encoded with ``add_special_tokens=False``: the template
    writes its own BOS (if any), so none is added twice. The same ids as
    ``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)``.
    """
    check_chat_template(tokenizer, "this run")
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer.encode(text, add_special_tokens=False)


def build_tokenizer(model: ModelSettings, task: Any, workdir: str):
    """The tokenizer: from ``model.path`` (a Hugging Face directory or a GGUF file's metadata), or
    a byte-level BPE trained on the task's text.

    A trained tokenizer is saved in ``workdir/tokenizer`` and reloaded on resume, so a resumed run
    uses the same ids.
    """
    if model.path:
        try:
            if models.is_gguf(model.path):  # vocabulary and chat template in its metadata
                return models.load_gguf_tokenizer(model.path)
            return transformers.AutoTokenizer.from_pretrained(model.path, local_files_only=True)
        except Exception as error:  # HF raises OSError, ValueError, TypeError, ...
            raise ValueError(
                f"config.model.path = {model.path!r}: cannot load its tokenizer "
                f"({one_line(error)}); expected a Hugging Face directory with tokenizer files"
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
        tokenizer = models.train_bpe_tokenizer(texts, model.vocab_size)
        tokenizer.save_pretrained(saved)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("tokenizer written")
    if tokenizer is None:
        tokenizer = transformers.AutoTokenizer.from_pretrained(saved, local_files_only=True)
    return tokenizer


def build_policy(
    model: ModelSettings, tokenizer, mesh: jax.sharding.Mesh | None = None
) -> models.CausalLM:
    """The policy: a Hugging Face checkpoint (``model.path``) or a fresh model of ``model``,
    computing in ``model.dtype`` with parameters stored in ``model.param_dtype``; with
    ``model.lora.rank`` > 0, fresh LoRA adapters (B = 0) on ``model.lora.targets``.

    With a ``mesh``, loaded parameters are placed shard by shard in the training layout
    (``parallel.param_sharding``): no device receives the whole checkpoint. A fresh model is
    built on the default device (the fresh models are small)."""
    policy = _build_base_policy(model, tokenizer, mesh)
    lora = model.lora
    if lora.rank == 0:
        return policy
    return models.add_adapters(
        policy, rank=lora.rank, alpha=lora.alpha, targets=lora.targets,
        rngs=nnx.Rngs(model.seed + 7),
    )


def _build_base_policy(
    m: ModelSettings, tokenizer, mesh: jax.sharding.Mesh | None
) -> models.CausalLM:
    if m.path:
        try:
            policy, _ = models.load_pretrained(
                m.path, dtype=m.dtype, param_dtype=m.param_dtype, mesh=mesh
            )
        except Exception as error:  # safetensors.SafetensorError, OSError, KeyError, ...
            raise ValueError(
                f"config.model.path = {m.path!r}: cannot load the model ({one_line(error)}); "
                "expected a Hugging Face directory with config.json and complete *.safetensors"
            ) from error
        # The file holds one tensor per layer: the config's layout and remat policy go on here.
        return models.reconfigure(policy, remat=m.remat, scan_layers=m.scan_layers)
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
        param_dtype=m.param_dtype,
        remat=m.remat,
        scan_layers=m.scan_layers,
        attention_impl=m.attention_impl,
    )
    return models.CausalLM(model_config, rngs=nnx.Rngs(m.seed))


def build_task(task: TaskSettings):
    """The task of ``task``; a data file (``task.kwargs.path``) must hold examples."""
    path = task.kwargs.get("path", "")
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8", errors="replace") as f:
            if not any(line.strip() for line in f):
                raise ValueError(f"config.task.kwargs.path = {path!r}: the file is empty "
                                 f"(expected the examples of task {task.name!r})")
    try:
        return data.make_task(task.name, seed=task.seed, **task.kwargs)
    except data.EvalSizeError as error:
        raise ValueError(f"config.task.kwargs.eval_size = {error.eval_size}: expected < "
                         f"{error.num_examples} rows in {path}") from error
    except (ValueError, KeyError) as error:
        if not path:
            raise
        raise ValueError(f"config.task.kwargs.path = {path!r}: {one_line(error)}") from error


def build_context(
    settings: RunSettings, workdir: str, mesh: jax.sharding.Mesh | None = None
) -> Context:
    """Task, tokenizer (checked against ``task.chat_template``), policy and sampler, of the
    run's ``settings`` (its task, model, evaluation set and extra EOS ids).

    ``mesh``: where a loaded policy's parameters are placed, shard by shard (``build_policy``),
    and what the sampler splits its rows over (the stages run on it; None: one device).

    The sampler stops at every id of ``resolve_eos_ids``; a tokenizer without a pad token gets
    one (``resolve_pad_id``), said once here.
    """
    os.makedirs(workdir, exist_ok=True)
    num_eval = settings.evaluation.num_examples
    extra_eos_ids = settings.sampling.extra_eos_ids
    task = build_task(settings.task)
    try:
        eval_examples = task.eval_set(num_eval)
    except ValueError as error:
        raise ValueError(f"config.eval.num_examples = {num_eval}: "
                         f"{one_line(error)} (a file task holds out task.kwargs.eval_size rows "
                         "or the rows of task.kwargs.eval_path)") from error
    tokenizer = build_tokenizer(settings.model, task, workdir)
    if settings.task.chat_template:
        check_chat_template(tokenizer, f"config.model.path = {settings.model.path!r}")
    policy = build_policy(settings.model, tokenizer, mesh)
    eos_ids = resolve_eos_ids(
        tokenizer.eos_token_id,
        policy.config.eos_token_id,
        generation_config_eos_ids(settings.model.path),
        extra_eos_ids,
    )
    vocab = policy.config.vocab_size
    if any(not 0 <= i < vocab for i in extra_eos_ids):
        raise ValueError(f"config.rollout.extra_eos_ids = {extra_eos_ids}: "
                         f"expected ids of the model's vocabulary [0, {vocab})")
    if tokenizer.pad_token_id is None:
        pad_id = resolve_pad_id(tokenizer, eos_ids)
        print(f"tokenizer: no pad token; padding with the first EOS id {pad_id} "
              f"({tokenizer.convert_ids_to_tokens(pad_id)!r}; padding is always masked)")
    graphdef, _ = nnx.split(policy)
    sampler = Sampler.from_model(policy, eos_ids=eos_ids, pad_id=tokenizer.pad_token_id,
                                 mesh=mesh)
    return Context(
        workdir=workdir,
        tokenizer=tokenizer,
        task=task,
        eval_examples=eval_examples,
        policy=policy,
        graphdef=graphdef,
        sampler=sampler,
        eos_ids=eos_ids,
        chat_template=settings.task.chat_template,
        system_prompt=settings.task.system_prompt,
    )


def _ids(value: Any) -> tuple[int, ...]:
    """``None`` -> ``()``, an int -> ``(int,)``, a list -> its ints (HF writes eos both ways)."""
    if value is None:
        return ()
    if isinstance(value, int | np.integer):
        return (int(value),)
    return tuple(int(v) for v in value)


def generation_config_eos_ids(model_path: str) -> tuple[int, ...]:
    """``eos_token_id`` of ``<model_path>/generation_config.json`` (an int or a list; Qwen lists
    two), or ``()`` when there is no such file (a fresh model, a GGUF file)."""
    if not model_path or not os.path.isdir(model_path):
        return ()
    file = Path(model_path) / "generation_config.json"
    if not file.is_file():
        return ()
    try:
        return _ids(json.loads(file.read_text()).get("eos_token_id"))
    except (ValueError, TypeError) as error:
        raise ValueError(f"{file}: eos_token_id is not an id or a list of ids "
                         f"({one_line(error)})") from error


def resolve_eos_ids(tokenizer_eos: Any, model_eos: Any, generation_eos: Any,
                    extra: Sequence[int] = ()) -> tuple[int, ...]:
    """Every id that ends a response: the union, in this order without repeats, of the
    tokenizer's ``eos_token_id``, the model config's (``config.json`` or the GGUF metadata),
    ``generation_config.json``'s and ``rollout.extra_eos_ids``. Each argument is None, an id or a
    list of ids. The sampler stops at any of them, RL counts a response ending in one as finished,
    and ``decode_responses`` drops them from the text the rewards read.

    Raises:
      ValueError: when there is none, naming ``config.rollout.extra_eos_ids``.
    """
    ids = dict.fromkeys(_ids(tokenizer_eos) + _ids(model_eos) + _ids(generation_eos) + _ids(extra))
    if not ids:
        raise ValueError("config.rollout.extra_eos_ids = (): the tokenizer, the model config and "
                         "generation_config.json give no EOS id; expected at least one id there")
    return tuple(ids)


def resolve_pad_id(tokenizer: transformers.PreTrainedTokenizerBase,
                   eos_ids: Sequence[int]) -> int:
    """The pad id of a tokenizer that has none (Llama 3's): its first EOS id, ``eos_ids[0]``, as
    transformers' ``generate`` does; set as ``tokenizer.pad_token`` so every stage reads it.

    Padding positions are masked everywhere (attention, losses, rewards), so the value only needs
    to be a valid id. Returns the tokenizer's own pad id when it has one.
    """
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(int(eos_ids[0]))
    return int(tokenizer.pad_token_id)


STREAMS = {"sft": 1, "rl": 2, "eval/sft": 3, "rm": 4, "eval/rl": 5, "eval/rm": 6, "prm": 7}


def stage_key(seed: int, stream: str, step: int) -> jax.Array:
    """The PRNG key of ``step`` of a named ``stream`` (one of ``STREAMS``: a stage's training
    draws, or ``"eval/<stage>"`` for its evaluation at ``step``).

    ``fold_in(fold_in(key(seed), stream id), step)``: a pure function, so a resumed run draws the
    same numbers.
    """
    if stream not in STREAMS:
        raise ValueError(f"unknown PRNG stream {stream!r}; known: {sorted(STREAMS)}")
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), STREAMS[stream]), step)
