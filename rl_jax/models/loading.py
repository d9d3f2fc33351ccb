"""Loading a pretrained model from a local path, whatever its format: a Hugging Face checkpoint
directory (``hf_io``) or a llama.cpp .gguf file (``gguf``). Nothing here reaches a model hub."""

from __future__ import annotations

import os
from pathlib import Path

import jax
import transformers

from rl_jax.models.gguf import is_gguf, load_gguf, load_gguf_causal_lm
from rl_jax.models.hf_io import TOKENIZER_FILES, load_config, params_from_hf, read_hf_tensors
from rl_jax.models.transformer import CausalLM


def load_causal_lm(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    mesh: jax.sharding.Mesh | None = None,
) -> CausalLM:
    """A CausalLM from a local HF checkpoint directory (config.json + safetensors), or from a
    llama.cpp .gguf file (or a directory holding one and no config.json).

    `dtype` is the compute dtype, `param_dtype` the storage dtype, `mesh` where the parameters
    go, shard by shard (see `load_pretrained`)."""
    if is_gguf(path):
        return load_gguf_causal_lm(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh)
    directory = Path(path)
    config = load_config(directory, dtype=dtype, param_dtype=param_dtype)
    tensors, files = read_hf_tensors(directory)
    return params_from_hf(config, tensors, files, source=str(directory), mesh=mesh)


def load_pretrained(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[CausalLM, transformers.PreTrainedTokenizerBase]:
    """(CausalLM, tokenizer) from a local HF checkpoint directory; never touches the hub.

    `path` may also be a llama.cpp .gguf file, or a directory holding exactly one and no
    config.json: the weights are dequantised and the tokenizer and chat template come from the
    GGUF metadata (see rl_jax.models.gguf; no torch involved).
    `dtype` is the compute dtype (activations; each layer casts its float32 weights to it at
    use); `param_dtype` the storage dtype of the parameters, float32 by default whatever `dtype`
    is: the master weights an optimizer updates. In bfloat16 storage an AdamW step of lr 1e-6
    rounds away on most weights (see tests/test_mixed_precision.py). bf16 checkpoints load (cast).
    With a `mesh`, every parameter is placed shard by shard over it (see `params_from_hf`).
    """
    if is_gguf(path):
        return load_gguf(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh)
    model = load_causal_lm(path, dtype=dtype, param_dtype=param_dtype, mesh=mesh)
    if not any((Path(path) / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(
            f"no tokenizer in {path} (none of {TOKENIZER_FILES}); "
            "load_causal_lm loads the model alone"
        )
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    return model, tokenizer
