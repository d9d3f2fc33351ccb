"""On 8 fake devices each device does 1/8 of the WORK, not only of the results.

For every jitted part of a run (the RL update and ``prepare``, the SFT and reward-model steps, the
sampler, learned-reward scoring) the compiled per-device program is read
(``parallel.compiled_work``): its largest dot must be 1/8 of the one-device program's, its outputs
split over the devices, and its numbers those of one device. The model is tiny (hidden 32, one
layer, vocab 64) so the whole file runs in well under two minutes on 2 cores.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rl_jax import models, parallel
from rl_jax.algorithm import RolloutBatch, TrainBatch, build_rl_step
from rl_jax.algorithm.step import make_update
from rl_jax.learned_reward import LearnedReward
from rl_jax.rollout import Sampler
from rl_jax.train_state import init_state, make_train_step
from rl_jax.trainers.reward_model import make_rm_loss
from rl_jax.trainers.sft import make_sft_loss
from tests.testing_utils import rl_settings, tiny_policy

VOCAB, PROMPT, RESPONSE, ROWS, GROUP = 64, 8, 8, 32, 4
BATCH_SPEC = jax.sharding.PartitionSpec(parallel.BATCH_AXES)


def mesh_of(devices: int, fsdp: int = 1):
    return parallel.make_mesh(fsdp=fsdp, devices=jax.devices()[:devices])


@pytest.fixture(scope="module")
def policy():
    return tiny_policy(VOCAB)


def rl_batch(seed=0):
    rng = np.random.default_rng(seed)
    response_mask = (np.arange(RESPONSE)[None] < rng.integers(1, RESPONSE + 1, (ROWS, 1)))
    response_mask = response_mask.astype(np.float32)
    return {
        "tokens": rng.integers(3, VOCAB, (ROWS, PROMPT + RESPONSE)).astype(np.int32),
        "mask": np.concatenate([np.ones((ROWS, PROMPT), np.float32), response_mask], 1),
        "response_mask": response_mask,
        "sampler_logprobs": rng.uniform(-4.5, -3.8, (ROWS, RESPONSE)).astype(np.float32),
        "scores": rng.integers(0, 2, ROWS).astype(np.float32),
        "truncated": np.zeros(ROWS, np.float32),
    }


def assert_split(one: dict, many: dict, devices: int = 8):
    """The many-device program's largest dot is 1/devices of the one-device one's."""
    assert one["dot_elements"] == devices * many["dot_elements"], (one, many)
    assert many["temp_bytes"] < one["temp_bytes"] / 2, (one, many)


def assert_close_trees(a, b, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol)


def run_rl_parts(policy, mesh, settings, tx):
    """``prepare`` then ``update`` on ``mesh`` as ``run_rl`` sets them up: (work, results)."""
    graphdef, params = nnx.split(policy)
    state, sharding = init_state({"policy": params}, tx, mesh)
    state = jax.device_put(state, sharding)
    rl_step = build_rl_step(settings, tx, graphdef, mesh=mesh, state_sharding=sharding,
                            donate_state=False)
    batch = parallel.shard_batch(RolloutBatch(**rl_batch()), mesh)
    args = (state.params, None, batch, jnp.float32(0.0))
    prepare = rl_step.prepare.lower(*args).compile()  # run as compiled: one compilation
    train, prep_metrics = prepare(*args)
    update = rl_step.update.lower(state, train).compile()
    new_state, metrics = update(state, train)
    prepare_work, update_work = parallel.compiled_work(prepare), parallel.compiled_work(update)
    return (prepare_work, update_work), (train, prep_metrics, new_state, metrics)


@pytest.mark.slow
def test_rl_prepare_and_update_split_the_work(policy, fsdp=2, accum=2):
    """Two epochs of two shuffled minibatches on a 4 x 2 (data x fsdp) mesh, with gradient
    accumulation over 2 minibatches (optax.MultiSteps) inside the sharded update: 1/8 of the
    model's work per device, the parameters of one device."""
    settings = rl_settings(estimator="grpo", group_size=GROUP, temperature=1.0, max_len=RESPONSE,
                           epochs=2, num_minibatches=2)
    tx = optax.adam(1e-2, eps=1e-3)  # eps: float32 noise in a ~0 gradient is no lr-sized step
    if accum > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=accum)
    one_work, one = run_rl_parts(policy, mesh_of(1), settings, tx)
    many_work, many = run_rl_parts(policy, mesh_of(8, fsdp), settings, tx)
    for one_part, many_part in zip(one_work, many_work, strict=True):
        assert_split(one_part, many_part)
    # The LM head's dot of a minibatch: 16 rows x 16 positions (P + R) over 8 devices.
    assert np.prod(many_work[1]["largest_dot"]) * 8 == np.prod(one_work[1]["largest_dot"])
    train, prep_metrics, new_state, metrics = many
    for value in jax.tree.leaves(train):
        assert value.sharding.spec == BATCH_SPEC
    assert_close_trees(train, one[0], 1e-5)
    assert_close_trees(metrics, one[3], 1e-5)
    assert_close_trees(new_state.params, one[2].params, 1e-5)
    before = nnx.split(policy)[1]
    changed = max(float(jnp.abs(a - b).max()) for a, b in
                  zip(jax.tree.leaves(new_state.params), jax.tree.leaves(before), strict=True))
    assert changed > 1e-3  # with accumulation too, 4 minibatches made 2 updates


