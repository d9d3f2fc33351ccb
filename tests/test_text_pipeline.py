"""The text around the model: chat templates, EOS and pad ids, answer votes, chunked evaluation."""

from pathlib import Path

import numpy as np
import pytest

from rl_jax import data, models, rewards
from rl_jax.config import ConfigError, check_config, default_config
from rl_jax.settings import RunSettings, TaskSettings
from rl_jax.trainers import setup

REAL_GGUF = Path.home() / ".cache" / "rl_jax" / "SmolLM2-135M-Instruct.Q4_1.gguf"
# ChatML (SmolLM2, Qwen) with the tokenizer's own special tokens as <|im_start|> / <|im_end|>.
CHATML = (
    "{% for message in messages %}"
    "{{ bos_token + message['role'] + '\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ bos_token + 'assistant\n' }}{% endif %}"
)
# Llama 3 style: the template itself writes one BOS at the start.
BOS_FIRST = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '[' + message['role'] + '] ' + message['content'] + eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '[assistant] ' }}{% endif %}"
)
TEXTS = ["system user assistant: what is 12 + 30? The answer is 42.", "Question: a b c\nAnswer:\n"]


def chat_tokenizer(template: str | None = CHATML):
    """A byte-level BPE (pad 0, bos 1, eos 2) with ``template`` as its chat template."""
    tokenizer = models.train_bpe_tokenizer(TEXTS * 20, 300)
    tokenizer.chat_template = template
    return tokenizer


def context(tokenizer, *, chat_template: bool, system_prompt: str = "", eos_ids=(2,)):
    """A Context with only what encoding and decoding read."""
    return setup.Context(workdir="", tokenizer=tokenizer, task=None, eval_examples=[],
                         policy=None, graphdef=None, sampler=None, eos_ids=tuple(eos_ids),
                         chat_template=chat_template, system_prompt=system_prompt)


def reference_ids(tokenizer, prompt: str, system_prompt: str = "") -> list[int]:
    """transformers' own templated, tokenized prompt (the reference)."""
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": prompt})
    out = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("system_prompt", ["", "Answer with a number."])
@pytest.mark.parametrize("template", [CHATML, BOS_FIRST])
def test_chat_prompt_ids_match_transformers(template, system_prompt):
    tokenizer = chat_tokenizer(template)
    ctx = context(tokenizer, chat_template=True, system_prompt=system_prompt)
    examples = [data.Example(prompt=t, target="", answer="") for t in TEXTS]
    encoded = ctx.encode_prompts(examples)
    for ids, ex in zip(encoded, examples, strict=True):
        assert ids == reference_ids(tokenizer, ex.prompt, system_prompt)
        assert ids[0] == tokenizer.bos_token_id and ids[1] != tokenizer.bos_token_id  # one BOS
        assert ids.count(tokenizer.eos_token_id) == 1 + bool(system_prompt)  # one per message
        assert system_prompt in tokenizer.decode(ids) and ex.prompt in tokenizer.decode(ids)
    # Without the switch: BOS and the plain prompt, no template.
    plain = context(tokenizer, chat_template=False).encode_prompts(examples)
    assert plain[0] == [1] + tokenizer.encode(TEXTS[0], add_special_tokens=False)


def test_a_tokenizer_without_chat_template_is_an_error_naming_the_switch():
    ctx = context(chat_tokenizer(None), chat_template=True)
    with pytest.raises(ValueError, match=r"config\.task\.chat_template = True.*no chat template"):
        ctx.encode_prompts([data.Example("hi", "", "")])


def test_chat_template_fields_are_checked():
    config = default_config()
    config.task.chat_template = True  # a fresh model's trained tokenizer has no template
    config.rollout.extra_eos_ids = (2, -1)
    with pytest.raises(ConfigError) as error:
        check_config(config)
    message = str(error.value)
    assert "config.task.chat_template = True: expected False without model.path" in message
    assert "config.rollout.extra_eos_ids = (2, -1): expected a tuple of token ids" in message
    config = default_config()
    config.task.system_prompt = "Be brief."
    with pytest.raises(ConfigError, match=r"task\.system_prompt = 'Be brief\.': expected ''"):
        check_config(config)


