"""The text around the model: chat templates, EOS and pad ids, answer votes, chunked evaluation."""

from pathlib import Path

import numpy as np
import pytest

from rl_jax import data, models
from rl_jax.config import ConfigError, check_config, default_config
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
    config = default_config()
    config.task.chat_template = chat_template
    config.task.system_prompt = system_prompt
    return setup.Context(config=config, workdir="", tokenizer=tokenizer, task=None,
                         eval_examples=[], policy=None, graphdef=None, sampler=None,
                         eos_ids=tuple(eos_ids))


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
                    "(python experiments/fetch_model.py puts it there)")
def test_real_smollm2_chat_template():
    tokenizer = models.load_gguf_tokenizer(REAL_GGUF)
    ctx = context(tokenizer, chat_template=True, system_prompt="Reply with a number.")
    ids = ctx.encode_prompts([data.Example("What is 2 + 3?", "", "")])[0]
    assert ids == reference_ids(tokenizer, "What is 2 + 3?", "Reply with a number.")
    assert tokenizer.decode(ids) == ("<|im_start|>system\nReply with a number.<|im_end|>\n"
                                     "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                                     "<|im_start|>assistant\n")
