r"""Base accuracy of SmolLM2-135M-Instruct on candidate RL tasks (to pick one whose groups carry
signal: accuracy between ~5% and 60%).

    nice -n 10 python experiments/smollm2/base_accuracy.py --n=128 \
        > experiments/smollm2/results/base_accuracy.txt

Prompts are chat-formatted (``tokenizer.apply_chat_template``, the GGUF's ChatML template and its
default system prompt); greedy and sampled (temperature 1) replies of up to --max_new_tokens
tokens, float32, scored by the task's reward; the standard error is binomial, sqrt(p(1-p)/n).
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from rl_jax import data, models, rewards
from rl_jax.rollout import Sampler

# name -> (task name, kwargs, reward name)
CANDIDATES = {
    "add_1d": ("word_arithmetic", dict(ops=("+",), min_value=0, max_value=9), "last_number"),
    "add_2d": ("word_arithmetic", dict(ops=("+",), min_value=10, max_value=99), "last_number"),
    "addsub_20": ("word_arithmetic", dict(ops=("+", "-"), min_value=0, max_value=20),
                  "last_number"),
    "mul_1d": ("word_arithmetic", dict(ops=("*",), min_value=2, max_value=9), "last_number"),
    "countdown3": ("countdown", dict(num_numbers=3), "countdown"),
}

_GGUF = flags.DEFINE_string("gguf", "~/.cache/rl_jax/SmolLM2-135M-Instruct.Q4_1.gguf",
                            "The model file.")
_N = flags.DEFINE_integer("n", 128, "Held-out prompts per task.")
_NEW = flags.DEFINE_integer("max_new_tokens", 48, "Tokens per reply, at most.")
_TASKS = flags.DEFINE_list("tasks", list(CANDIDATES), "Candidate tasks to measure.")
_SHOW = flags.DEFINE_integer("show", 3, "Replies to print per task.")


def chat_prompts(tokenizer, examples) -> list[list[int]]:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": ex.prompt}], add_generation_prompt=True, tokenize=False
        )
        for ex in examples
    ]
    return [tokenizer.encode(t, add_special_tokens=False) for t in texts]


def main(argv):
    del argv
    model, tokenizer = models.load_pretrained(os.path.expanduser(_GGUF.value), dtype="float32")
    sampler = Sampler.from_model(
        model, eos_ids=(tokenizer.eos_token_id,), pad_id=tokenizer.pad_token_id
    )
    params = nnx.state(model)
    print(f"{'task':12s} {'greedy':>14s} {'sampled T=1':>14s}  mean reply tokens (greedy)")
    for name in _TASKS.value:
        task_name, kwargs, reward = CANDIDATES[name]
        examples = data.make_task(task_name, seed=0, **kwargs).eval_set(_N.value)
        if task_name == "countdown":
            examples = [
                data.Example(
                    f"Using the numbers {', '.join(map(str, ex.info['numbers']))} once each "
                    f"and + - * /, write an expression equal to {ex.info['target']}. "
                    "Answer with the expression only.",
                    ex.target, ex.answer, ex.info,
                )
                for ex in examples
            ]
        prompts = chat_prompts(tokenizer, examples)
        fn = rewards.get_reward_fn(reward)
        row = []
        for greedy in (True, False):
            start = time.perf_counter()
            out = sampler.generate(
                params, prompts, jax.random.key(1), max_new_tokens=_NEW.value,
                greedy=greedy,
            )
            toks, mask = np.asarray(out.response_tokens), np.asarray(out.response_mask)
            texts = tokenizer.batch_decode(
                [[int(t) for t, m in zip(r, ms, strict=True) if m and t != tokenizer.eos_token_id]
                 for r, ms in zip(toks, mask, strict=True)]
            )
            score = fn(texts, examples)
            p = float(score.mean())
            se = float(np.sqrt(p * (1 - p) / len(score)))
            row.append((p, se, float(mask.sum(1).mean()), time.perf_counter() - start, texts))
        (pg, sg, lg, tg, texts), (ps, ss, _, ts, _) = row
        print(f"{name:12s} {pg:6.3f}+-{sg:.3f}  {ps:6.3f}+-{ss:.3f}  {lg:5.1f}"
              f"   ({tg:.0f} s, {ts:.0f} s)", flush=True)
        for ex, t in list(zip(examples, texts, strict=True))[: _SHOW.value]:
            print(f"    {ex.prompt!r} [{ex.answer}] -> {t!r}")


if __name__ == "__main__":
    app.run(main)
