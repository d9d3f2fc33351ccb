"""rl_jax's GGUF loader against transformers' on SmolLM2-135M-Instruct: load time, logits, greedy.

    python tools/fetch_model.py    # once: the model
    python experiments/gguf_parity/gguf_parity.py [--gguf=PATH] [--new_tokens=32] [--threads=1]

Loads the Q4_1 GGUF through rl_jax (`load_pretrained`, numpy dequantisation, no torch) and
through transformers (`from_pretrained(gguf_file=..., dtype=float32)`; needs torch), compares the
logits of a few chat prompts (left-padded batch), then decodes greedily with rl_jax's Sampler and
with transformers `generate(do_sample=False)` (EOS disabled, so both emit exactly --new_tokens
tokens).
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from rl_jax.models import apply_lm, load_pretrained, positions_from_mask
from rl_jax.rollout import Sampler

QUESTIONS = ["What is 12 * 7?", "Name a colour.", "Write one sentence about the sea.",
             "What is the capital of France?"]

_GGUF = flags.DEFINE_string(
    "gguf", str(Path.home() / ".cache/rl_jax/SmolLM2-135M-Instruct.Q4_1.gguf"), "The model file.")
_NEW = flags.DEFINE_integer("new_tokens", 32, "Greedy tokens to decode.")
_THREADS = flags.DEFINE_integer("threads", 1, "torch threads.")


def main(argv):
    del argv
    gguf = Path(_GGUF.value).expanduser()
    start = time.perf_counter()
    model, tokenizer = load_pretrained(gguf)
    print(f"rl_jax load_pretrained (model + tokenizer): {time.perf_counter() - start:.1f} s")

    import torch
    import transformers

    torch.set_num_threads(_THREADS.value)
    start = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(
        gguf.parent, gguf_file=gguf.name)
    print(f"transformers from_pretrained (model + tokenizer): {time.perf_counter() - start:.1f} s")

    texts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                           add_generation_prompt=True) for q in QUESTIONS]
    prompts = [tokenizer.encode(t) for t in texts]
    same_ids = all(hf_tokenizer.encode(t) == p for t, p in zip(texts, prompts, strict=True))
    print(f"prompt token ids equal to transformers' GGUF tokenizer: {same_ids}")
    width = max(map(len, prompts))
    pad = tokenizer.pad_token_id
    tokens = np.full((len(prompts), width), pad, np.int32)
    mask = np.zeros_like(tokens)
    for row, ids in enumerate(prompts):
        tokens[row, width - len(ids):], mask[row, width - len(ids):] = ids, 1

    from flax import nnx

    graphdef, state = nnx.split(model)
    ours = np.asarray(jax.jit(lambda s, t, m: apply_lm(graphdef, s, t, positions_from_mask(m),
                                                       m)[0])(state, tokens, mask))
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    with torch.no_grad():
        ref = hf(input_ids=torch.from_numpy(tokens.astype(np.int64)),
                 attention_mask=torch.from_numpy(mask.astype(np.int64)),
                 position_ids=torch.from_numpy(positions.astype(np.int64))).logits.numpy()
    real = mask.astype(bool)
    err = np.abs(ours - ref)[real].max()
    print(f"max |logit diff| over {int(real.sum())} positions: {err:.3g} "
          f"(logit scale {np.abs(ref[real]).max():.3g}); argmax equal at "
          f"{(ours.argmax(-1) == ref.argmax(-1))[real].mean():.4f} of positions")

    sampler = Sampler.from_model(model, eos_ids=(), pad_id=pad, max_len=256)
    start = time.perf_counter()
    out = sampler.generate(state, prompts, jax.random.key(0), max_new_tokens=_NEW.value,
                           greedy=True)
    ours_new = np.asarray(out.response_tokens)
    print(f"rl_jax greedy {_NEW.value} tokens (incl. compile): "
          f"{time.perf_counter() - start:.1f} s")
    hf.generation_config.eos_token_id = None
    start = time.perf_counter()
    with torch.no_grad():
        generated = hf.generate(
            input_ids=torch.from_numpy(tokens.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            max_new_tokens=_NEW.value, min_new_tokens=_NEW.value,
            do_sample=False, pad_token_id=pad)
    print(f"transformers greedy {_NEW.value} tokens: {time.perf_counter() - start:.1f} s")
    theirs = generated[:, width:].numpy()
    for row, q in enumerate(QUESTIONS):
        same = np.array_equal(ours_new[row], theirs[row])
        print(f"{q!r}: identical={same} {tokenizer.decode(ours_new[row])!r}")
        if not same:
            print(f"   transformers: {tokenizer.decode(theirs[row])!r}")


if __name__ == "__main__":
    app.run(main)