@pytest.mark.slow
def test_update_without_the_mesh_does_every_row_on_every_device(policy):
    """The negative control: the global shuffle without the constraint gathers the batch."""
    settings = rl_settings(estimator="grpo", group_size=GROUP, temperature=1.0, max_len=RESPONSE,
                           num_minibatches=2, is_correction="token_tis")
    graphdef, params = nnx.split(policy)
    tx = optax.adam(1e-2)
    mesh = mesh_of(8)
    state, sharding = init_state({"policy": params}, tx, mesh)
    batch = rl_batch()
    batch = TrainBatch(tokens=batch["tokens"], mask=batch["mask"],
                       response_mask=batch["response_mask"],
                       sampler_logprobs=batch["sampler_logprobs"],
                       old_logprobs=batch["sampler_logprobs"], advantages=batch["response_mask"])
    batch = parallel.shard_batch(batch, mesh)
    state = jax.device_put(state, sharding)
    work = {}
    constrained = build_rl_step(settings, tx, graphdef, mesh=mesh, state_sharding=sharding,
                                donate_state=False).update
    # What build_rl_step never builds: the update without its minibatches held to the mesh.
    loss = build_rl_step(settings, None, graphdef).loss
    unconstrained = parallel.data_parallel_step(make_update(settings, tx, loss), mesh, sharding,
                                                donate_state=False)
    for name, step in (("unconstrained", unconstrained), ("constrained", constrained)):
        work[name] = parallel.compiled_work(step.lower(state, batch))
    assert_split(work["unconstrained"], work["constrained"])


