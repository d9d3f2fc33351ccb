"""Loading llama.cpp GGUF files into `CausalLM` and a transformers tokenizer, without torch.

A GGUF file holds the model config as metadata (`llama.block_count`, `llama.embedding_length`,
...), the tokenizer (vocabulary, merges, special ids, chat template) as metadata too, and the
weights as tensors named `token_embd`, `blk.N.attn_q`, ..., `output_norm`, `output`, each F32,
F16, BF16 or quantised in blocks (Q4_0, Q4_1, Q8_0, K-quants, ...). The `gguf` package reads the
file (`gguf.GGUFReader`, memory-mapped) and dequantises (`gguf.quants.dequantize`, numpy).

A 2-D GGUF tensor read as numpy is [out, in], the layout of a Hugging Face `weight`, so each tensor
is renamed to its HF name and goes through `params_from_hf`, which checks every shape.

llama.cpp's converter (convert_hf_to_gguf.py, `LlamaModel.permute`) reorders the rows of q_proj
and k_proj of llama models, from HF's rotate-half layout to GGML's interleaved rotary pairs: within
each head of `head_dim` rows, rows are viewed as [2, head_dim / 2] and transposed to
[head_dim / 2, 2]. `unpermute_qk` undoes it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import gguf
import gguf.quants
import jax
import numpy as np
import transformers

from rl_jax.models.config import ModelConfig
from rl_jax.models.hf_io import params_from_hf
from rl_jax.models.transformer import CausalLM

GGUF_SUFFIX = ".gguf"
SUPPORTED_GGUF_ARCHITECTURES = ("llama",)

_T = gguf.GGMLQuantizationType
# Integer and float64 tensors are not weights of a llama model; everything else must be a type
# gguf.quants can dequantise (checked when read, so a newer gguf adds types without a change here).
_NOT_WEIGHT_TYPES = (_T.I8, _T.I16, _T.I32, _T.I64, _T.F64)

# GGUF tensor name (without the `.weight` suffix) -> HF name; `{i}` is the block index.
_GLOBAL_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_BLOCK_PATTERN = re.compile(r"^blk\.(\d+)\.(\w+)\.weight$")


def is_gguf(path: str | os.PathLike) -> bool:
    """True for a `.gguf` file, or a directory holding a `.gguf` file and no config.json."""
    path = Path(path)
    if path.is_file():
        return path.suffix == GGUF_SUFFIX
    return path.is_dir() and not (path / "config.json").is_file() and any(
        path.glob(f"*{GGUF_SUFFIX}")
    )


def find_gguf_file(path: str | os.PathLike) -> Path:
    """`path` itself if it is a .gguf file, else the one .gguf file in directory `path`."""
    path = Path(path)
    if path.is_file():
        if path.suffix != GGUF_SUFFIX:
            raise ValueError(f"{path} is not a {GGUF_SUFFIX} file")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is neither a {GGUF_SUFFIX} file nor a directory")
    found = sorted(path.glob(f"*{GGUF_SUFFIX}"))
    if len(found) != 1:
        raise ValueError(
            f"{path} holds {len(found)} {GGUF_SUFFIX} files {[f.name for f in found]}; "
            "expected exactly one (pass the file itself)"
        )
    return found[0]


def unpermute_qk(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undoes llama.cpp's rotary row permutation of a q_proj/k_proj weight [heads*head_dim, in].

    For each head, row 2*j + s of the GGUF tensor is row s*head_dim/2 + j of the HF tensor
    (j < head_dim/2, s in {0, 1}). `num_heads` is the number of heads the rows hold (the kv heads
    for k_proj). Also works on a 1-D bias.
    """
    rows = weight.shape[0]
    half = rows // num_heads // 2
    if num_heads * 2 * half != rows:
        raise ValueError(f"{rows} rows do not split into {num_heads} heads of even size")
    return (
        weight.reshape(num_heads, half, 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def _metadata(reader: gguf.GGUFReader, key: str, file: Path, default: Any = ...) -> Any:
    field = reader.fields.get(key)
    if field is None:
        if default is ...:
            raise ValueError(f"{file}: GGUF metadata has no {key}")
        return default
    return field.contents()


def _float32_value(value: float) -> float:
    """The shortest decimal that rounds to this float32 (GGUF stores 1e-5 as 9.9999997e-06)."""
    return float(str(np.float32(value)))


def _architecture(reader: gguf.GGUFReader, file: Path) -> str:
    arch = _metadata(reader, "general.architecture", file)
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(
            f"{file}: GGUF architecture {arch!r} is not supported; "
            f"supported: {SUPPORTED_GGUF_ARCHITECTURES}"
        )
    return arch


def _config_from_reader(
    reader: gguf.GGUFReader, file: Path, **overrides: Any
) -> ModelConfig:
    arch = _architecture(reader, file)

    def meta(key: str, default: Any = ...) -> Any:
        return _metadata(reader, f"{arch}.{key}", file, default)

    names = {t.name for t in reader.tensors}
    scaling = meta("rope.scaling.type", "none")
    if scaling not in ("none", "linear") or "rope_freqs.weight" in names:
        raise ValueError(f"{file}: rotary scaling ({scaling!r}, rope_freqs) is not supported")
    if scaling == "linear" and meta("rope.scaling.factor", 1.0) != 1.0:
        raise ValueError(f"{file}: linear rotary scaling is not supported")
    hidden = int(meta("embedding_length"))
    num_heads = int(meta("attention.head_count"))
    head_dim = int(meta("attention.key_length", hidden // num_heads))
    if int(meta("rope.dimension_count", head_dim)) != head_dim:
        raise ValueError(f"{file}: partial rotary embeddings are not supported")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab_size = meta("vocab_size", len(tokens.data) if tokens is not None else None)
    if vocab_size is None:
        raise ValueError(f"{file}: GGUF metadata has neither {arch}.vocab_size nor tokens")
    kwargs = dict(
        model_type="llama",
        vocab_size=int(vocab_size),
        hidden_size=hidden,
        intermediate_size=int(meta("feed_forward_length")),
        num_layers=int(meta("block_count")),
        num_heads=num_heads,
        num_kv_heads=int(meta("attention.head_count_kv", num_heads)),
        head_dim=head_dim,
        rope_theta=_float32_value(meta("rope.freq_base", 10000.0)),
        rms_norm_eps=_float32_value(meta("attention.layer_norm_rms_epsilon")),
        # llama.cpp writes no `output` tensor when the head shares the embedding.
        tie_word_embeddings="output.weight" not in names,
        max_position_embeddings=int(meta("context_length")),
        bos_token_id=_metadata(reader, "tokenizer.ggml.bos_token_id", file, None),
        eos_token_id=_metadata(reader, "tokenizer.ggml.eos_token_id", file, None),
        pad_token_id=_metadata(reader, "tokenizer.ggml.padding_token_id", file, None),
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def load_gguf_config(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    """ModelConfig from the `llama.*` and `tokenizer.ggml.*` metadata of a GGUF file.

    `overrides` replace fields (e.g. dtype="bfloat16").
    """
    file = find_gguf_file(path)
    return _config_from_reader(gguf.GGUFReader(file), file, **overrides)


def _hf_name(gguf_name: str, file: Path) -> str:
    if gguf_name.endswith(".weight") and gguf_name[: -len(".weight")] in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name[: -len(".weight")]] + ".weight"
    match = _BLOCK_PATTERN.match(gguf_name)
    if match and match.group(2) in _BLOCK_NAMES:
        return f"model.layers.{match.group(1)}.{_BLOCK_NAMES[match.group(2)]}.weight"
    raise ValueError(f"{file}: unexpected GGUF tensor {gguf_name}")


def _dequantize(tensor: Any, file: Path) -> np.ndarray:
    """The tensor as a float32 numpy array in numpy order ([out, in] for a matrix)."""
    kind = tensor.tensor_type
    if kind in _NOT_WEIGHT_TYPES:
        raise ValueError(
            f"{file}: tensor {tensor.name} has type {kind.name}, which is not a weight type "
            "(float or quantised)"
        )
    try:
        array = gguf.quants.dequantize(np.asarray(tensor.data), kind)
    except NotImplementedError as e:
        raise ValueError(
            f"{file}: tensor {tensor.name} has quantisation type {kind.name}, which gguf "
            f"cannot dequantise"
        ) from e
    shape = tuple(int(n) for n in reversed(tensor.shape))
    return np.asarray(array, np.float32).reshape(shape)


def _read_tensors(
    reader: gguf.GGUFReader, file: Path, config: ModelConfig
) -> dict[str, np.ndarray]:
    tensors = {}
    for tensor in reader.tensors:
        name = _hf_name(tensor.name, file)
        array = _dequantize(tensor, file)
        if name.endswith("q_proj.weight"):
            array = unpermute_qk(array, config.num_heads)
        elif name.endswith("k_proj.weight"):
            array = unpermute_qk(array, config.num_kv_heads)
        tensors[name] = array
    return tensors


def read_gguf_tensors(
    path: str | os.PathLike, config: ModelConfig | None = None
) -> dict[str, np.ndarray]:
    """All tensors of a llama GGUF file, dequantised to float32, in HF names and layout.

    q_proj/k_proj rows are un-permuted (see `unpermute_qk`), so the result is what the HF
    checkpoint the file was converted from holds (up to quantisation).
    """
    file = find_gguf_file(path)
    reader = gguf.GGUFReader(file)
    return _read_tensors(reader, file, config or _config_from_reader(reader, file))


def load_gguf_causal_lm(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    mesh: jax.sharding.Mesh | None = None,
) -> CausalLM:
    """A CausalLM from a llama GGUF file (or a directory holding one); no torch involved.

    Quantised weights are dequantised and cast to `param_dtype` (float32 master weights by
    default); `dtype` is the compute dtype; with a `mesh` each is placed shard by shard
    (`hf_io.params_from_hf`).
    """
    file = find_gguf_file(path)
    return _model_from_reader(gguf.GGUFReader(file), file, dtype, param_dtype, mesh)


def _model_from_reader(
    reader: gguf.GGUFReader, file: Path, dtype: str, param_dtype: str, mesh=None
) -> CausalLM:
    config = _config_from_reader(reader, file, dtype=dtype, param_dtype=param_dtype)
    return params_from_hf(config, _read_tensors(reader, file, config), source=str(file), mesh=mesh)


def load_gguf(
    path: str | os.PathLike,
    *,
    dtype: str = "float32",
    param_dtype: str = "float32",
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[CausalLM, transformers.PreTrainedTokenizerFast]:
    """(CausalLM, tokenizer) from a GGUF file, parsing its metadata once (what load_pretrained
    calls for a .gguf path); see `load_gguf_causal_lm` and `load_gguf_tokenizer`."""
    file = find_gguf_file(path)
    reader = gguf.GGUFReader(file)  # parsing the metadata of a 49k-token vocabulary takes seconds
    model = _model_from_reader(reader, file, dtype, param_dtype, mesh)
    return model, _tokenizer_from_reader(reader, file)


def load_gguf_tokenizer(path: str | os.PathLike) -> transformers.PreTrainedTokenizerFast:
    """The tokenizer described by a GGUF file's metadata, with its special tokens and chat template.

    Built with transformers' own GGUF tokenizer converter (the one `AutoTokenizer` uses with
    `gguf_file=`), fed from `gguf.GGUFReader`: transformers' GGUF reader imports torch, this does
    not. bos/eos/pad/unk tokens come from `tokenizer.ggml.*_token_id`, `chat_template` from
    `tokenizer.chat_template`, whether encode adds BOS/EOS from `tokenizer.ggml.add_bos_token` /
    `add_eos_token`.
    """
    file = find_gguf_file(path)
    return _tokenizer_from_reader(gguf.GGUFReader(file), file)


def _tokenizer_from_reader(
    reader: gguf.GGUFReader, file: Path
) -> transformers.PreTrainedTokenizerFast:
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    architecture = _metadata(reader, "general.architecture", file)
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise ValueError(f"{file}: GGUF metadata has no tokenizer (tokenizer.ggml.tokens)")
    tokenizer_dict = {
        name: reader.fields[f"tokenizer.{key}"].contents()
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{key}" in reader.fields
    }
    backend, _ = convert_gguf_tokenizer(architecture, tokenizer_dict)
    tokens = tokenizer_dict["tokens"]
    special = {}
    for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("pad_token", "pad_token_id"), ("unk_token", "unk_token_id")):
        if key in tokenizer_dict:
            special[name] = tokens[tokenizer_dict[key]]
    # As transformers' GGUF loading: a sentencepiece ("llama") vocabulary without the flag adds
    # BOS, which is what llama.cpp does.
    add_bos = _metadata(reader, "tokenizer.ggml.add_bos_token", file,
                        tokenizer_dict.get("tokenizer_type") == "llama")
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        chat_template=_metadata(reader, "tokenizer.chat_template", file, None),
        model_max_length=int(_metadata(reader, f"{architecture}.context_length", file, 2**30)),
        add_bos_token=bool(add_bos),
        add_eos_token=bool(_metadata(reader, "tokenizer.ggml.add_eos_token", file, False)),
        **special,
    )