def test_rewards_read_the_reply_only():
    """A templated prompt's response, ended by the end-of-turn token, decodes to the reply alone,
    and the reward scores it."""
    tokenizer = chat_tokenizer()
    ctx = context(tokenizer, chat_template=True)
    reply = tokenizer.encode("42", add_special_tokens=False)
    eot = tokenizer.eos_token_id
    tokens = np.array([reply + [eot, 0, 0], [eot] + [0] * (len(reply) + 2)])
    mask = np.array([[1] * (len(reply) + 1) + [0, 0], [1] + [0] * (len(reply) + 2)])
    texts = ctx.decode_responses(tokens, mask)
    assert texts == ["42", ""]
    example = data.Example(prompt="what is 12 + 30?", target="42", answer="42")
    from rl_jax import rewards

    assert rewards.exact_match_reward(texts, [example, example]).tolist() == [1.0, 0.0]


@pytest.mark.skipif(not REAL_GGUF.is_file(), reason=f"{REAL_GGUF} is absent "
                    "(python tools/fetch_model.py puts it there)")
def test_real_smollm2_chat_template():
    tokenizer = models.load_gguf_tokenizer(REAL_GGUF)
    ctx = context(tokenizer, chat_template=True, system_prompt="Reply with a number.")
    ids = ctx.encode_prompts([data.Example("What is 2 + 3?", "", "")])[0]
    assert ids == reference_ids(tokenizer, "What is 2 + 3?", "Reply with a number.")
    assert tokenizer.decode(ids) == ("<|im_start|>system\nReply with a number.<|im_end|>\n"
                                     "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                                     "<|im_start|>assistant\n")


def test_eos_ids_are_the_union_of_every_source(tmp_path):
    assert setup.resolve_eos_ids(2, (2, 5), [7, 2], (9,)) == (2, 5, 7, 9)
    assert setup.resolve_eos_ids(None, None, 4) == (4,)
    with pytest.raises(ValueError, match=r"config\.rollout\.extra_eos_ids = \(\)"):
        setup.resolve_eos_ids(None, None, None, ())
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [151645, 151643]}')
    assert setup.generation_config_eos_ids(str(tmp_path)) == (151645, 151643)
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": 3}')
    assert setup.generation_config_eos_ids(str(tmp_path)) == (3,)
    assert setup.generation_config_eos_ids("") == ()


def test_pad_id_of_a_tokenizer_without_one_is_its_first_eos():
    tokenizer = chat_tokenizer()
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    assert setup.resolve_pad_id(tokenizer, (2, 7)) == 2 and tokenizer.pad_token_id == 2
    assert setup.resolve_pad_id(chat_tokenizer(), (2,)) == 0  # a pad token of its own stays


def test_majority_votes_over_extracted_answers():
    """Texts that all differ but give the same number agree; texts without one do not vote."""
    from rl_jax import rewards
    from rl_jax.trainers.evaluation import majority_correct

    texts = ["So it is 7.\n#### 7", "5 apples\n#### 5", "#### 5.0", "I don't know", "I don't know"]
    example = data.Example("q", "", "5")
    correct = rewards.gsm8k_reward(texts, [example] * 5)
    answers = rewards.extract_answers("gsm8k", texts)
    assert answers[1] == answers[2] and answers[3] is None
    assert majority_correct(answers, correct) == 1.0  # 5 (two votes) beats 7 (one)
    # A vote over whole texts would pick "I don't know" (two copies), which is wrong.
    assert majority_correct(texts, correct) == 0.0
    assert majority_correct(answers[:1] + answers[3:] + answers[1:2], correct[[0, 3, 4, 1]]) == 0.0
    assert majority_correct([None, None], np.ones(2)) == 0.0  # no answer: wrong
    spaced = rewards.extract_answers("countdown", ["(1 + 2) * 3", "(1+2)*3", "  "])
    assert spaced == ["(1+2)*3", "(1+2)*3", None]


