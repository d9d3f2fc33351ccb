"""Decoder-only transformers (Llama, Qwen2, Qwen3) in Flax NNX, with Hugging Face load/save."""

from rl_jax.models.config import SUPPORTED_MODEL_TYPES, ModelConfig, RopeScaling, tiny_config
from rl_jax.models.hf_io import (
    load_causal_lm,
    load_config,
    load_pretrained,
    params_from_hf,
    read_hf_tensors,
    save_pretrained,
    to_hf_tensors,
)
from rl_jax.models.tokenizer import train_bpe_tokenizer
from rl_jax.models.transformer import (
    CausalLM,
    DecodeCache,
    RewardModel,
    Transformer,
    ValueModel,
    apply_lm,
    apply_model,
    attention_mask,
    init_decode_cache,
    last_token_index,
    positions_from_mask,
)

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "CausalLM",
    "DecodeCache",
    "ModelConfig",
    "RewardModel",
    "RopeScaling",
    "Transformer",
    "ValueModel",
    "apply_lm",
    "apply_model",
    "attention_mask",
    "init_decode_cache",
    "last_token_index",
    "load_causal_lm",
    "load_config",
    "load_pretrained",
    "params_from_hf",
    "positions_from_mask",
    "read_hf_tensors",
    "save_pretrained",
    "tiny_config",
    "to_hf_tensors",
    "train_bpe_tokenizer",
]
