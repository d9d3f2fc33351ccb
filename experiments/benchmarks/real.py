r"""Speed on the real model (SmolLM2-135M-Instruct, float32, CPU): rl_jax against transformers and
TRL, side by side in one process, alternating, median of --repeats.

    pip install -e '.[bench]'      # TRL (torch and transformers come with it)
    nice -n 10 python experiments/benchmarks/real.py > experiments/benchmarks/results/real.txt

(a) Sampling: rl_jax's jitted KV-cache sampler against transformers' ``generate`` on the same
    chat-formatted prompts, batch --sample_batches, --new_tokens new tokens each (EOS ignored:
    every row decodes all of them), temperature 1; transformers with each of --torch_threads torch
    threads. Also rl_jax's first-call time (trace + compile + run) and the same first call in two
    fresh processes sharing JAX's persistent compilation cache
    (``jax_compilation_cache_dir``): the first fills it, the second reads it.
(b) One GRPO step: rl_jax (sample, score on the host, old log-probs, one AdamW update over the
    whole batch) against TRL's ``GRPOTrainer`` (one generation batch, one optimizer step) on the
    same model, prompts, group size and completion length (min = max new tokens, so both train on
    the same number of tokens), no KL term on either side; each side's time split.
    ``--shared_prefix=both`` adds rl_jax's shared-prefix step (``rl.shared_prefix``), alternating
    with the plain one; ``--torch_threads=`` (empty) leaves TRL out.
(c) Train-step MFU: ``6 * params * tokens / update seconds`` against this CPU's float32 matmul rate,
    measured here (``jnp.dot`` of 2048 x 2048 float32 matrices, median of 5).

Both libraries use float32. The model is the GGUF dequantised to float32: rl_jax reads it with
``rl_jax.models.load_pretrained``, transformers with ``from_pretrained(dir, gguf_file=...)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from absl import app, flags

GGUF = Path.home() / ".cache" / "rl_jax" / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTION = "What is {a} + {b}? Answer with the number only."

_GGUF = flags.DEFINE_string("gguf", str(GGUF), "The model file.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs of each measurement (median).")
_SAMPLE_BATCHES = flags.DEFINE_list("sample_batches", ["16", "64"], "Sampling batch sizes.")
_NEW = flags.DEFINE_integer("new_tokens", 64, "New tokens per sampled row.")
_THREADS = flags.DEFINE_list("torch_threads", ["1", "2"], "torch thread counts to try.")
_PROMPTS = flags.DEFINE_integer("num_prompts", 8, "GRPO: prompts per step.")
_GROUP = flags.DEFINE_integer("group_size", 8, "GRPO: samples per prompt.")
_STEP_NEW = flags.DEFINE_integer("step_new_tokens", 64, "GRPO: completion tokens per sample.")
_SHARED = flags.DEFINE_enum("shared_prefix", "off", ["off", "on", "both"],
                            "GRPO: rl_jax's step with rl.shared_prefix (each prompt's forward "
                            "once per group); both: the plain and the shared step alternately.")
_PARTS = flags.DEFINE_list("parts", ["compile", "sampling", "grpo", "matmul"], "What to run.")
_PROBE = flags.DEFINE_string("compile_probe", "", "internal: time one first call with this cache.")


def chat_prompts(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    """``n`` chat-formatted addition questions (the model's template, default system prompt)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ids = []
    for _ in range(n):
        a, b = (int(x) for x in rng.integers(10, 100, size=2))
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": QUESTION.format(a=a, b=b)}],
            add_generation_prompt=True, tokenize=False,
        )
        ids.append(tokenizer.encode(text, add_special_tokens=False))
    return ids


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- rl_jax ---------------------------------------------------------------------------------------


def load_rl_jax():
    from rl_jax import models

    return models.load_pretrained(_GGUF.value, dtype="float32")


def rl_jax_sampler(model, pad_id: int):
    """A sampler for ``model`` (no EOS: all rows full length) and the weights it samples."""
    from flax import nnx

    from rl_jax.rollout import Sampler

    return Sampler.from_model(model, eos_ids=(), pad_id=pad_id), nnx.state(model)


def rl_jax_sample(sampler, params, prompts, new_tokens: int, seed: int = 0):
    import jax

    out = sampler.generate(params, prompts, jax.random.key(seed), max_new_tokens=new_tokens)
    jax.block_until_ready(out.response_tokens)
    return out


