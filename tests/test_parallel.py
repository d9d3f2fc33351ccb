"""Data parallelism over 8 fake CPU devices (set in conftest.py) gives the one-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import rl_jax
from rl_jax import parallel

LR = 0.1


def loss_fn(params, batch):
    """A GRPO-style loss of a tiny linear policy: logits = features @ w."""
    logits = batch["features"] @ params["w"] + params["b"]
    logprobs = rl_jax.token_logprobs(logits, batch["tokens"])
    adv = rl_jax.group_advantages(batch["rewards"], 4)
    loss, _ = rl_jax.policy_loss(logprobs, batch["old_logprobs"], adv, batch["mask"])
    kl = rl_jax.kl(logprobs, batch["ref_logprobs"], estimator="k3")
    return loss + 0.05 * rl_jax.aggregate(kl, batch["mask"], "token-mean")


def sgd_step(params, batch):
    loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    new_params = jax.tree.map(lambda p, g: p - LR * g, params, grads)
    return new_params, {"loss": loss}


def make_problem(batch=16, time=6, hidden=8, vocab=128):
    rng = np.random.default_rng(0)
    params = {
        "w": rng.normal(size=(hidden, vocab)).astype(np.float32) * 0.3,
        "b": np.zeros(vocab, np.float32),
    }
    lengths = rng.integers(1, time + 1, size=batch)
    data = {
        "features": rng.normal(size=(batch, time, hidden)).astype(np.float32),
        "tokens": rng.integers(0, vocab, size=(batch, time)).astype(np.int32),
        "old_logprobs": rng.normal(-4.8, 0.3, size=(batch, time)).astype(np.float32),
        "ref_logprobs": rng.normal(-4.8, 0.3, size=(batch, time)).astype(np.float32),
        "rewards": rng.integers(0, 2, size=batch).astype(np.float32),
        "mask": (np.arange(time)[None] < lengths[:, None]).astype(np.float32),
    }
    return params, data


def run_on(mesh, params, data):
    state_sharding = parallel.param_sharding(params, mesh, min_size=1)
    step = parallel.data_parallel_step(sgd_step, mesh, state_sharding, donate_state=False)
    params = jax.device_put(params, state_sharding)
    new_params, metrics = step(params, parallel.shard_batch(data, mesh))
    return jax.device_get(new_params), jax.device_get(metrics)


def test_eight_fake_devices_are_present():
    assert jax.device_count() == 8, "conftest.py should force 8 host devices"


@pytest.mark.slow
@pytest.mark.parametrize("fsdp", [1, 2, 8])
def test_sharded_step_equals_single_device(fsdp):
    params, data = make_problem()
    one = run_on(parallel.make_mesh(devices=jax.devices()[:1]), params, data)
    many_mesh = parallel.make_mesh(fsdp=fsdp)
    assert many_mesh.devices.size == 8
    many = run_on(many_mesh, params, data)
    # Same loss and same updated parameters (so the same gradients): float32 sums in another order.
    np.testing.assert_allclose(many[1]["loss"], one[1]["loss"], rtol=1e-6)
    for name in params:
        np.testing.assert_allclose(many[0][name], one[0][name], rtol=1e-5, atol=1e-7)
    # The gradient is the full-batch gradient (not summed or averaged per device).
    grads = jax.grad(loss_fn)(params, data)
    np.testing.assert_allclose((params["w"] - many[0]["w"]) / LR, grads["w"], atol=1e-5)


def test_batch_is_split_and_params_sharded():
    params, data = make_problem()
    mesh = parallel.make_mesh(fsdp=2)
    batch = parallel.shard_batch(data, mesh)
    assert batch["features"].sharding.spec == parallel.batch_sharding(mesh).spec
    assert batch["features"].addressable_shards[0].data.shape == (2, 6, 8)
    shardings = parallel.param_sharding(params, mesh, min_size=1)
    assert shardings["w"].spec == jax.sharding.PartitionSpec(None, "fsdp")  # 128 is the big dim
    assert parallel.param_sharding(params, mesh)["w"].spec == jax.sharding.PartitionSpec()


def test_batch_that_does_not_divide_is_a_clear_error():
    _, data = make_problem(batch=12)
    with pytest.raises(ValueError, match=r"\['mask'\].*multiple of the 8"):
        parallel.shard_batch({"mask": data["mask"]}, parallel.make_mesh())
    with pytest.raises(ValueError, match="fsdp=3"):
        parallel.make_mesh(fsdp=3)


def test_donated_step_runs_repeatedly():
    params, data = make_problem()
    mesh = parallel.make_mesh()
    sharding = parallel.param_sharding(params, mesh)
    step = parallel.data_parallel_step(sgd_step, mesh, sharding)
    state = jax.device_put(params, sharding)
    batch = parallel.shard_batch(data, mesh)
    losses = []
    for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[2] < losses[0]
    assert jnp.all(jnp.isfinite(state["w"]))