def _tiny_checkpoint(path, tokenizer):
    from flax import nnx

    config = models.tiny_config("llama", vocab_size=len(tokenizer), hidden_size=16,
                                intermediate_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                                max_position_embeddings=128, bos_token_id=1, eos_token_id=2)
    model = models.CausalLM(config, rngs=nnx.Rngs(0))
    models.save_pretrained(model, tokenizer, path)
    return model


@pytest.mark.slow
def test_a_real_checkpoint_with_two_generation_eos_ids_and_no_pad(tmp_path):
    """A tokenizer without a pad token and a generation config with two EOS ids: the sampler pads
    with the first EOS, stops at each EOS id, and RL counts a response ending in any as finished;
    chunked evaluation gives the metrics of one call."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from rl_jax.rollout import Sampler
    from rl_jax.trainers import evaluation, rl

    tokenizer = chat_tokenizer()
    tokenizer.pad_token = None
    model = _tiny_checkpoint(tmp_path / "hf", tokenizer)
    examples = data.make_task("addition", min_value=0, max_value=99, seed=0).batch(0, 2)
    # The first token the model picks after each prompt (one forward each): make those EOS ids.
    first = []
    for ex in examples:
        ids = jnp.asarray([setup.chat_prompt_ids(tokenizer, ex.prompt)])
        logits = model(ids, jnp.arange(ids.shape[1])[None], jnp.ones_like(ids))[0]
        first.append(int(jnp.argmax(logits[0, -1])))
    (tmp_path / "hf" / "generation_config.json").write_text(
        f'{{"eos_token_id": [2, {first[0]}]}}')
    config = default_config()
    config.stages = ("rl",)
    config.model.path = str(tmp_path / "hf")
    config.task.chat_template = True
    config.task.kwargs.max_value = 99
    config.task.kwargs.min_value = 0
    config.rollout.extra_eos_ids = (first[1],)
    config.rollout.max_new_tokens = 6
    config.rollout.temperature = 1e-4  # as good as greedy
    config.rl.num_prompts, config.rl.group_size = 2, 2
    config.rl.eos_trick = True  # a response without EOS would score rl.missing_eos_score = -1
    config.eval.num_examples = 8
    check_config(config)
    settings = RunSettings.from_config(config)
    ctx = setup.build_context(settings, str(tmp_path / "work"))
    eos = tuple(dict.fromkeys((2, *first)))
    assert ctx.eos_ids == eos and ctx.sampler.eos_ids == eos
    assert ctx.tokenizer.pad_token_id == 2 and ctx.sampler.pad_id == 2
    # The same sampler with one decode loop to compile: a faster test.
    one_loop = Sampler.from_model(ctx.policy, eos_ids=eos, pad_id=2, cache_stages=1)
    ctx = dataclasses.replace(ctx, sampler=one_loop)
    params = nnx.state(ctx.policy)
    round_, _ = rl.sample_round(ctx, settings.rl.rollout, params, 0, jax.random.key(1))
    assert round_.response_mask.sum(1).tolist() == [1, 1, 1, 1]  # each stopped at its EOS id
    assert round_.texts == [""] * 4  # the EOS is not in the text the rewards read
    assert round_.scores.tolist() == [0.0] * 4  # finished: the missing-EOS score is not applied

    # Chunked evaluation, rl.num_prompts * rl.group_size = 4 rows a sampler call, against one call.
    calls = []

    class Counted(Sampler):
        def generate(self, params, prompts, *args, **kwargs):
            calls.append(len(prompts) * kwargs.get("n", 1))
            return super().generate(params, prompts, *args, **kwargs)

    # Stops only at id 2, not at the tokens this model picks first: texts that are not empty.
    counted = Counted.from_model(ctx.policy, eos_ids=(2,), pad_id=2, cache_stages=1)
    ctx = dataclasses.replace(ctx, sampler=counted)
    greedy = []
    for part in evaluation.eval_chunks(8, 4):
        out = counted.generate(params, ctx.encode_prompts(ctx.eval_examples[part]),
                               jax.random.key(0), max_new_tokens=6, greedy=True)
        greedy += ctx.decode_responses(out.response_tokens, out.response_mask)
    # Half the answers are the greedy texts, so the metrics are not all 0 (nor all 1).
    pairs = enumerate(zip(ctx.eval_examples, greedy, strict=True))
    ctx.eval_examples = [data.Example(ex.prompt, "", text.strip() if i % 2 == 0 else "no")
                         for i, (ex, text) in pairs]
    calls.clear()
    chunked = evaluation.evaluate(ctx, params, jax.random.key(2), settings.evaluation, k=2)
    assert calls == [4, 4] + [4] * 4  # greedy 4 + 4 prompts, then 2 prompts x 2 samples, 4 times
    # Samples at temperature 1e-4 are the greedy texts; empty ones have no answer and no vote.
    voted = np.mean([i % 2 == 0 and text.strip() != "" for i, text in enumerate(greedy)])
    assert voted > 0, greedy
    assert chunked == pytest.approx({"pass@1": 0.5, "pass@2": 0.5, "maj@2": voted,
                                     "length": chunked["length"], "reward/exact_match": 0.5})
    one_call = dataclasses.replace(settings.evaluation, rows_per_call=64 * 2)
    assert evaluation.evaluate(ctx, params, jax.random.key(2), one_call) == {
        k: v for k, v in chunked.items() if "@2" not in k}
    assert calls[6:] == [8]  # one call


def test_eval_chunks():
    from rl_jax.trainers.evaluation import eval_chunks

    assert eval_chunks(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert eval_chunks(3, 8) == [slice(0, 3)]


def test_gsm8k_grpo_defaults_fit_the_fixture_and_errors_name_the_field(tmp_path):
    from configs import gsm8k_grpo

    config = gsm8k_grpo.get_config()
    task = setup.build_task(TaskSettings.from_config(config))  # the shipped 200-question fixture
    question = task.eval_set(config.eval.num_examples)[0].prompt
    assert config.task.chat_template and "####" in config.task.system_prompt
    assert not question.startswith("Question:")  # the user's turn is the question alone
    plain = gsm8k_grpo.get_config("plain")
    assert not plain.task.chat_template and not plain.task.system_prompt
    plain_task = setup.build_task(TaskSettings.from_config(plain))
    assert plain_task.eval_set(1)[0].prompt == f"Question: {question}\nAnswer:\n"
    config.task.kwargs.eval_size = 256
    with pytest.raises(ValueError, match=r"^config\.task\.kwargs\.eval_size = 256: expected < "
                       r"200 rows in .*gsm8k_200\.jsonl$"):
        setup.build_task(TaskSettings.from_config(config))
    plain.eval.num_examples = 51
    with pytest.raises(ValueError, match=r"^config\.eval\.num_examples = 51: .*<= 50 held-out"):
        setup.build_context(RunSettings.from_config(plain), str(tmp_path))


def test_sft_examples_are_the_templated_prompt_then_target_and_eos():
    import types

    from rl_jax.trainers.sft import sft_batch

    tokenizer = chat_tokenizer()
    ctx = context(tokenizer, chat_template=True, system_prompt="Be brief.")
    ctx.policy = types.SimpleNamespace(config=types.SimpleNamespace(max_position_embeddings=128))
    example = data.Example(prompt="what is 12 + 30?", target="42", answer="42")
    batch = sft_batch(ctx, [example])
    prompt = reference_ids(tokenizer, example.prompt, "Be brief.")
    target = tokenizer.encode("42", add_special_tokens=False) + [tokenizer.eos_token_id]
    length = len(prompt) + len(target)
    assert batch["tokens"][0, :length].tolist() == prompt + target
    assert batch["loss_mask"][0].tolist() == [0] * len(prompt) + [1] * len(target) + [0] * (
        batch["tokens"].shape[1] - length)


def test_every_reward_has_an_answer_for_majority_voting():
    """maj@k votes over ``extract_answers``: each reward must name what a completion answers."""
    assert set(rewards.ANSWER_FNS) == set(rewards.REWARD_FNS)
    answers = rewards.extract_answers("last_number", ["13 + 8 = 21", "It is 21.0", "none"])
    assert answers[0] == answers[1] and answers[2] is None  # numeric, as the reward compares
    assert rewards.extract_answers("final_answer", ["3+4>7", "7", ">"]) == ["7", "7", None]
