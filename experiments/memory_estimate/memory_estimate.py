r"""Paper estimates: per-device memory of Qwen2.5-1.5B and 7B GRPO by the start-up estimate.

    python experiments/memory_estimate/memory_estimate.py \
        > experiments/memory_estimate/results/memory_estimate.txt

GRPO with 64 prompts x 8 samples, prompts of up to 256 tokens and 1,024 new tokens (T = 1,280),
8 minibatches (64 rows an update), a KL reference (kl.coef = 0.04), evaluation of 64 prompts x 4
samples; on 8 x 80 GB GPUs and a TPU v5e-16 (16 chips of 16 GB HBM). For each: "before" (the full
[rows, T, vocab] logits, no remat, no fsdp: parameters replicated, float32) and "after" (the LM
head in chunks of 128 positions, layers scanned with full remat, fsdp over all devices, bfloat16
compute with float32 master weights and optimizer state; on the GPUs also cuDNN flash attention,
model.attention_impl='cudnn': no [rows, heads, T, T] scores; rl_jax has no TPU flash kernel).
Nothing is allocated: the estimate is ``rl_jax.memory.estimate``, a function of the config and
the parameter shapes.
"""

from __future__ import annotations

import dataclasses

from absl import app

from rl_jax import memory
from rl_jax.config import default_config
from rl_jax.models import ModelConfig
from rl_jax.settings import RunSettings

QWEN = dict(model_type="qwen2", vocab_size=151_936, attention_bias=True, rope_theta=1e6,
            max_position_embeddings=32_768, rms_norm_eps=1e-6)
MODELS = {
    "Qwen2.5-1.5B": ModelConfig(**QWEN, hidden_size=1536, num_layers=28, num_heads=12,
                                num_kv_heads=2, intermediate_size=8960, tie_word_embeddings=True),
    "Qwen2.5-7B": ModelConfig(**QWEN, hidden_size=3584, num_layers=28, num_heads=28,
                              num_kv_heads=4, intermediate_size=18944, tie_word_embeddings=False),
}
HARDWARE = {"8 x 80 GB GPU": (8, 80.0, "cudnn"), "TPU v5e-16": (16, 16.0, "matmul")}
PROMPT_LEN = 256


def grpo_config(logits_chunk: int, loaded: bool):
    """``loaded``: the policy comes from a checkpoint (``model.path``, only read for its truth
    here): its initial weights are placed shard by shard; before that change they were whole."""
    config = default_config()
    config.model.path = "<a pretrained checkpoint>" if loaded else ""
    config.stages = ("rl",)
    config.rl.estimator = "grpo"
    config.rl.num_prompts, config.rl.group_size, config.rl.num_minibatches = 64, 8, 8
    config.rollout.max_new_tokens = 1024
    config.kl.coef = 0.04
    config.eval.num_examples, config.eval.k = 64, 4
    config.model.logits_chunk = logits_chunk
    return config


def main(argv):
    del argv
    gib = memory.GIB
    print(__doc__.split("\n\n", 2)[2].strip().split('"""')[0])
    print()
    columns = ("persistent", "phase/sampling", "phase/evaluation", "phase/prepare",
               "phase/update", "total")
    header = (f"{'model':<13} {'hardware':<14} {'setting':<7} "
              + " ".join(f"{c.split('/')[-1]:>10}" for c in columns)
              + f" {'fits':>5} {'w/o init':>9}")
    print("GiB per device; 'w/o init': the total without ctx.policy's initial weights (before:")
    print("kept whole on the first device; after: loaded shard by shard, split like the policy)")
    print(header)
    details = []
    for name, model in MODELS.items():
        for hardware, (devices, gb, attention) in HARDWARE.items():
            settings = {
                "before": (grpo_config(0, loaded=False), dataclasses.replace(model), 1),
                "after": (grpo_config(128, loaded=True), dataclasses.replace(
                    model, dtype="bfloat16", param_dtype="float32", remat="full",
                    scan_layers=True, attention_impl=attention), devices),
            }
            for setting, (config, model_config, fsdp) in settings.items():
                est = memory.estimate(RunSettings.from_config(config), model_config,
                                      num_devices=devices, fsdp=fsdp, prompt_len=PROMPT_LEN)
                fits = "yes" if est["total"] <= gb * gib else "no"
                without = est["total"] - est["initial_weights"]
                print(f"{name:<13} {hardware:<14} {setting:<7} "
                      + " ".join(f"{est[c] / gib:>10.1f}" for c in columns)
                      + f" {fits:>5} {without / gib:>9.1f}")
                details.append((f"{name}, {hardware}, {setting}", est))
    for title, est in details:
        print(f"\n{title}:")
        print(memory.format_table(est))


if __name__ == "__main__":
    app.run(main)