def compile_probe(cache_dir: str) -> None:
    """In a fresh process: the first sampler call (batch 16) with the persistent cache at
    ``cache_dir``; prints JSON."""
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    model, tokenizer = load_rl_jax()
    sampler, params = rl_jax_sampler(model, tokenizer.pad_token_id)
    prompts = chat_prompts(tokenizer, 16)
    start = time.perf_counter()
    rl_jax_sample(sampler, params, prompts, _NEW.value)
    first = time.perf_counter() - start
    start = time.perf_counter()
    rl_jax_sample(sampler, params, prompts, _NEW.value, seed=1)
    second = time.perf_counter() - start
    print(json.dumps({"first_call_s": first, "second_call_s": second}))


def run_probe(cache_dir: str) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    result = subprocess.run(
        [sys.executable, __file__, f"--compile_probe={cache_dir}", f"--gguf={_GGUF.value}",
         f"--new_tokens={_NEW.value}"],
        capture_output=True, text=True, env=env, check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


# --- transformers / TRL ---------------------------------------------------------------------------


def load_hf():
    import torch
    import transformers

    path = Path(_GGUF.value)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    # A GGUF-loaded model counts as quantised, and transformers' Trainer refuses to train one:
    # copy its (dequantised, float32) weights into a plain model of the same config.
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain.eval(), tokenizer


def hf_sample(model, tokenizer, prompts, new_tokens: int):
    import torch

    tokenizer.padding_side = "left"
    batch = tokenizer.pad({"input_ids": prompts}, return_tensors="pt")
    with torch.no_grad():
        return model.generate(
            **batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=True,
            temperature=1.0, top_k=0, top_p=1.0, pad_token_id=tokenizer.pad_token_id,
        )


# --- (b) one GRPO step ----------------------------------------------------------------------------


class RlJaxStep:
    """rl_jax's GRPO step, as the RL loop runs it: sample, score on the host, ``prepare`` (old
    log-probs, advantages), ``update`` (one AdamW step over the whole batch)."""

    def __init__(self, model, tokenizer, prompts, answers, shared_prefix: bool = False):
        import jax
        import jax.numpy as jnp
        import optax
        from flax import nnx

        from rl_jax import parallel
        from rl_jax.algorithm import RLSettings, build_rl_step
        from rl_jax.config import default_config
        from rl_jax.train_state import TrainState

        self.tokenizer, self.prompts, self.answers = tokenizer, prompts, answers
        graphdef, params = nnx.split(model)
        self.num_params = sum(x.size for x in jax.tree.leaves(params))
        self.sampler, _ = rl_jax_sampler(model, tokenizer.pad_token_id)
        settings = dataclasses.replace(
            RLSettings.from_config(default_config()),
            estimator="grpo", group_size=_GROUP.value, temperature=1.0, kl_loss_coef=0.0,
            max_len=_STEP_NEW.value, num_minibatches=1, shared_prefix=shared_prefix,
        )
        tx = optax.adamw(1e-6)
        self.mesh = parallel.make_mesh()
        policy = {"policy": jax.tree.map(jnp.copy, params)}  # its own: update donates it
        state = TrainState(jnp.zeros((), jnp.int32), policy, tx.init(policy))
        sharding = parallel.param_sharding(state, self.mesh)
        self.state = jax.device_put(state, sharding)
        self.rl_step = build_rl_step(settings, tx, graphdef, mesh=self.mesh,
                                     state_sharding=sharding)
        self.calls = 0

    def __call__(self) -> dict[str, float]:
        import jax
        import jax.numpy as jnp
        import numpy as np

        from rl_jax import parallel, rewards
        from rl_jax.algorithm import RolloutBatch

        t0 = time.perf_counter()
        out = self.sampler.generate(
            self.state.params["policy"],
            self.prompts, jax.random.key(self.calls), n=_GROUP.value,
            max_new_tokens=_STEP_NEW.value,
        )
        jax.block_until_ready(out.response_tokens)
        self.calls += 1
        t1 = time.perf_counter()
        texts = self.tokenizer.batch_decode(np.asarray(out.response_tokens))
        examples = [ex for ex in self.answers for _ in range(_GROUP.value)]
        scores = rewards.last_number_reward(texts, examples)
        response_tokens = np.asarray(out.response_tokens)
        batch = RolloutBatch(
            tokens=np.concatenate([np.asarray(out.prompt_tokens), response_tokens], 1),
            mask=np.concatenate(
                [np.asarray(out.prompt_mask), np.asarray(out.response_mask)], 1
            ).astype(np.float32),
            response_mask=np.asarray(out.response_mask, np.float32),
            sampler_logprobs=np.asarray(out.response_logprobs),
            scores=scores,
            truncated=np.zeros(len(scores), np.float32),  # read only by overlong filtering
        )
        t2 = time.perf_counter()
        arrays = parallel.shard_batch(batch, self.mesh)
        train_batch, _ = self.rl_step.prepare(self.state.params, None, arrays, jnp.float32(0.0))
        jax.block_until_ready(train_batch)
        t3 = time.perf_counter()
        self.state, metrics = self.rl_step.update(self.state, train_batch)
        jax.block_until_ready(metrics)
        t4 = time.perf_counter()
        self.tokens = int(batch.mask.sum())
        return {"total": t4 - t0, "generation": t1 - t0, "scoring": t2 - t1,
                "old logprobs": t3 - t2, "update": t4 - t3}


class TrlStep:
    """TRL's ``GRPOTrainer``: one generation batch of ``num_prompts * group_size`` completions and
    one optimizer step per ``train`` step; generation and scoring timed by wrapping its methods."""

    def __init__(self, model, tokenizer, examples, workdir: str):
        import datasets
        from transformers import TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from rl_jax import data, rewards

        answer_of = {ex.prompt: ex.answer for ex in examples}

        def last_number(prompts, completions, **kwargs):
            """The same reward as rl_jax's: the question is the user's message."""
            answers = [data.Example("", "", answer_of[p[-1]["content"]]) for p in prompts]
            texts = [c[-1]["content"] for c in completions]
            return [float(x) for x in rewards.last_number_reward(texts, answers)]

        n = _PROMPTS.value * _GROUP.value
        args = GRPOConfig(
            output_dir=workdir, per_device_train_batch_size=n, gradient_accumulation_steps=1,
            num_generations=_GROUP.value, max_completion_length=_STEP_NEW.value,
            generation_kwargs={"min_new_tokens": _STEP_NEW.value}, temperature=1.0,
            top_k=0, top_p=1.0, learning_rate=1e-6, beta=0.0, num_iterations=1,
            max_steps=10_000, logging_steps=10_000, save_strategy="no", report_to="none",
            use_cpu=True, bf16=False, fp16=False, seed=0, shuffle_dataset=False,
            dataloader_num_workers=0,
        )
        # Conversational prompts: TRL applies the chat template, as rl_jax's task.chat_template.
        chats = [[{"role": "user", "content": ex.prompt}] for ex in examples]
        dataset = datasets.Dataset.from_dict({"prompt": chats * 2000})
        self.trainer = GRPOTrainer(
            model=model, reward_funcs=last_number, args=args, train_dataset=dataset,
            processing_class=tokenizer,
        )
        split: dict[str, float] = {}
        self.times: list[dict[str, float]] = []
        self.steps_wanted = 0
        trainer, outer = self.trainer, self

        def timed(name, fn):
            def wrapper(*a, **k):
                start = time.perf_counter()
                result = fn(*a, **k)
                split[name] = split.get(name, 0.0) + time.perf_counter() - start
                return result
            return wrapper

        trainer._generate = timed("generation", trainer._generate)
        trainer._generate_and_score_completions = timed(
            "generation+scoring+logprobs", trainer._generate_and_score_completions
        )

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                split.clear()
                self.start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                total = time.perf_counter() - self.start
                gen = split.get("generation", 0.0)
                rest = split.get("generation+scoring+logprobs", 0.0)
                outer.times.append({"total": total, "generation": gen,
                                    "scoring+logprobs": rest - gen, "update": total - rest})
                if len(outer.times) >= outer.steps_wanted:
                    control.should_training_stop = True
                return control

        trainer.add_callback(Clock())

    def run(self, steps: int) -> list[dict[str, float]]:
        """Runs ``steps`` more optimizer steps (TRL's train loop, resumed in place)."""
        self.times.clear()
        self.steps_wanted = steps
        self.trainer.train()
        return list(self.times)


# --- (c) matmul rate ------------------------------------------------------------------------------


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, a).block_until_ready()
    seconds = median_time(lambda: dot(a, a).block_until_ready(), repeats)
    return 2 * size**3 / seconds / 1e9


