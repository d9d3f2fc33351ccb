"""rl_jax.models.gguf: llama.cpp GGUF files into CausalLM and a tokenizer, without torch.

The tiny tests write their GGUF files here with `gguf.GGUFWriter`, the way llama.cpp's
convert_hf_to_gguf.py does for a llama model: HF tensors renamed, q/k rows permuted
(`llama_cpp_permute`, copied from that script), norms kept F32, matrices F32 or Q8_0.
The real-model test needs SmolLM2-135M-Instruct.Q4_1.gguf (`python tools/fetch_model.py`)
and is skipped without it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import gguf.quants
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_fixtures import VOCAB, padded_batch, tiny_tokenizer

import rl_jax.models as models

T = gguf.GGMLQuantizationType
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PATH = Path(
    os.environ.get("RL_JAX_SMOLLM2_GGUF", Path.home() / ".cache" / "rl_jax" / SMOLLM2_NAME)
)

_GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str) -> str:
    stem = hf_name.removesuffix(".weight")
    if stem in _GGUF_NAMES:
        return _GGUF_NAMES[stem] + ".weight"
    if not stem.startswith("model."):  # already a GGUF name
        return hf_name
    _, _, layer, rest = stem.split(".", 3)  # model.layers.N.<rest>
    return f"blk.{layer}.{_GGUF_NAMES[rest]}.weight"


def llama_cpp_permute(weights: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, verbatim."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def quantize_roundtrip(array: np.ndarray, qtype: T) -> np.ndarray:
    return gguf.quants.dequantize(gguf.quants.quantize(array, qtype), qtype).reshape(array.shape)


def tiny_llama(tied: bool, seed: int = 0) -> tuple[models.ModelConfig, dict[str, np.ndarray]]:
    """A random tiny llama as HF tensors, with random norm weights (not all ones)."""
    config = models.tiny_config(
        "llama", vocab_size=VOCAB, tie_word_embeddings=tied, initializer_range=0.1,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, rms_norm_eps=1e-5, rope_theta=1e5,
    )
    tensors = models.to_hf_tensors(models.CausalLM(config, rngs=nnx.Rngs(seed)))
    rng = np.random.default_rng(seed)
    for name in tensors:
        if name.endswith("norm.weight"):
            tensors[name] = tensors[name] + 0.1 * rng.standard_normal(tensors[name].shape)
    # GGUF has no initializer_range: the loaded config carries the default.
    config = dataclasses.replace(config, initializer_range=0.02)
    return config, {k: np.asarray(v, np.float32) for k, v in tensors.items()}


def write_gguf(
    path: Path,
    config: models.ModelConfig,
    tensors: dict[str, np.ndarray],
    qtype: T = T.F32,
    architecture: str = "llama",
    raw_types: dict[str, T] | None = None,
    add_bos: bool | None = None,
) -> Path:
    """Writes `tensors` (HF names and layout) as llama.cpp would, with tiny_tokenizer().

    Matrices are stored as `qtype`; a tensor named in `raw_types` is written as zero bytes of
    that type instead (for types gguf cannot quantise).
    """
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(config.num_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_heads)
    writer.add_head_count_kv(config.num_kv_heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_rope_dimension_count(config.head_dim)
    tokenizer = tiny_tokenizer()
    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    vocab = sorted(backend["model"]["vocab"].items(), key=lambda kv: kv[1])
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in vocab])
    writer.add_token_types([3 if i < 3 else 1 for i in range(len(vocab))])  # 3 = CONTROL
    writer.add_token_merges(
        [m if isinstance(m, str) else " ".join(m) for m in backend["model"]["merges"]]
    )
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_chat_template(CHAT_TEMPLATE)
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    for name, array in tensors.items():
        if name.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, config.num_heads, config.num_heads)
        elif name.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, config.num_heads, config.num_kv_heads)
        if name in (raw_types or {}):
            kind = raw_types[name]
            zeros = np.zeros(gguf.quants.quant_shape_to_byte_shape(array.shape, kind), np.uint8)
            writer.add_tensor(gguf_name(name), zeros, raw_dtype=kind)
        elif array.ndim == 2 and qtype != T.F32:
            writer.add_tensor(gguf_name(name), gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(gguf_name(name), np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, tokens, mask):
    return models.apply_lm(graphdef, state, tokens, models.positions_from_mask(mask), mask)[0]


def logits_of(model: models.CausalLM, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.asarray(_logits(*nnx.split(model), jnp.asarray(tokens), jnp.asarray(mask)))


@pytest.mark.parametrize("qtype,tied", [(T.F32, False), (T.Q8_0, True)])
def test_tiny_gguf_matches_source_model(tmp_path, qtype, tied):
    """Loaded weights equal the unpermuted source (exactly; after a Q8_0 round trip for Q8_0)."""
    config, tensors = tiny_llama(tied)
    path = write_gguf(tmp_path / "tiny.gguf", config, tensors, qtype)
    model, tokenizer = models.load_pretrained(path)
    assert model.config == config
    expected = {
        name: quantize_roundtrip(a, qtype) if a.ndim == 2 and qtype != T.F32 else a
        for name, a in tensors.items()
    }
    loaded = models.to_hf_tensors(model)
    assert loaded.keys() == expected.keys()
    for name in expected:
        np.testing.assert_array_equal(loaded[name], expected[name], err_msg=name)

    tokens, mask = padded_batch([9, 16, 4], 16, "left", seed=1)
    real = mask.astype(bool)
    ours = logits_of(model, tokens, mask)
    np.testing.assert_array_equal(  # the same weights give the same logits, bit for bit
        ours, logits_of(models.params_from_hf(config, expected), tokens, mask)
    )
    source = logits_of(models.params_from_hf(config, tensors), tokens, mask)
    scale = float(np.abs(source[real]).max())
    err = float(np.abs(ours - source)[real].max())
    # F32: identical; Q8_0 quantisation error alone: measured 0.09 at logit scale 3.0 (3%).
    assert err <= (0.0 if qtype == T.F32 else 0.05 * scale), (err, scale)
    # Negative control: with q/k left in llama.cpp's row order the logits are far off.
    permuted = dict(tensors)
    for name in tensors:
        if name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_heads if "q_proj" in name else config.num_kv_heads
            permuted[name] = llama_cpp_permute(tensors[name], config.num_heads, heads)
    wrong = logits_of(models.params_from_hf(config, permuted), tokens, mask)
    assert float(np.abs(wrong - source)[real].max()) > 0.2 * scale

    assert tokenizer.encode("the lazy fox 12") == tiny_tokenizer().encode("the lazy fox 12")
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 0)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|user|>hi<eos><|assistant|>"


def test_unpermute_qk_inverts_llama_cpp_permute():
    weight = np.arange(6 * 8 * 3, dtype=np.float32).reshape(6 * 8, 3)  # 6 heads of dim 8
    np.testing.assert_array_equal(models.unpermute_qk(llama_cpp_permute(weight, 6, 2), 2), weight)
    np.testing.assert_array_equal(models.unpermute_qk(llama_cpp_permute(weight, 6, 6), 6), weight)
    # Head 0 of the GGUF interleaves the two rotary halves: rows 0, 4, 1, 5, ... of the HF head.
    np.testing.assert_array_equal(llama_cpp_permute(weight, 6, 6)[:8, 0] // 3,
                                  [0, 4, 1, 5, 2, 6, 3, 7])


def test_directory_dispatch_and_config(tmp_path):
    config, tensors = tiny_llama(tied=False, seed=1)
    write_gguf(tmp_path / "model.gguf", config, tensors, add_bos=True)
    assert models.load_gguf_tokenizer(tmp_path).encode("the fox") == [
        1, *tiny_tokenizer().encode("the fox")]
    assert models.is_gguf(tmp_path) and models.is_gguf(tmp_path / "model.gguf")
    assert models.load_gguf_config(tmp_path, dtype="bfloat16") == dataclasses.replace(
        config, dtype="bfloat16"
    )
    bf16 = models.load_causal_lm(tmp_path, dtype="bfloat16")
    assert bf16.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32  # master weights
    bf16 = models.load_causal_lm(tmp_path, dtype="bfloat16", param_dtype="bfloat16")
    assert bf16.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    (tmp_path / "other.gguf").write_bytes((tmp_path / "model.gguf").read_bytes())
    with pytest.raises(ValueError, match=r"holds 2 \.gguf files.*model\.gguf.*other\.gguf"):
        models.load_pretrained(tmp_path)


def test_unsupported_architecture_type_and_tensor(tmp_path):
    config, tensors = tiny_llama(tied=True)
    path = write_gguf(tmp_path / "gpt2.gguf", config, tensors, architecture="gpt2")
    with pytest.raises(ValueError, match=r"gpt2\.gguf: GGUF architecture 'gpt2' is not supported"):
        models.load_pretrained(path)
    name = "model.layers.1.mlp.up_proj.weight"
    int8 = {**tensors, name: np.zeros(tensors[name].shape, np.int8)}
    path = write_gguf(tmp_path / "int8.gguf", config, int8)
    with pytest.raises(ValueError, match=r"int8\.gguf: tensor blk\.1\.ffn_up\.weight has type I8"):
        models.load_causal_lm(path)
    path = write_gguf(tmp_path / "q8_1.gguf", config, tensors, raw_types={name: T.Q8_1})
    with pytest.raises(ValueError, match=r"q8_1\.gguf: tensor blk\.1\.ffn_up\.weight has "
                       "quantisation type Q8_1, which gguf cannot dequantise"):
        models.load_causal_lm(path)
    path = write_gguf(tmp_path / "extra.gguf", config, {**tensors, "rope_freqs.weight":
                                                         np.ones(8, np.float32)})
    with pytest.raises(ValueError, match=r"extra\.gguf: rotary scaling"):
        models.load_causal_lm(path)
    path = write_gguf(tmp_path / "bias.gguf", config, {**tensors, "blk.0.attn_q.bias":
                                                        np.ones(64, np.float32)})
    with pytest.raises(ValueError, match=r"bias\.gguf: unexpected GGUF tensor blk\.0\.attn_q\."):
        models.load_causal_lm(path)


@pytest.mark.slow
def test_loads_without_torch(tmp_path):
    """The GGUF path never imports torch: load in a process where `import torch` fails."""
    config, tensors = tiny_llama(tied=True)
    path = write_gguf(tmp_path / "tiny.gguf", config, tensors, T.Q8_0)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # find_spec -> None, import -> ImportError
        "import rl_jax.models as m\n"
        f"model, tok = m.load_pretrained({str(path)!r})\n"
        "assert sys.modules['torch'] is None\n"
        "print(model.config.num_layers, tok.eos_token_id)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["2", "2"]


# ------------------------------------------------------------------ the real SmolLM2 GGUF


@pytest.mark.slow
@pytest.mark.skipif(
    not SMOLLM2_PATH.is_file(),
    reason=f"{SMOLLM2_PATH} absent: run `python tools/fetch_model.py` (or set "
    "RL_JAX_SMOLLM2_GGUF)",
)
def test_smollm2_gguf_matches_transformers():
    """Logits of rl_jax vs transformers' own GGUF loading (float32) on three chat prompts."""
    torch = pytest.importorskip("torch")
    import transformers

    model, tokenizer = models.load_pretrained(SMOLLM2_PATH)
    assert (model.config.num_layers, model.config.hidden_size, model.config.num_kv_heads) == (
        30, 576, 3)
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (1, 2, 2)
    reference_tokenizer = transformers.AutoTokenizer.from_pretrained(
        SMOLLM2_PATH.parent, gguf_file=SMOLLM2_PATH.name
    )
    questions = ["What is 12 * 7?", "Name a colour.", "Write one sentence about the sea."]
    prompts = []
    for q in questions:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True
        )
        assert text.endswith("<|im_start|>assistant\n") and q in text
        prompts.append(tokenizer.encode(text))
        assert prompts[-1] == reference_tokenizer.encode(text)
    width = max(map(len, prompts))
    tokens = np.full((len(prompts), width), 2, np.int32)
    mask = np.zeros((len(prompts), width), np.int32)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids):], mask[row, width - len(ids):] = ids, 1
    ours = logits_of(model, tokens, mask)

    reference = transformers.AutoModelForCausalLM.from_pretrained(
        SMOLLM2_PATH.parent, gguf_file=SMOLLM2_PATH.name, dtype=torch.float32
    ).eval()
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        expected = reference(
            input_ids=torch.from_numpy(tokens.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(positions.astype(np.int64)),
        ).logits.float().numpy()
    real = mask.astype(bool)
    scale = float(np.abs(expected[real]).max())
    err = float(np.abs(ours - expected)[real].max())
    # Measured here: 1.06e-4 at logit scale 39.3 (2.7e-6 of it; float32 summation order).
    assert err <= 5e-6 * scale, (err, scale)  # 2e-4 at scale 40
