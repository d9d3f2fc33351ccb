r"""GRPO and PPO loss-and-gradient steps of a small transformer on random data, over all devices.

The pure RL math (``rl_jax.policy_loss``, ``kl``, ``gae``, ``group_advantages``, ...) wired into
a train step by hand, without ``build_rl_step`` or the trainers: random prompts and responses,
random rewards, one jitted train step per algorithm, data-parallel over every device of a
``("data", "fsdp")`` mesh. It prints the losses of a few steps.

    python experiments/loss_step_demo/loss_step_demo.py --steps=3 --group_size=4

On a CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` runs it on 8 fake devices.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

import rl_jax
from rl_jax import models, parallel

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 3, "Train steps per algorithm.")
flags.DEFINE_integer("num_prompts", 4, "Prompts per batch.")
flags.DEFINE_integer("group_size", 4, "Responses per prompt.")
flags.DEFINE_integer("prompt_len", 8, "Prompt tokens.")
flags.DEFINE_integer("response_len", 16, "Response tokens (padding included).")
flags.DEFINE_integer("fsdp", 1, "Devices that shard one copy of the parameters.")
flags.DEFINE_integer("seed", 0, "Root random seed.")


def random_batch(rng: np.random.Generator, vocab: int) -> dict[str, np.ndarray]:
    """Random prompt+response tokens with right-padded responses and 0/1 rewards."""
    batch = FLAGS.num_prompts * FLAGS.group_size
    total = FLAGS.prompt_len + FLAGS.response_len
    lengths = rng.integers(1, FLAGS.response_len + 1, size=batch)
    response_mask = (np.arange(FLAGS.response_len)[None] < lengths[:, None]).astype(np.float32)
    prompt_mask = np.ones((batch, FLAGS.prompt_len), np.float32)
    return {
        "tokens": rng.integers(0, vocab, size=(batch, total)).astype(np.int32),
        "mask": np.concatenate([prompt_mask, response_mask], axis=1),
        "rewards": rng.integers(0, 2, size=batch).astype(np.float32),
    }


def response_logprobs(graphdef, params, batch):
    """Log-probs ``[batch, response_len]`` of the response tokens under the policy."""
    tokens, mask = batch["tokens"], batch["mask"]
    positions = models.positions_from_mask(mask)
    logits, _ = models.apply_lm(graphdef, params, tokens, positions, mask)
    # Position t predicts token t + 1: the response tokens are predicted from P - 1 .. T - 2.
    logits = logits[:, FLAGS.prompt_len - 1 : -1]
    return rl_jax.token_logprobs(logits, tokens[:, FLAGS.prompt_len :])


def make_grpo_loss(graphdef, ref_params, beta=0.04):
    def loss_fn(params, batch):
        mask = batch["mask"][:, FLAGS.prompt_len :]
        logprobs = response_logprobs(graphdef, params, batch)
        ref_logprobs = response_logprobs(graphdef, ref_params, batch)
        advantages = rl_jax.group_advantages(batch["rewards"], FLAGS.group_size)
        pg_loss, _ = rl_jax.policy_loss(
            logprobs, batch["old_logprobs"], advantages, mask, agg="seq-mean-token-mean"
        )
        kl = rl_jax.aggregate(
            rl_jax.kl(logprobs, ref_logprobs, estimator="k3"), mask, "seq-mean-token-mean"
        )
        return pg_loss + beta * kl

    return loss_fn


def make_ppo_loss(graphdef, value_graphdef, ref_params, kl_coef=0.05, vf_coef=0.1):
    def loss_fn(params, batch):
        policy_params, value_params = params
        mask = batch["mask"][:, FLAGS.prompt_len :]
        logprobs = response_logprobs(graphdef, policy_params, batch)
        ref_logprobs = jax.lax.stop_gradient(response_logprobs(graphdef, ref_params, batch))
        critic = nnx.merge(value_graphdef, value_params)
        positions = models.positions_from_mask(batch["mask"])
        values = critic(batch["tokens"], positions, batch["mask"])[:, FLAGS.prompt_len - 1 : -1]
        # Score on the last real token, k1 KL penalty on every token.
        last = jax.nn.one_hot(mask.sum(1).astype(jnp.int32) - 1, mask.shape[1])
        kl = rl_jax.kl(jax.lax.stop_gradient(logprobs), ref_logprobs, estimator="k1")
        rewards = batch["rewards"][:, None] * last - kl_coef * kl
        old_values = jax.lax.stop_gradient(values)
        advantages, returns = rl_jax.gae(rewards, old_values, mask, gamma=1.0, lam=0.95)
        advantages = rl_jax.whiten(advantages, mask)
        pg_loss, _ = rl_jax.policy_loss(logprobs, batch["old_logprobs"], advantages, mask)
        v_loss, _ = rl_jax.value_loss(values, old_values, returns, mask)
        return pg_loss + vf_coef * v_loss

    return loss_fn


def train(name, loss_fn, params, batch, mesh):
    """A few AdamW steps of ``loss_fn`` over the mesh; prints the loss of each."""
    tx = optax.adamw(1e-3)

    def step(state, batch):
        params, opt_state = state
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state), {
            "loss": loss,
            "grad_norm": optax.global_norm(grads),
        }

    # The step donates its state; copy so the caller's arrays stay alive.
    params = jax.tree.map(jnp.copy, params)
    state = (params, tx.init(params))
    sharding = parallel.param_sharding(state, mesh)
    state = jax.device_put(state, sharding)
    jitted = parallel.data_parallel_step(step, mesh, sharding)
    batch = parallel.shard_batch(batch, mesh)
    for i in range(FLAGS.steps):
        start = time.perf_counter()
        state, metrics = jitted(state, batch)
        loss, grad_norm = float(metrics["loss"]), float(metrics["grad_norm"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"{name}: loss is {loss} at step {i}")
        print(f"{name} step {i}: loss {loss:+.5f}  grad_norm {grad_norm:.4f}  "
              f"({time.perf_counter() - start:.2f} s)")


def main(argv):
    del argv
    mesh = parallel.make_mesh(fsdp=FLAGS.fsdp)
    print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, mesh {dict(mesh.shape)}")
    config = models.tiny_config("qwen2")
    policy = models.CausalLM(config, rngs=nnx.Rngs(FLAGS.seed))
    graphdef, params = nnx.split(policy)
    ref_params = jax.tree.map(jnp.copy, params)
    critic = models.ValueModel.from_policy(policy, rngs=nnx.Rngs(FLAGS.seed + 1))
    value_graphdef, value_params = nnx.split(critic)

    rng = np.random.default_rng(FLAGS.seed)
    batch = random_batch(rng, config.vocab_size)
    batch["old_logprobs"] = np.asarray(
        jax.jit(response_logprobs, static_argnums=0)(graphdef, params, batch)
    )
    train("grpo", make_grpo_loss(graphdef, ref_params), params, batch, mesh)
    train("ppo", make_ppo_loss(graphdef, value_graphdef, ref_params),
          (params, value_params), batch, mesh)


if __name__ == "__main__":
    app.run(main)
