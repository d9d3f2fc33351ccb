"""The shared-prefix forward (``rl.shared_prefix``) computes what the plain layout computes.

Each group's prompt runs once and its G completions attend to its keys and values; the hidden
states, log-probs, values, losses and gradients must equal the plain forward over
``[n * G, P + R]`` rows within float32 rounding (``ATOL`` below, the same for every check), for
every policy loss of the registry, with a KL loss term and a critic, on one device and on the 8
fake CPU devices. The compiled update's FLOPs fall by the prompts' share of the token work.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rl_jax import models, parallel
from rl_jax.algorithm import POLICY_LOSSES, RLSettings, RolloutBatch, build_rl_step
from rl_jax.algorithm.step import group_rows, ungroup_rows
from rl_jax.config import ConfigError, check_config, default_config
from rl_jax.train_state import TrainState, init_state
from tests.testing_utils import rl_settings

VOCAB, PROMPT, RESPONSE, PROMPTS, GROUP = 48, 6, 5, 8, 2
ROWS = PROMPTS * GROUP
# float32: the two layouts reduce in different orders (softmax over P + R keys against P keys for
# a prompt query; sums over a group's gradient in the backward). Observed here: hidden states
# (scale ~3) and log-probs within 8e-7, the PPO loss within 1e-8, gradients within 3e-8 (of 0.12).
ATOL = 2e-5


def settings_of(**fields) -> RLSettings:
    """The tiny config's RL options with one update a rollout and no KL, then ``fields``."""
    base = dict(estimator="grpo", group_size=GROUP, temperature=1.0, max_len=RESPONSE, epochs=1,
                num_minibatches=1, kl_loss_coef=0.0, kl_in_reward=False, shared_prefix=False)
    return rl_settings(**(base | fields))


def tiny(model_type="qwen2", **overrides):
    overrides = dict(num_layers=2) | overrides
    config = models.tiny_config(model_type, vocab_size=VOCAB, hidden_size=32,
                                intermediate_size=64, num_heads=4, num_kv_heads=2,
                                max_position_embeddings=64, **overrides)
    return models.CausalLM(config, rngs=nnx.Rngs(0))


def prompts_and_completions(seed=0, prompts=PROMPTS, group=GROUP):
    """Left-padded prompts (lengths 2..P) and completions (lengths 1..R), host arrays."""
    rng = np.random.default_rng(seed)
    prompt_tokens = rng.integers(3, VOCAB, (prompts, PROMPT)).astype(np.int32)
    prompt_mask = (np.arange(PROMPT)[None] >= rng.integers(0, PROMPT - 1, (prompts, 1)))
    rows = prompts * group
    response_tokens = rng.integers(3, VOCAB, (rows, RESPONSE)).astype(np.int32)
    response_mask = np.arange(RESPONSE)[None] < rng.integers(1, RESPONSE + 1, (rows, 1))
    return (prompt_tokens, prompt_mask.astype(np.float32), response_tokens,
            response_mask.astype(np.float32))


def rollout(seed=0, prompts=PROMPTS, group=GROUP):
    """A RolloutBatch in the plain layout: each prompt repeated over its group's rows."""
    pt, pm, rt, rm = prompts_and_completions(seed, prompts, group)
    rng = np.random.default_rng(seed + 1)
    rows = prompts * group
    return RolloutBatch(
        tokens=np.concatenate([np.repeat(pt, group, 0), rt], 1),
        mask=np.concatenate([np.repeat(pm, group, 0), rm], 1),
        response_mask=rm,
        sampler_logprobs=rng.uniform(-4.2, -3.6, (rows, RESPONSE)).astype(np.float32) * rm,
        scores=rng.integers(0, 2, rows).astype(np.float32),
        truncated=np.zeros(rows, np.float32),
    )


def assert_trees_close(a, b, atol=ATOL):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(leaves_a) == len(leaves_b)
    for x, y in zip(leaves_a, leaves_b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=0, atol=atol)


