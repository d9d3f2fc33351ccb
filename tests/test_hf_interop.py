"""rl_jax.models against transformers: logits parity, checkpoint formats, save/load, errors."""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
import transformers
from flax import nnx
from hf_fixtures import (
    ARCHITECTURES,
    HF_CONFIGS,
    VOCAB,
    hf_logits,
    make_hf_model,
    padded_batch,
    tiny_tokenizer,
)

import rl_jax.models as models

PARITY_TOL = 1e-4


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, tuple[transformers.PreTrainedModel, Path]]:
    """name -> (float32 transformers model, directory it was saved to with a tokenizer)."""
    out = {}
    for name in ARCHITECTURES:
        hf = make_hf_model(name)
        directory = tmp_path_factory.mktemp(name)
        hf.save_pretrained(directory)
        tiny_tokenizer().save_pretrained(directory)
        out[name] = (hf, directory)
    return out


@pytest.fixture(scope="module")
def loaded(checkpoints) -> dict[str, models.CausalLM]:
    return {name: models.load_pretrained(d)[0] for name, (_, d) in checkpoints.items()}


@functools.partial(jax.jit, static_argnums=0)
def _logits(graphdef, state, tokens, mask):
    logits, cache = models.apply_lm(graphdef, state, tokens, models.positions_from_mask(mask), mask)
    assert cache is None
    return logits


