"""LoRA adapters: exact base logits at B = 0, merging (also through transformers), only the
adapters train, the frozen base is the reference, checkpoints resume, bad configs fail early."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
import transformers
from flax import nnx
from hf_fixtures import hf_logits, make_hf_model, padded_batch, tiny_tokenizer

import rl_jax
from rl_jax import models, parallel
from rl_jax.config import ConfigError, check_config, default_config
from rl_jax.train_state import init_state, make_train_step
from tests.testing_utils import tiny_config

RANK, ALPHA = 4, 8.0
MERGE_TOL = 1e-5  # merged (W + s A B) vs adapted (x W + s x A B) logits, float32, logits O(1)
HF_TOL = 1e-4  # rl_jax vs transformers on the same weights (tests/test_hf_interop's PARITY_TOL)


@functools.partial(jax.jit, static_argnums=0)
def _split_logits(graphdef, state, tokens, mask):
    return models.apply_lm(graphdef, state, tokens, models.positions_from_mask(mask), mask)[0]


def _logits(model: models.CausalLM, tokens, mask) -> np.ndarray:
    return np.asarray(_split_logits(*nnx.split(model), jnp.asarray(tokens), jnp.asarray(mask)))


def _perturbed(model: models.CausalLM, seed: int = 0) -> models.CausalLM:
    """`model` with every adapter leaf (A and B) redrawn from N(0, 0.1^2)."""
    graphdef, state = nnx.split(model)
    keys = iter(jax.random.split(jax.random.key(seed), 1000))

    def redraw(variable):
        if not isinstance(variable, nnx.LoRAParam):
            return variable
        return variable.replace(0.1 * jax.random.normal(next(keys), variable.shape))

    state = jax.tree.map(redraw, state, is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(graphdef, state)


def _numpy_merged_kernel(layer) -> np.ndarray:
    """W + (alpha / rank) A B by NumPy (float64), an independent reference for merging."""
    w = np.asarray(layer.kernel[...], np.float64)
    a, b = np.asarray(layer.lora.lora_a[...], np.float64), np.asarray(layer.lora.lora_b[...])
    return w + (ALPHA / RANK) * a @ b.astype(np.float64)


@pytest.mark.slow
def test_adapters_exact_at_zero_then_merge_and_load_in_transformers(tmp_path):
    """A Qwen2 checkpoint (q/k/v biases, tied embeddings) with adapters on every projection."""
    hf = make_hf_model("qwen2", seed=3)
    hf.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    base, tokenizer = models.load_pretrained(tmp_path / "base")
    tokens, mask = padded_batch([5, 9], 9, "left", seed=1)
    adapted = models.add_adapters(
        base, rank=RANK, alpha=ALPHA, targets=models.LORA_TARGETS, rngs=nnx.Rngs(1)
    )
    assert models.has_adapters(adapted) and not models.has_adapters(base)
    # B = 0: exactly the base model, in the fused q/k/v and gate/up matmuls too.
    np.testing.assert_array_equal(_logits(adapted, tokens, mask), _logits(base, tokens, mask))

    adapted = _perturbed(adapted)
    expected = _logits(adapted, tokens, mask)
    assert np.abs(expected - _logits(base, tokens, mask))[mask > 0].max() > 0.1  # it moved
    merged = models.merge_adapters(adapted)
    assert not models.has_adapters(merged)
    for name in models.LORA_TARGETS:
        group = "self_attn" if name in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
        layer = getattr(getattr(adapted.model.layers[1], group), name)
        merged_layer = getattr(getattr(merged.model.layers[1], group), name)
        np.testing.assert_allclose(
            merged_layer.kernel[...], _numpy_merged_kernel(layer), rtol=1e-6, atol=1e-6
        )
    err = np.abs(_logits(merged, tokens, mask) - expected)[mask > 0].max()
    assert err < MERGE_TOL

    with pytest.raises(ValueError, match="LoRA adapters.*merge_adapters"):
        models.save_pretrained(adapted, tokenizer, tmp_path / "refused")
    models.save_merged(adapted, tokenizer, tmp_path / "merged")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "merged", dtype=torch.float32, attn_implementation="eager"
    )
    assert np.abs(hf_logits(reloaded, tokens, mask) - expected)[mask > 0].max() < HF_TOL
    assert transformers.AutoTokenizer.from_pretrained(tmp_path / "merged").vocab_size == (
        tiny_tokenizer().vocab_size
    )


def _lora_policy(targets=("q_proj", "v_proj", "down_proj")) -> models.CausalLM:
    config = models.tiny_config("llama", vocab_size=32, hidden_size=16, intermediate_size=32,
                                num_layers=1, num_heads=2, num_kv_heads=1, initializer_range=0.1)
    base = models.CausalLM(config, rngs=nnx.Rngs(0))
    return models.add_adapters(base, rank=RANK, alpha=ALPHA, targets=targets, rngs=nnx.Rngs(1))


@pytest.mark.slow
def test_only_adapters_are_trained_and_in_the_optimizer_state():
    policy = _lora_policy()
    graphdef, params = nnx.split(policy)
    mesh = parallel.make_mesh(devices=jax.devices()[:2])
    tx = optax.adamw(1e-2)
    state, sharding = init_state({"policy": params}, tx, mesh)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    opt_leaves = jax.tree.leaves(state.opt_state, is_leaf=is_var)
    adapters = jax.tree.leaves(nnx.state(policy, nnx.LoRAParam))
    assert len(adapters) == 6  # A and B of 3 projections
    moments = [v for v in opt_leaves if isinstance(v, nnx.Variable)]
    assert all(isinstance(v, nnx.LoRAParam) for v in moments)
    assert len(moments) == 2 * len(adapters)  # AdamW's mu and nu of each adapter leaf, no more

    tokens = jnp.asarray(np.random.default_rng(0).integers(0, 32, (4, 8)), jnp.int32)

    def loss_fn(params, tokens):
        inputs, mask = tokens[:, :-1], jnp.ones_like(tokens[:, :-1])
        logits, _ = models.apply_lm(
            graphdef, params["policy"], inputs, models.positions_from_mask(mask), mask
        )
        return -rl_jax.token_logprobs(logits, tokens[:, 1:]).mean(), {}

    step = parallel.data_parallel_step(make_train_step(loss_fn, tx), mesh, sharding)
    before = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
    state, metrics = step(state, tokens)
    state, metrics = step(state, tokens)
    after = nnx.to_pure_dict(state.params["policy"])
    flat_before = dict(jax.tree_util.tree_flatten_with_path(before)[0])
    for path, value in jax.tree_util.tree_flatten_with_path(after)[0]:
        name = jax.tree_util.keystr(path)
        if "lora" in name:  # A moves (B != 0 after the first step), B moves
            assert np.abs(np.asarray(value) - flat_before[path]).max() > 1e-4, name
        else:
            np.testing.assert_array_equal(np.asarray(value), flat_before[path], err_msg=name)
    assert float(metrics["grad_norm"]) > 0

    # The reference: adapters off is the untrained base (the same arrays), whatever A and B are.
    off = nnx.merge(graphdef, models.adapters_off(state.params["policy"]))
    mask = np.ones((4, 8), np.int32)
    np.testing.assert_array_equal(
        _logits(off, tokens, mask), _logits(nnx.merge(graphdef, params), tokens, mask)
    )


@pytest.mark.slow
def test_fold_adapters_keeps_the_function_and_zeroes_b():
    graphdef, state = nnx.split(_perturbed(_lora_policy()))
    folded = models.fold_adapters(graphdef, state)
    tokens = np.random.default_rng(1).integers(0, 32, (2, 6)).astype(np.int32)
    mask = np.ones_like(tokens)
    np.testing.assert_allclose(
        _logits(nnx.merge(graphdef, folded), tokens, mask),
        _logits(nnx.merge(graphdef, state), tokens, mask), atol=MERGE_TOL,
    )
    off = nnx.merge(graphdef, models.adapters_off(folded))  # the new base is the adapted model
    np.testing.assert_allclose(
        _logits(off, tokens, mask), _logits(nnx.merge(graphdef, state), tokens, mask),
        atol=MERGE_TOL,
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("rank", -1, r"config.model.lora.rank = -1: expected an integer >= 0"),
        ("targets", ("q_proj", "qkv_proj"), r"config.model.lora.targets = .*qkv_proj.*expected"),
        ("targets", (), r"config.model.lora.targets = \(\): expected a non-empty tuple"),
        ("alpha", 0.0, r"config.model.lora.alpha = 0.0: expected a number > 0"),
    ],
)
def test_bad_lora_config_fails_at_start(field, value, message):
    config = default_config()
    config.model.lora.rank = 8
    setattr(config.model.lora, field, value)
    with pytest.raises(ConfigError, match=message):
        check_config(config)


def test_lora_with_scanned_layers_fails_at_start():
    config = default_config()
    config.model.lora.rank = 8
    config.model.scan_layers = True
    with pytest.raises(ConfigError, match=r"config.model.scan_layers = True: expected False"):
        check_config(config)


def test_model_config_rejects_bad_lora():
    with pytest.raises(ValueError, match="lora_rank must be >= 0"):
        models.tiny_config(lora_rank=-1)
    with pytest.raises(ValueError, match=r"lora_targets \['qkv'\] are not projections"):
        models.tiny_config(lora_rank=2, lora_targets=("qkv",))


@pytest.mark.slow
def test_lora_rl_run_freezes_the_base_uses_it_as_reference_and_resumes(tmp_path):
    """GRPO with a KL term, rank-4 adapters on q/v/down: the reference (adapters off) is the
    starting policy, so step 1's KL is exactly 0 and step 2's is not; the base stays
    bit-identical; the same command again restores the finished stage from its checkpoint
    (adapters, frozen base and the adapters' optimizer state) into the LoRA template."""
    from rl_jax.settings import RunSettings
    from rl_jax.trainers.metrics import read_metrics
    from rl_jax.trainers.run import run
    from rl_jax.trainers.setup import build_context

    config = tiny_config(**{"kl.coef": 0.04, "rl.steps": 2, "checkpoint.every": 1,
                            "model.logits_chunk": 0})
    config.stages = ("rl",)
    config.eval.k = 0
    config.model.lora.rank = 4
    config.model.lora.targets = ("q_proj", "v_proj", "down_proj")
    mesh = parallel.make_mesh(devices=jax.devices()[:1])
    trained = run(config, str(tmp_path), mesh)["params"]
    restored = run(config, str(tmp_path), mesh)["params"]  # finished: only restored
    jax.tree.map(np.testing.assert_array_equal, restored, trained)
    rl = [r for r in read_metrics(tmp_path) if r["stage"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2]
    assert rl[0]["kl_ref"] == 0.0 and rl[1]["kl_ref"] != 0.0
    start = nnx.state(build_context(RunSettings.from_config(config), str(tmp_path)).policy)
    adapters, base = nnx.split_state(trained, nnx.LoRAParam, ...)
    jax.tree.map(np.testing.assert_array_equal, base, nnx.split_state(start, nnx.LoRAParam, ...)[1])
    b_leaves = [v[...] for p, v in nnx.to_flat_state(adapters) if p[-1] == "lora_b"]
    assert max(float(jnp.abs(b).max()) for b in b_leaves) > 0  # the adapters trained
