"""The sampler on its own devices (mesh.rollout_devices): on 8 fake CPU devices the compiled
sampler and trainer programs each touch only their own sub-mesh, the weights reach the sampler
exactly (its forward gives the trainer's logits bit for bit), and an off-policy run (k = 1) that
samples there while it trains is deterministic and resumes bit for bit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rl_jax import parallel
from rl_jax.algorithm import RolloutBatch, build_rl_step
from rl_jax.algorithm.step import policy_logits
from rl_jax.config import ConfigError, check_config
from rl_jax.rollout import Sampler
from rl_jax.train_state import init_state
from rl_jax.trainers.metrics import WALL_CLOCK
from rl_jax.trainers.run import run
from tests.testing_utils import rl_settings, tiny_config, tiny_policy

VOCAB, PROMPT, RESPONSE, ROWS = 64, 8, 8, 16


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(VOCAB)


@pytest.fixture(scope="module")
def meshes():
    assert len(jax.devices()) == 8, "tests/conftest.py sets 8 fake CPU devices"
    return parallel.split_mesh(parallel.make_mesh(fsdp=2), rollout_devices=4)


def test_split_mesh_gives_disjoint_device_sets(meshes):
    trainer, sampler = meshes
    devices = set(jax.devices())
    assert set(trainer.devices.flat) | set(sampler.devices.flat) == devices
    assert not set(trainer.devices.flat) & set(sampler.devices.flat)
    assert dict(trainer.shape) == {"data": 2, "fsdp": 2} and dict(sampler.shape) == {
        "data": 4, "fsdp": 1}
    assert set(sampler.devices.flat) == set(jax.devices()[4:])
    mesh = parallel.make_mesh()
    assert parallel.split_mesh(mesh, 0) == (mesh, None)
    for bad in (-1, 8):
        with pytest.raises(ValueError, match="rollout_devices"):
            parallel.split_mesh(mesh, bad)


def test_check_config_names_a_bad_rollout_device_count():
    with pytest.raises(ConfigError, match=r"config.mesh.rollout_devices = 8: expected an int in "
                                          r"\[0, 8\)"):
        check_config(tiny_config(**{"mesh.rollout_devices": 8}), num_devices=8)
    with pytest.raises(ConfigError, match="a divisor of the rollout batch"):
        check_config(tiny_config(**{"mesh.rollout_devices": 3}), num_devices=8)
    # The trainer's batch checks are of the devices it keeps: 16 rows over 8 - 2 = 6 devices.
    with pytest.raises(ConfigError, match="multiple of the 6 devices"):
        check_config(tiny_config(**{"mesh.rollout_devices": 2}), num_devices=8)
    check_config(tiny_config(**{"mesh.rollout_devices": 4}), num_devices=8)


def _rollout_batch(seed=0):
    rng = np.random.default_rng(seed)
    response_mask = (np.arange(RESPONSE)[None] < rng.integers(1, RESPONSE + 1, (ROWS, 1)))
    response_mask = response_mask.astype(np.float32)
    return RolloutBatch(
        tokens=rng.integers(3, VOCAB, (ROWS, PROMPT + RESPONSE)).astype(np.int32),
        mask=np.concatenate([np.ones((ROWS, PROMPT), np.float32), response_mask], 1),
        response_mask=response_mask,
        sampler_logprobs=rng.uniform(-4.5, -3.8, (ROWS, RESPONSE)).astype(np.float32),
        scores=rng.integers(0, 2, ROWS).astype(np.float32),
        truncated=np.zeros(ROWS, np.float32),
    )


@pytest.mark.slow
def test_compiled_programs_touch_only_their_own_devices(policy, meshes):
    """The sampler's decode program runs on the sampler's 4 devices, prepare and update on the
    trainer's 4; a negative control: the sampler cannot take the trainer's arrays."""
    trainer, sampler_mesh = meshes
    trainer_devices, sampler_devices = set(trainer.devices.flat), set(sampler_mesh.devices.flat)
    graphdef, params = nnx.split(policy)
    tx = optax.adam(1e-3)
    state, sharding = init_state({"policy": params}, tx, trainer)
    state = jax.device_put(state, sharding)
    settings = rl_settings(estimator="grpo", group_size=4, max_len=RESPONSE, num_minibatches=1)
    rl_step = build_rl_step(settings, tx, graphdef, mesh=trainer, state_sharding=sharding,
                            donate_state=False)
    batch = parallel.shard_batch(_rollout_batch(), trainer)
    prepare = rl_step.prepare.lower(state.params, None, batch, jnp.float32(0.0)).compile()
    train, _ = prepare(state.params, None, batch, jnp.float32(0.0))
    update = rl_step.update.lower(state, train).compile()
    assert parallel.program_devices(prepare) == trainer_devices
    assert parallel.program_devices(update) == trainer_devices

    sampler = Sampler.from_model(policy, eos_ids=(2,), pad_id=0, mesh=sampler_mesh)
    sampler_params = jax.device_put(state.params["policy"],
                                    parallel.param_sharding(params, sampler_mesh))
    prompts, key = [[3, 4, 5]] * 4, jax.random.key(0)
    decode = sampler.lower(sampler_params, prompts, key, n=4, max_new_tokens=4).compile()
    assert parallel.program_devices(decode) == sampler_devices
    with pytest.raises(ValueError):  # the trainer's params are on other devices
        sampler.generate(state.params["policy"], prompts, key, n=4, max_new_tokens=4)


def test_weights_reach_the_sampler_exactly(policy, meshes):
    """After the transfer (device_put, resharded from the trainer's fsdp layout to the sampler's
    replicated one) every parameter is bit-identical, the sampler's devices give the trainer's
    logits bit for bit, and the sampler's own decode reports the trainer's log-probs."""
    trainer, sampler_mesh = meshes
    graphdef, params = nnx.split(policy)
    trained = jax.device_put(params, parallel.param_sharding(params, trainer, min_size=1))
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(
        jax.tree.map(lambda x: x.sharding, trained)))  # the trainer's copy is really split
    moved = jax.device_put(trained, parallel.param_sharding(params, sampler_mesh))
    for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(moved), strict=True):
        assert set(b.sharding.device_set) == set(sampler_mesh.devices.flat)
        assert np.array_equal(np.asarray(a), np.asarray(b))
    batch = _rollout_batch()
    forward = jax.jit(lambda p, t, m: policy_logits(graphdef, p, t, m, RESPONSE))

    def logits(p, mesh):
        t, m = parallel.shard_batch((batch.tokens, batch.mask), mesh)
        return np.asarray(forward(p, t, m))

    assert np.array_equal(logits(trained, trainer), logits(moved, sampler_mesh))

    sampler = Sampler.from_model(policy, eos_ids=(), pad_id=0, mesh=sampler_mesh)
    out = sampler.generate(moved, [[3, 4, 5, 6]] * 4, jax.random.key(1), n=4, max_new_tokens=4)
    tokens = np.concatenate([out.prompt_tokens, out.response_tokens], 1)
    mask = np.concatenate([out.prompt_mask, out.response_mask], 1).astype(np.float32)
    t, m = parallel.shard_batch((tokens, mask), trainer)
    response_logits = jax.jit(lambda p, t, m: policy_logits(graphdef, p, t, m, 4))(trained, t, m)
    chosen = np.take_along_axis(np.asarray(jax.nn.log_softmax(response_logits)),
                                np.asarray(out.response_tokens)[..., None], -1)[..., 0]
    np.testing.assert_allclose(chosen, np.asarray(out.response_logprobs), atol=1e-5)


def _split_run(workdir, steps):
    config = tiny_config(**{"rl.steps": steps, "kl.coef": 0.04, "model.logits_chunk": 0,
                            "rl.epochs": 2, "loss.is_correction": "token_tis",
                            "rl.max_staleness": 1, "rl.stale_policy": "wait",
                            "mesh.rollout_devices": 4, "checkpoint.every": 1})
    config.stages = ("rl",)
    params = run(config, str(workdir), parallel.make_mesh())["params"]
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl", encoding="utf-8")]
    skip = (*WALL_CLOCK, "eval/")
    return params, [{k: v for k, v in r.items() if not k.startswith(skip)} for r in lines]


@pytest.mark.slow
def test_k1_on_its_own_devices_is_deterministic_and_resumes_exactly(tmp_path):
    """4 trainer + 4 sampler devices, k = 1 (sampling of step s + 1 in a thread while step s
    trains): a straight run, and one stopped after 2 steps and resumed, are bit-identical."""
    straight, lines = _split_run(tmp_path / "a", 3)
    _split_run(tmp_path / "b", 2)
    resumed, lines_resumed = _split_run(tmp_path / "b", 3)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert lines == lines_resumed
    assert [r["staleness_max"] for r in lines] == [0.0, 1.0, 1.0]