def jax_logits(model: models.CausalLM, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Logits [B, T, V] float32 with positions from the mask."""
    return np.asarray(_logits(*nnx.split(model), jnp.asarray(tokens), jnp.asarray(mask)))


def max_err_at_real(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.abs(a - b)[mask.astype(bool)].max())


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_logits_match_transformers(checkpoints, loaded, name, side):
    hf, _ = checkpoints[name]
    tokens, mask = padded_batch([9, 16, 4, 1], 16, side, seed=1)
    ours = jax_logits(loaded[name], tokens, mask)
    assert ours.dtype == np.float32 and ours.shape == (4, 16, VOCAB)
    assert max_err_at_real(ours, hf_logits(hf, tokens, mask), mask) < PARITY_TOL


def test_loaded_config_flags(loaded):
    assert loaded["qwen2"].config.attention_bias and loaded["qwen2"].config.tie_word_embeddings
    assert not hasattr(loaded["qwen2"], "lm_head")
    assert loaded["qwen3"].config.qk_norm and loaded["qwen3"].config.head_dim == 32
    assert loaded["llama3_rope"].config.rope_scaling == models.RopeScaling(8.0, 1.0, 4.0, 32)
    assert loaded["llama"].config.rope_scaling is None


def test_rope_scaling_matters(checkpoints, loaded):
    """Dropping the llama3 scaling must break parity, so the parity test does test it."""
    hf, _ = checkpoints["llama3_rope"]
    model = loaded["llama3_rope"]
    config = dataclasses.replace(model.config, rope_scaling=None)
    graphdef, _ = nnx.split(nnx.eval_shape(lambda: models.CausalLM(config, rngs=nnx.Rngs(0))))
    unscaled = nnx.merge(graphdef, nnx.state(model))
    tokens, mask = padded_batch([16], 16, "left")
    assert max_err_at_real(jax_logits(unscaled, tokens, mask), hf_logits(hf, tokens, mask),
                           mask) > 1e-3


def test_greedy_decode_matches_generate(checkpoints, loaded):
    """A full-forward argmax loop reproduces transformers generate(do_sample=False)."""
    name, new_tokens = "qwen2", 32
    hf, _ = checkpoints[name]
    prompt, prompt_mask = padded_batch([5, 8], 8, "left", seed=3)
    width = prompt.shape[1] + new_tokens
    tokens = np.zeros((2, width), np.int32)
    mask = np.zeros((2, width), np.int32)
    tokens[:, :8], mask[:, :8] = prompt, prompt_mask

    @jax.jit
    def next_token(state, tokens, mask, step):
        logits, _ = models.apply_lm(graphdef, state, tokens, models.positions_from_mask(mask), mask)
        return jnp.argmax(logits[:, step - 1], axis=-1)

    graphdef, state = nnx.split(loaded[name])
    for step in range(8, width):
        tokens[:, step] = np.asarray(next_token(state, tokens, mask, step))
        mask[:, step] = 1

    hf.generation_config.eos_token_id = None
    with torch.no_grad():
        generated = hf.generate(
            input_ids=torch.from_numpy(prompt.astype(np.int64)),
            attention_mask=torch.from_numpy(prompt_mask.astype(np.int64)),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )
    np.testing.assert_array_equal(tokens[:, 8:], generated[:, 8:].numpy())


def test_bf16_checkpoint_loads(tmp_path):
    hf = make_hf_model("llama", seed=1)
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model, _ = models.load_pretrained(tmp_path)
    assert model.model.embed_tokens.embedding[...].dtype == jnp.float32
    # The same bf16 weights in a float32 torch model: only the arithmetic differs.
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, dtype=torch.float32, attn_implementation="eager"
    )
    tokens, mask = padded_batch([6, 12], 12, "left", seed=2)
    expected = hf_logits(reference, tokens, mask)
    assert max_err_at_real(jax_logits(model, tokens, mask), expected, mask) < PARITY_TOL
    # bf16 compute keeps float32 master weights unless param_dtype says otherwise.
    bf16_model, _ = models.load_pretrained(tmp_path, dtype="bfloat16")
    assert bf16_model.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.float32
    assert max_err_at_real(jax_logits(bf16_model, tokens, mask), expected, mask) < 0.1
    bf16_model, _ = models.load_pretrained(tmp_path, dtype="bfloat16", param_dtype="bfloat16")
    assert bf16_model.model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    assert max_err_at_real(jax_logits(bf16_model, tokens, mask), expected, mask) < 0.1


def test_sharded_checkpoint_loads(tmp_path):
    hf = make_hf_model("qwen3", seed=2)
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    tiny_tokenizer().save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    model, tokenizer = models.load_pretrained(tmp_path)
    assert isinstance(tokenizer, transformers.PreTrainedTokenizerBase)
    tokens, mask = padded_batch([3, 10], 10, "right", seed=4)
    err = max_err_at_real(jax_logits(model, tokens, mask), hf_logits(hf, tokens, mask), mask)
    assert err < PARITY_TOL


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_save_pretrained_round_trip(checkpoints, loaded, tmp_path, name):
    hf, _ = checkpoints[name]
    models.save_pretrained(loaded[name], tiny_tokenizer(), tmp_path / "out")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(reloaded) is type(hf)
    expected, actual = hf.state_dict(), reloaded.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "out", local_files_only=True)
    assert tokenizer.encode("the lazy fox") == tiny_tokenizer().encode("the lazy fox")


@pytest.mark.parametrize("model_type", models.SUPPORTED_MODEL_TYPES)
def test_scratch_model_exports_to_transformers(tmp_path, model_type):
    config = models.tiny_config(model_type, vocab_size=VOCAB, intermediate_size=96)
    model = models.CausalLM(config, rngs=nnx.Rngs(5))
    models.save_pretrained(model, None, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager")
    assert models.ModelConfig.from_hf(hf.config) == config
    tokens, mask = padded_batch([7, 3], 7, "left", seed=5)
    err = max_err_at_real(jax_logits(model, tokens, mask), hf_logits(hf, tokens, mask), mask)
    assert err < PARITY_TOL


def test_bf16_params_save_round_trip(tmp_path):
    config = models.tiny_config("llama", vocab_size=VOCAB, param_dtype="bfloat16")
    model = models.CausalLM(config, rngs=nnx.Rngs(6))
    models.save_pretrained(model, None, tmp_path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    assert hf.dtype == torch.bfloat16
    ours = models.to_hf_tensors(model)
    for name, tensor in hf.state_dict().items():
        np.testing.assert_array_equal(tensor.float().numpy(), ours[name].astype(np.float32))
    reloaded = models.load_causal_lm(tmp_path, param_dtype="bfloat16")
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(reloaded)),
                    strict=True):
        assert a.dtype == b.dtype == jnp.bfloat16 and (a == b).all()


def test_config_from_old_style_dict():
    """config.json files of older checkpoints keep rope_theta/rope_scaling at the top level."""
    old = {
        "model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 1,
        "rope_theta": 500000.0, "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
    }
    config = models.ModelConfig.from_hf({**old, "eos_token_id": [7, 9]}, dtype="bfloat16")
    assert config.eos_token_id == (7, 9) and config.to_hf().eos_token_id == [7, 9]
    assert config.rope_theta == 500000.0 and config.head_dim == 8 and config.num_kv_heads == 1
    assert config.rope_scaling == models.RopeScaling(32.0, 1.0, 4.0, 8192)
    assert config.dtype == "bfloat16" and config.tie_word_embeddings
    assert models.ModelConfig.from_hf(config.to_hf(), dtype="bfloat16") == config
    hash(config)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_config_round_trip(name):
    config = models.ModelConfig.from_hf(HF_CONFIGS[name]())
    assert models.ModelConfig.from_hf(config.to_hf()) == config
    assert models.ModelConfig.from_hf(config.to_hf().to_dict()) == config


# ----------------------------------------------------------------------------- errors


def test_unsupported_model_type(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="'gpt2'.*llama.*qwen2.*qwen3"):
        models.ModelConfig.from_hf({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="'mistral'"):
        models.tiny_config("mistral")
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoints["llama"][1], directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "model_type": "gemma"}))
    with pytest.raises(ValueError, match="'gemma'"):
        models.load_pretrained(directory)


def test_missing_paths(checkpoints, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        models.load_pretrained(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        models.load_pretrained("Qwen/Qwen2.5-0.5B")  # a hub name is never fetched
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoints["llama"][1], directory)
    (directory / "tokenizer.json").unlink()
    (directory / "tokenizer_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        models.load_pretrained(directory)
    assert isinstance(models.load_causal_lm(directory), models.CausalLM)
    (directory / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        models.load_pretrained(directory)
    (directory / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        models.load_pretrained(directory)


def _rewrite_tensors(directory: Path, edit) -> None:
    path = directory / "model.safetensors"
    tensors = safetensors.numpy.load_file(str(path))
    edit(tensors)
    safetensors.numpy.save_file(tensors, str(path), metadata={"format": "pt"})


def test_missing_wrong_and_unexpected_tensors(checkpoints, tmp_path):
    directory = tmp_path / "ckpt"
    shutil.copytree(checkpoints["qwen2"][1], directory)
    name = "model.layers.1.self_attn.k_proj.weight"
    _rewrite_tensors(directory, lambda t: t.update({name: np.zeros((32, 63), np.float32)}))
    shapes = (r"model\.safetensors: tensor model\.layers\.1\.self_attn\.k_proj\.weight "
              r"has shape \(32, 63\), expected \(32, 64\)")
    with pytest.raises(ValueError, match=shapes):
        models.load_pretrained(directory)
    _rewrite_tensors(directory, lambda t: t.pop(name))
    with pytest.raises(ValueError, match=r"missing tensor model\.layers\.1\.self_attn\.k_proj"):
        models.load_pretrained(directory)
    _rewrite_tensors(directory, lambda t: t.update({name: np.zeros((32, 64), np.float32),
                                                    "score.weight": np.zeros((1, 64))}))
    with pytest.raises(ValueError, match="unexpected tensors.*score.weight"):
        models.load_pretrained(directory)


def test_save_refuses_to_overwrite(loaded, tmp_path):
    model = loaded["qwen3"]
    models.save_pretrained(model, tiny_tokenizer(), tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(FileExistsError, match="overwrite=True"):
        models.save_pretrained(loaded["llama"], None, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    models.save_pretrained(loaded["llama"], None, tmp_path, overwrite=True)
    assert models.load_config(tmp_path) == loaded["llama"].config


def test_load_with_mesh_places_each_parameter_shard_by_shard(checkpoints, loaded):
    """``load_pretrained(mesh=...)``: every parameter arrives in ``parallel.param_sharding``'s
    FSDP layout (each device holds 1/fsdp of a split array, never the whole), with the values of
    the unsharded load (exact: the same host tensors are sliced), and gives the same logits."""
    from rl_jax import parallel

    mesh = parallel.make_mesh(fsdp=4)
    model, _ = models.load_pretrained(checkpoints["llama"][1], mesh=mesh)
    whole = nnx.state(loaded["llama"], nnx.Param)
    split = 0
    for got, want in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(whole),
                         strict=True):
        expected = parallel.param_sharding(want, mesh)
        assert got.sharding.is_equivalent_to(expected, got.ndim)
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
        shard_shape = got.addressable_shards[0].data.shape
        if not got.sharding.is_fully_replicated:
            split += 1
            assert np.prod(shard_shape) * 4 == got.size, (got.shape, shard_shape)
            assert {s.data.shape for s in got.addressable_shards} == {shard_shape}
    assert split >= 2  # the tiny model has two arrays of >= 2**14 elements (param_sharding)
    tokens, mask = padded_batch([3, 10], 10, "right", seed=5)
    np.testing.assert_allclose(jax_logits(model, tokens, mask),
                               jax_logits(loaded["llama"], tokens, mask), rtol=1e-5, atol=1e-5)
