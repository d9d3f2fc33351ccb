"""Tiny random transformers models and padded batches for the model and interop tests."""

from __future__ import annotations

import functools

import numpy as np
import torch
import transformers

from rl_jax.models import train_bpe_tokenizer

VOCAB = 320

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
    initializer_range=0.1,  # larger than the default 0.02, so logits are O(1) and errors show
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)

# name -> transformers config: every architecture flag the rl_jax decoder supports.
HF_CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(
        **_COMMON, tie_word_embeddings=False, rope_parameters={"rope_type": "default",
                                                               "rope_theta": 10000.0}
    ),
    "llama3_rope": lambda: transformers.LlamaConfig(
        **_COMMON,
        tie_word_embeddings=False,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
    ),
    "qwen2": lambda: transformers.Qwen2Config(
        **_COMMON, tie_word_embeddings=True, rope_parameters={"rope_type": "default",
                                                              "rope_theta": 1000000.0}
    ),
    # head_dim 32 != hidden / heads = 16, as in real Qwen3 checkpoints.
    "qwen3": lambda: transformers.Qwen3Config(
        **_COMMON, head_dim=32, tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
    ),
}
ARCHITECTURES = tuple(HF_CONFIGS)


def make_hf_model(name: str, seed: int = 0) -> transformers.PreTrainedModel:
    """A random float32 transformers CausalLM (eager attention) for architecture `name`."""
    torch.manual_seed(seed)
    config = HF_CONFIGS[name]()
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # random norm weights and biases, so a misplaced one would show
        for param_name, param in model.named_parameters():
            if param_name.endswith(("norm.weight", "bias")):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval()


@functools.cache
def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE with 300 tokens (fits in VOCAB) trained on a few sentences."""
    texts = [
        "the quick brown fox jumps over the lazy dog",
        "reinforcement learning of language models with jax",
        "two plus two is four; three times three is nine",
    ] * 20
    return train_bpe_tokenizer(texts, vocab_size=300)


def padded_batch(
    lengths: list[int], width: int, side: str, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Random tokens in [3, VOCAB) with `lengths` real tokens padded on `side` to `width`.

    Returns (tokens [B, width] int32 with pad id 0, mask [B, width] int32).
    """
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), np.int32)
    for row, length in enumerate(lengths):
        span = slice(width - length, width) if side == "left" else slice(0, length)
        tokens[row, span] = rng.integers(3, VOCAB, size=length)
        mask[row, span] = 1
    return tokens, mask


def hf_logits(model: transformers.PreTrainedModel, tokens: np.ndarray, mask: np.ndarray):
    """Torch logits [B, T, V] (numpy) with position_ids = clip(cumsum(mask) - 1, 0)."""
    positions = np.maximum(np.cumsum(mask, axis=-1) - 1, 0)
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(tokens.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(positions.astype(np.int64)),
        )
    return out.logits.float().numpy()