# --- The forward ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_type", "overrides"),
    [("qwen2", {}), ("llama", {"scan_layers": True, "remat": "full"}),
     ("qwen3", {"remat": "dots_saveable", "tie_word_embeddings": False}),
     ("llama", {"attention_impl": "xla"})],
    ids=["qwen2", "llama-scan-remat", "qwen3-untied-remat", "llama-xla-attention"],
)
def test_hidden_states_equal_the_plain_forward(model_type, overrides):
    graphdef, state = nnx.split(tiny(model_type, **overrides))
    pt, pm, rt, rm = prompts_and_completions()
    tokens = np.concatenate([np.repeat(pt, GROUP, 0), rt], 1)
    mask = np.concatenate([np.repeat(pm, GROUP, 0), rm], 1)
    hidden, head, vocab_major = models.apply_lm_hidden(
        graphdef, state, tokens, models.positions_from_mask(mask), mask
    )
    shared, shared_head, shared_major = models.apply_lm_shared_prefix(
        graphdef, state, pt, pm, rt, rm
    )
    assert shared.shape == (ROWS, RESPONSE, 32) and shared_major == vocab_major
    np.testing.assert_allclose(shared, hidden[:, PROMPT - 1 : -1], rtol=0, atol=ATOL)
    np.testing.assert_array_equal(shared_head, head)


def test_a_wrong_prompt_changes_the_result():
    """Negative control: the completions really read their own prompt's keys and values."""
    graphdef, state = nnx.split(tiny())
    pt, pm, rt, rm = prompts_and_completions()
    right = models.apply_lm_shared_prefix(graphdef, state, pt, pm, rt, rm)[0]
    wrong = models.apply_lm_shared_prefix(graphdef, state, pt[::-1], pm[::-1], rt, rm)[0]
    assert float(jnp.abs(right - wrong).max()) > 100 * ATOL


def test_values_equal_the_plain_forward():
    critic = models.ValueModel.from_policy(tiny(), rngs=nnx.Rngs(1))
    graphdef, state = nnx.split(critic)
    pt, pm, rt, rm = prompts_and_completions()
    tokens = np.concatenate([np.repeat(pt, GROUP, 0), rt], 1)
    mask = np.concatenate([np.repeat(pm, GROUP, 0), rm], 1)
    plain = critic(tokens, models.positions_from_mask(mask), mask)[:, PROMPT - 1 : -1]
    shared = models.apply_values_shared_prefix(graphdef, state, pt, pm, rt, rm)
    np.testing.assert_allclose(shared, plain, rtol=0, atol=ATOL)


# --- prepare, the loss and its gradient -----------------------------------------------------------


def build(settings, policy, critic=None, mesh=None):
    graphdef, params = nnx.split(policy)
    value_graphdef = None
    all_params = {"policy": params}
    if critic is not None:
        value_graphdef, all_params["value"] = nnx.split(critic)
    steps = {}
    for shared in (False, True):
        s = settings_of(**{**settings, "shared_prefix": shared})
        steps[shared] = build_rl_step(s, None, graphdef, value_graphdef)
    return steps, all_params


def prepare_both(steps, params, ref_params, batch):
    """``{shared: (TrainBatch in the plain layout, metrics)}`` of ``prepare``."""
    out = {}
    for shared, step in steps.items():
        train, metrics = step.prepare(params, ref_params, batch, jnp.float32(0.05))
        if shared:
            assert train.tokens.shape == (PROMPTS, GROUP, PROMPT + RESPONSE)
            train = ungroup_rows(train)
        out[shared] = (train, metrics)
    return out


def loss_and_grads(step, params, train, key=None):
    return jax.jit(jax.value_and_grad(step.loss, has_aux=True))(
        params, train.replace(loss_key=key)
    )