# --- main -----------------------------------------------------------------------------------------


def main(argv):
    del argv
    if _PROBE.value:
        compile_probe(_PROBE.value)
        return
    import torch

    from rl_jax import data

    parts = set(_PARTS.value)
    lines = [f"SmolLM2-135M-Instruct ({_GGUF.value}), float32, {os.cpu_count()} CPU cores; "
             f"median of {_REPEATS.value}, alternating rl_jax / transformers"]
    print(lines[0], flush=True)

    def report(text: str) -> None:
        lines.append(text)
        print(text, flush=True)

    start = time.perf_counter()
    model, tokenizer = load_rl_jax()
    report(f"load GGUF, rl_jax (no torch): {time.perf_counter() - start:.1f} s")
    gflops = None
    if "matmul" in parts:
        gflops = matmul_gflops()
        report(f"float32 matmul (jnp.dot 2048x2048, median of 5): {gflops:.0f} GFLOP/s")

    if "compile" in parts:
        sampler, params = rl_jax_sampler(model, tokenizer.pad_token_id)
        prompts = chat_prompts(tokenizer, 16)
        start = time.perf_counter()
        rl_jax_sample(sampler, params, prompts, _NEW.value)
        report(f"rl_jax sampler first call, batch 16 x {_NEW.value} (trace + compile + run): "
               f"{time.perf_counter() - start:.1f} s")

    hf_model = hf_tokenizer = None
    if "sampling" in parts or ("grpo" in parts and _THREADS.value):
        start = time.perf_counter()
        hf_model, hf_tokenizer = load_hf()
        report(f"load GGUF, transformers (dequantised by transformers): "
               f"{time.perf_counter() - start:.1f} s")

    if "sampling" in parts:
        sampler, params = rl_jax_sampler(model, tokenizer.pad_token_id)
        report(f"\n(a) sampling, {_NEW.value} new tokens a row, temperature 1, ms per decode "
               "step (all rows):")
        report(f"  {'batch':>5}  {'rl_jax':>9}  " + "  ".join(
            f"{'HF ' + t + ' thr':>10}" for t in _THREADS.value) + "  speed-up (best HF)")
        for batch in (int(b) for b in _SAMPLE_BATCHES.value):
            prompts = chat_prompts(tokenizer, batch, seed=batch)
            rl_jax_sample(sampler, params, prompts, _NEW.value)  # compile this bucket
            times = {"rl_jax": []} | {t: [] for t in _THREADS.value}
            for t in _THREADS.value:  # warm-up of each thread setting
                torch.set_num_threads(int(t))
                hf_sample(hf_model, hf_tokenizer, prompts[:2], 2)
            for r in range(_REPEATS.value):
                start = time.perf_counter()
                rl_jax_sample(sampler, params, prompts, _NEW.value, seed=r)
                times["rl_jax"].append(time.perf_counter() - start)
                for t in _THREADS.value:
                    torch.set_num_threads(int(t))
                    start = time.perf_counter()
                    hf_sample(hf_model, hf_tokenizer, prompts, _NEW.value)
                    times[t].append(time.perf_counter() - start)
            ms = {k: 1000 * statistics.median(v) / _NEW.value for k, v in times.items()}
            best = min(ms[t] for t in _THREADS.value)
            report(f"  {batch:>5}  {ms['rl_jax']:>9.1f}  " + "  ".join(
                f"{ms[t]:>10.1f}" for t in _THREADS.value) + f"  {best / ms['rl_jax']:.2f}x")

    if "grpo" in parts:
        report(f"\n(b) one GRPO step: {_PROMPTS.value} prompts x {_GROUP.value} samples x "
               f"{_STEP_NEW.value} completion tokens, no KL, one AdamW update of the whole batch")
        task = data.make_task("word_arithmetic", ops=("+",), min_value=10, max_value=99, seed=0)
        examples = task.batch(0, _PROMPTS.value)
        prompts = [
            tokenizer.encode(tokenizer.apply_chat_template(
                [{"role": "user", "content": ex.prompt}], add_generation_prompt=True,
                tokenize=False), add_special_tokens=False)
            for ex in examples
        ]
        variants = {"off": (False,), "on": (True,), "both": (False, True)}[_SHARED.value]
        steps = {shared: RlJaxStep(model, tokenizer, prompts, examples, shared_prefix=shared)
                 for shared in variants}
        ours = steps[variants[0]]
        for shared, step in steps.items():
            start = time.perf_counter()
            step()  # compiles
            report(f"  rl_jax{' (shared prefix)' * shared} first step (compiles): "
                   f"{time.perf_counter() - start:.1f} s")
        best_threads = None
        trl_runs: dict[str, list] = {}
        with tempfile.TemporaryDirectory() as workdir:
            trl = TrlStep(hf_model.train(), hf_tokenizer, examples, workdir) if (
                _THREADS.value) else None
            for t in _THREADS.value:  # a warm-up step with each thread setting
                torch.set_num_threads(int(t))
                trl.run(1)
            runs = {shared: [] for shared in variants}
            for repeat in range(_REPEATS.value):
                for shared in variants if repeat % 2 == 0 else variants[::-1]:
                    runs[shared].append(steps[shared]())
                for t in _THREADS.value:
                    torch.set_num_threads(int(t))
                    trl_runs.setdefault(t, []).extend(trl.run(1))
        tokens = _PROMPTS.value * _GROUP.value * _STEP_NEW.value
        meds = {}
        for shared, shared_runs in runs.items():
            meds[shared] = {k: statistics.median(r[k] for r in shared_runs)
                            for k in shared_runs[0]}
            med = meds[shared]
            report(f"  rl_jax{' (shared prefix)' * shared}: {med['total']:.2f} s a step "
                   f"({tokens / med['total']:,.0f} completion tokens/s): " + ", ".join(
                       f"{k} {v:.2f} s" for k, v in med.items() if k != "total"))
        med = meds[variants[0]]
        if len(variants) == 2:
            prompt_len = len(max(prompts, key=len))
            report(f"  shared prefix: prompts of {prompt_len} tokens at most; update "
                   f"{med['update'] / meds[True]['update']:.2f}x, whole step "
                   f"{med['total'] / meds[True]['total']:.2f}x faster than the plain step")
        trl_best = None
        for t, runs in trl_runs.items():
            tmed = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            report(f"  TRL {t} thread(s): {tmed['total']:.2f} s a step "
                   f"({tokens / tmed['total']:,.0f} completion tokens/s): " + ", ".join(
                       f"{k} {v:.2f} s" for k, v in tmed.items() if k != "total"))
            if trl_best is None or tmed["total"] < trl_best:
                trl_best, best_threads = tmed["total"], t
        if trl_best is not None:
            report(f"  speed-up of the whole step (best TRL, {best_threads} thread(s)): "
                   f"{trl_best / med['total']:.2f}x")
        if gflops:
            flops = 6 * ours.num_params * ours.tokens
            rate = flops / med["update"] / 1e9
            report(f"\n(c) train-step MFU: 6 x {ours.num_params / 1e6:.1f}M params x "
                   f"{ours.tokens:,} tokens (prompt + completion) / {med['update']:.2f} s update "
                   f"= {rate:.0f} GFLOP/s = {100 * rate / gflops:.0f}% of the measured matmul "
                   f"rate ({gflops:.0f} GFLOP/s); the LM head's 2 x 3 x 576 x 49,152 FLOPs a "
                   "token are not in 6 x params' embedding share")

    if "compile" in parts:  # last: two fresh processes, each loading the model
        report("\nJAX persistent compilation cache (jax_compilation_cache_dir), sampler batch 16:")
        with tempfile.TemporaryDirectory() as cache:
            cold = run_probe(cache)
            report(f"  fresh process, empty cache: first call {cold['first_call_s']:.1f} s "
                   f"(a second call {cold['second_call_s']:.1f} s)")
            warm = run_probe(cache)
            report(f"  fresh process, cache filled by the one before: first call "
                   f"{warm['first_call_s']:.1f} s")


if __name__ == "__main__":
    app.run(main)