@pytest.mark.slow
def test_sft_and_reward_model_steps_split_the_work(policy):
    graphdef, params = nnx.split(policy)
    reward_model = models.RewardModel.from_policy(policy, rngs=nnx.Rngs(1))
    reward_graphdef, reward_params = nnx.split(reward_model)
    rng = np.random.default_rng(1)
    tokens = rng.integers(3, VOCAB, (ROWS, 16)).astype(np.int32)
    mask = np.ones((ROWS, 16), np.float32)
    sft_batch = {"tokens": tokens, "mask": mask, "loss_mask": mask}
    rm_batch = {"tokens": tokens, "mask": mask,
                "ranks": np.tile(np.arange(2, dtype=np.int32), (ROWS // 2, 1)),
                "present": np.ones((ROWS // 2, 2), np.float32),
                "margin": np.zeros(ROWS // 2, np.float32)}
    parts = [("policy", params, make_sft_loss(graphdef), sft_batch),
             ("reward", reward_params, make_rm_loss(reward_graphdef, "pairwise"), rm_batch)]
    tx = optax.adam(1e-2, eps=1e-3)
    for name, part_params, loss_fn, batch in parts:
        results, work = [], []
        for mesh in (mesh_of(1), mesh_of(8)):
            state, sharding = init_state({name: part_params}, tx, mesh)
            state = jax.device_put(state, sharding)
            step = parallel.data_parallel_step(make_train_step(loss_fn, tx), mesh, sharding,
                                               donate_state=False)
            arrays = parallel.shard_batch(batch, mesh)
            compiled = step.lower(state, arrays).compile()
            work.append(parallel.compiled_work(compiled))
            results.append(compiled(state, arrays))
        assert_split(*work)
        assert_close_trees(results[1], results[0], 1e-5)


def make_sampler(policy, mesh):
    """A sampler on ``mesh`` and the policy's params placed as the trainer places them."""
    sampler = Sampler.from_model(policy, eos_ids=(2,), pad_id=0, cache_stages=2, mesh=mesh)
    params = nnx.state(policy)
    return sampler, jax.device_put(params, parallel.param_sharding(params, mesh, min_size=1))


@pytest.mark.slow
@pytest.mark.parametrize("prompts", [8, 3], ids=["divides", "padded"])
def test_sampler_splits_the_rows(policy, prompts):
    """8 prompts x 4 samples: each device decodes 4 rows; 3 x 2 = 6 rows are padded to 8 (one
    extra prompt) and give the one-device tokens."""
    rng = np.random.default_rng(2)
    token_lists = [rng.integers(3, VOCAB, rng.integers(2, 9)).tolist() for _ in range(prompts)]
    n = 4 if prompts == 8 else 2
    options = dict(n=n, max_new_tokens=6, temperature=1.0)
    key = jax.random.key(3)
    outs, work = [], []
    for mesh in (mesh_of(1), mesh_of(8, fsdp=2)):
        sampler, params = make_sampler(policy, mesh)
        work.append(parallel.compiled_work(sampler.lower(params, token_lists, key, **options)))
        outs.append(sampler.generate(params, token_lists, key, **options))
    if prompts == 8:
        assert_split(*work)
    else:  # the prefill of 4 (padded) prompts does not split over 8 devices; the decode does
        assert work[1]["dot_elements"] < work[0]["dot_elements"]
    one, many = outs
    assert many.response_tokens.shape == (prompts * n, 6)
    np.testing.assert_array_equal(many.response_tokens, one.response_tokens)
    np.testing.assert_array_equal(many.response_mask, one.response_mask)
    np.testing.assert_allclose(many.response_logprobs, one.response_logprobs, atol=1e-5)


def test_sampler_reads_the_trainers_params_without_a_copy(policy):
    mesh = mesh_of(8, fsdp=4)
    sampler, params = make_sampler(policy, mesh)
    lowered = sampler.lower(params, [[3, 4, 5]] * 8, jax.random.key(0), n=2, max_new_tokens=4)
    # The compiled program takes the params with the sharding they have (nothing moves in).
    in_shardings = jax.tree.leaves(lowered.compile().input_shardings[0][0])
    assert in_shardings == [x.sharding for x in jax.tree.leaves(params)]


def test_reward_scoring_splits_the_rows(policy):
    reward_model = models.RewardModel.from_policy(policy, rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(reward_model)
    rng = np.random.default_rng(4)
    tokens = rng.integers(3, VOCAB, (ROWS, 16)).astype(np.int32)
    mask = (np.arange(16)[None] < rng.integers(2, 17, (ROWS, 1))).astype(np.int32)
    scores, work = [], []
    for mesh in (mesh_of(1), mesh_of(8)):
        reward = LearnedReward(graphdef, params, 0.5, 2.0, mesh=mesh)
        work.append(parallel.compiled_work(reward.lower(tokens, mask).compile()))
        scores.append(reward(tokens, mask))
    assert_split(*work)
    np.testing.assert_allclose(scores[1], scores[0], atol=1e-5)
    # Rows that do not divide by 8 are padded and dropped: same scores as the first 13 rows.
    np.testing.assert_allclose(reward(tokens[:13], mask[:13]), scores[0][:13], atol=1e-5)
    placed, rows = parallel.place_rows((tokens[:13],), mesh_of(8))
    assert rows == 13 and placed[0].shape == (16, 16)
    assert placed[0].sharding.spec == BATCH_SPEC


@pytest.mark.parametrize("fsdp", [2, 4])
def test_fsdp_shrinks_the_parameter_bytes_per_device(policy, fsdp):
    _, params = nnx.split(policy)
    total = sum(x.nbytes for x in jax.tree.leaves(params))
    placed = jax.device_put(params, parallel.param_sharding(params, mesh_of(8, fsdp), min_size=1))
    per_device = sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(placed))
    assert per_device == total // fsdp