POLICY_LOSS_OPTIONS = {
    "ppo": {"agg": "seq-mean-token-mean"},
    "cispo": {"clip_low": 1.0, "clip_high": 0.28},
    "gmpo": {},
    "clip_cov": {"cov_ratio": 0.2, "cov_lower": -10.0, "cov_upper": 10.0},
    "kl_cov": {"cov_ratio": 0.2},
    "sapo": {},
    "likelihood": {},
}


@pytest.mark.slow
@pytest.mark.parametrize("policy_loss", sorted(POLICY_LOSSES))
def test_prepare_loss_and_gradients_equal_the_plain_layout(policy_loss):
    """GRPO with a k3 KL loss term and a perturbed reference; two minibatches, so ``prepare``
    computes the old log-probs, and the update's weights moved (old != current)."""
    settings = dict(estimator="grpo", group_size=GROUP, temperature=0.9, max_len=RESPONSE,
                    kl_loss_coef=0.04, policy_loss=policy_loss, num_minibatches=2,
                    logits_chunk=2 if policy_loss == "ppo" else 0,
                    **POLICY_LOSS_OPTIONS[policy_loss])
    policy = tiny(num_layers=1)  # the hidden states of two layers are checked above
    steps, params = build(settings, policy)
    ref = jax.tree.map(lambda x: x * 1.05, params["policy"])
    prepared = prepare_both(steps, params, ref, rollout())
    (plain, plain_metrics), (shared, shared_metrics) = prepared[False], prepared[True]
    assert_trees_close(plain, shared)
    assert_trees_close(plain_metrics, shared_metrics)
    moved = jax.tree.map(lambda x: x + 0.02 * jnp.sign(x), params)
    key = jax.random.key(3)
    # At the sampling weights the log-ratio is 0 up to rounding, where KL-Cov's |log ratio| has
    # a kink: its gradient takes the sign of that rounding, which differs between any two
    # programs. Away from it the two layouts must agree.
    for at in (moved,) if policy_loss == "kl_cov" else (params, moved):
        (loss, metrics), grads = loss_and_grads(steps[False], at, plain, key)
        (shared_loss, shared_metrics), shared_grads = loss_and_grads(
            steps[True], at, group_rows(plain, GROUP), key)
        np.testing.assert_allclose(shared_loss, loss, rtol=0, atol=ATOL)
        assert_trees_close(shared_metrics, metrics)
        assert_trees_close(shared_grads, grads)
        assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads)) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize(
    "settings",
    [
        dict(estimator="rloo", agg="token-mean", logits_chunk=0),  # single pass: entropy metric
        dict(estimator="gae", kl_in_reward=True, whiten_advantages=True, num_minibatches=2),
    ],
    ids=["rloo-single-pass", "gae-critic-kl-in-reward"],
)
def test_single_pass_and_critic_equal_the_plain_layout(settings):
    settings = dict(group_size=GROUP, temperature=1.0, max_len=RESPONSE, **settings)
    policy = tiny()
    critic = models.ValueModel.from_policy(policy, rngs=nnx.Rngs(1)) if (
        settings["estimator"] == "gae") else None
    steps, params = build(settings, policy, critic)
    ref = jax.tree.map(lambda x: x * 1.05, params["policy"])
    out = prepare_both(steps, params, ref, rollout(seed=2))
    assert_trees_close(out[True], out[False])
    plain = loss_and_grads(steps[False], params, out[False][0])
    shared = loss_and_grads(steps[True], params, group_rows(out[False][0], GROUP))
    assert_trees_close(shared, plain)


# --- The update, on one device and on eight -------------------------------------------------------


def run_update(settings, batch, mesh=None):
    policy = tiny()
    graphdef, params = nnx.split(policy)
    tx = optax.sgd(0.5)
    params = {"policy": params}
    ref = jax.tree.map(lambda x: x * 1.05, params["policy"])
    if mesh is None:
        state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
        step = build_rl_step(settings, tx, graphdef)
    else:
        state, sharding = init_state(params, tx, mesh)
        ref = jax.device_put(ref, parallel.param_sharding(ref, mesh))
        batch = parallel.shard_batch(batch, mesh)
        step = build_rl_step(settings, tx, graphdef, mesh=mesh, state_sharding=sharding)
    train, _ = step.prepare(state.params, ref, batch, jnp.float32(0.0))
    if mesh is not None and settings.shared_prefix:  # whole groups on each device
        assert train.tokens.sharding.spec[0] == parallel.BATCH_AXES
        assert len({s.data.shape for s in train.tokens.addressable_shards}) == 1
        assert train.tokens.addressable_shards[0].data.shape[:2] == (
            train.tokens.shape[0] // 8, GROUP)
    state, metrics = step.update(state, train)
    return jax.device_get(state.params), jax.device_get(metrics)


@pytest.mark.slow
def test_update_equals_the_plain_layout_and_splits_over_eight_devices():
    """One minibatch: the same rows in a different order (rows vs groups shuffled), so the same
    SGD step. Two minibatches of whole groups: 8 devices give the one-device result."""
    base = dict(estimator="grpo", group_size=GROUP, temperature=1.0, max_len=RESPONSE,
                kl_loss_coef=0.04, agg="seq-mean-token-mean", epochs=2)
    batch = rollout(seed=4)
    plain, plain_metrics = run_update(settings_of(**base, shared_prefix=False), batch)
    shared, shared_metrics = run_update(settings_of(**base, shared_prefix=True), batch)
    eight, eight_metrics = run_update(settings_of(**base, shared_prefix=True), batch,
                                      parallel.make_mesh())
    assert_trees_close(shared, plain)
    assert_trees_close(eight, plain)
    assert_trees_close(shared_metrics, plain_metrics)
    assert_trees_close(eight_metrics, plain_metrics)
    changed = max(float(np.abs(a - b).max()) for a, b in zip(
        jax.tree.leaves(plain), jax.tree.leaves({"policy": nnx.split(tiny())[1]}), strict=True))
    assert changed > 1e-3
    two = settings_of(**base, shared_prefix=True, num_minibatches=2)
    batch = rollout(seed=5, prompts=16)
    one_device, _ = run_update(two, batch)
    eight, _ = run_update(two, batch, parallel.make_mesh())
    assert_trees_close(eight, one_device)


@pytest.mark.slow
def test_each_of_eight_devices_runs_an_eighth_of_the_shared_step():
    """The groups split over the devices without being gathered: each device's compiled
    ``prepare`` and ``update`` do 1/8 of the one-device FLOPs (up to the replicated optimizer
    and reductions), and prepare's largest dot is 1/8 of the one-device one."""
    graphdef, params = nnx.split(tiny())
    tx = optax.sgd(0.1)
    settings = settings_of(kl_loss_coef=0.04, shared_prefix=True)
    work = {}
    for devices in (1, 8):
        mesh = parallel.make_mesh(devices=jax.devices()[:devices])
        state, sharding = init_state({"policy": params}, tx, mesh)
        step = build_rl_step(settings, tx, graphdef, mesh=mesh, state_sharding=sharding)
        batch = parallel.shard_batch(rollout(), mesh)
        args = (state.params, params, batch, jnp.float32(0.0))
        train = step.prepare.eval_shape(*args)[0]
        work[devices] = (parallel.compiled_work(step.prepare.lower(*args)),
                         parallel.compiled_work(step.update.lower(state, train)))
    (prepare_one, update_one), (prepare_eight, update_eight) = work[1], work[8]
    assert prepare_one["dot_elements"] == 8 * prepare_eight["dot_elements"]
    for one, eight in ((prepare_one, prepare_eight), (update_one, update_eight)):
        assert one["flops"] / 8 <= eight["flops"] <= 1.15 * one["flops"] / 8, (one, eight)


# --- The compiled program -------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_update_saves_the_prompts_share_of_the_flops():
    """Long prompts (P = 48) and short completions (R = 16), G = 4: each prompt token is computed
    once instead of 4 times. The token-linear work (projections, MLP, norms; the LM head only
    ever sees the R predicting positions) falls from G (P + R) to P + G R tokens a group
    (-56%); the attention matmuls (full squares, masked after) from G (P + R)^2 to
    P^2 + G R (P + R) a group (-61%). The FLOPs the compiler reports for the whole update
    (forward, backward, optimizer) must fall by at least 90% of the token-linear share and by
    no more than the attention share. Measured: 886 -> 387 MFLOP (-56.3%)."""
    p, r, g, n = 48, 16, 4, 4
    config = models.tiny_config("qwen2", vocab_size=64, hidden_size=64, intermediate_size=256,
                                num_layers=2, num_heads=4, num_kv_heads=2,
                                max_position_embeddings=128)
    graphdef, params = nnx.split(models.CausalLM(config, rngs=nnx.Rngs(0)))
    tx = optax.sgd(0.1)
    state = TrainState(jnp.zeros((), jnp.int32), {"policy": params}, tx.init({"policy": params}))
    rows = n * g
    tokens = jnp.ones((rows, p + r), jnp.int32)
    mask = jnp.ones((rows, p + r), jnp.float32)
    flops = {}
    for shared in (False, True):
        settings = settings_of(group_size=g, max_len=r, kl_loss_coef=0.04, shared_prefix=shared)
        step = build_rl_step(settings, tx, graphdef)
        train = step.prepare.eval_shape(
            state.params, params,
            RolloutBatch(tokens=tokens, mask=mask, response_mask=mask[:, p:],
                         sampler_logprobs=mask[:, p:], scores=mask[:, 0], truncated=mask[:, 0]),
            jnp.float32(0.0),
        )[0]
        compiled = step.update.lower(state, train).compile()
        flops[shared] = compiled.cost_analysis()["flops"]
    saved = 1 - flops[True] / flops[False]
    token_share = 1 - (p + g * r) / (g * (p + r))  # 0.5625
    score_share = 1 - (p * p + g * r * (p + r)) / (g * (p + r) ** 2)  # 0.609
    assert 0.9 * token_share <= saved <= score_share, (saved, flops)


# --- The config -----------------------------------------------------------------------------------


def shared_config(**rl):
    config = default_config()
    config.rl.shared_prefix = True
    config.rl.update(rl)
    return config


@pytest.mark.parametrize(
    ("rl", "devices", "message"),
    [
        (dict(estimator="reinforce_pp", group_size=1),
         1, "config.rl.shared_prefix = True: expected False with rl.group_size = 1"),
        (dict(num_prompts=6, group_size=4, num_minibatches=4),
         1, "config.rl.num_minibatches = 4: expected a divisor of rl.num_prompts = 6 with "
            "rl.shared_prefix=True"),
        (dict(num_prompts=16, group_size=4, num_minibatches=4),
         8, "rl.num_prompts / rl.num_minibatches, = 4 to be a multiple of the 8 devices"),
    ],
    ids=["group-of-one", "minibatch-splits-a-group", "device-splits-a-group"],
)
def test_check_config_refuses_a_prefix_it_cannot_share(rl, devices, message):
    with pytest.raises(ConfigError) as error:
        check_config(shared_config(**rl), num_devices=devices)
    assert message in str(error.value), str(error.value)


def test_check_config_accepts_whole_groups_and_the_settings_carry_the_option():
    config = shared_config(num_prompts=32, group_size=8, num_minibatches=4)
    check_config(config, num_devices=8)
    assert RLSettings.from_config(config).shared_group == 8
    assert RLSettings.from_config(default_config()).shared_group == 0  # off by default
    with pytest.raises(ValueError, match="group_size >= 2"):
        settings_of(estimator="gae", group_size=1, shared_prefix=True)
