"""Configuration of the decoder-only transformers (Llama, Qwen2, Qwen3) and its HF conversion."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import transformers

SUPPORTED_MODEL_TYPES = ("llama", "qwen2", "qwen3")
_SUPPORTED_DTYPES = ("float32", "bfloat16")
ATTENTION_IMPLS = ("matmul", "xla", "cudnn")
# The projections a LoRA adapter can sit on (one adapter per HF module name, see `LoRALinear`).
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# What each decoder layer keeps for the backward pass (jax.checkpoint policies; see
# rl_jax.models.transformer.remat_policy): everything ("none": no remat), only its input
# ("full": all else recomputed), or matmul outputs (jax's dots_saveable, or
# dots_with_no_batch_dims_saveable: the weight matmuls' outputs, attention's recomputed).
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")

_HF_CONFIG_CLASSES = {
    "llama": transformers.LlamaConfig,
    "qwen2": transformers.Qwen2Config,
    "qwen3": transformers.Qwen3Config,
}
_HF_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama-3 style frequency-dependent rotary scaling (transformers' rope_type "llama3")."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a decoder-only transformer.

    `dtype` is the compute dtype of activations; `param_dtype` the storage dtype of parameters.
    `eos_token_id` may be a tuple when the checkpoint lists several (Llama 3 instruct).
    Logits are always float32. `remat` is the checkpoint policy of each decoder layer in the
    no-cache forward, one of `REMAT_POLICIES` ("none" keeps every activation for the backward;
    True / False are read as "full" / "none"). `scan_layers` stores the decoder layers' parameters
    stacked with a leading [num_layers] axis and runs them in one `lax.scan` (MaxText's
    scan_layers): one compiled layer body instead of num_layers copies; the KV cache is then
    stacked too (see `init_decode_cache`). `rl_jax.models.reconfigure` converts a
    model between the two layouts; the HF/GGUF loaders and `save_pretrained` do it at the file
    boundary.
    `attention_bias` puts biases on the q/k/v projections (Qwen2); `attention_out_bias` on the
    output projection too (Llama/Qwen3 with `attention_bias=True` in their HF config).
    `attention_impl` is the training forward's attention (no cache): "matmul" (rl_jax's batched
    matmuls, fastest on CPU), or `jax.nn.dot_product_attention` with implementation "xla" or
    "cudnn" (cuDNN's fused flash attention; GPU, bfloat16/float16 only). Same numbers up to
    rounding. Decoding with a cache always uses rl_jax's own kernels.
    `lora_rank` > 0 puts a low-rank adapter W + (alpha / rank) A B on each projection named in
    `lora_targets` (of `LORA_TARGETS`; see `layers.LoRALinear` and `rl_jax.models.lora`).
    """

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int | None = None
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    attention_bias: bool = False
    attention_out_bias: bool = False
    qk_norm: bool = False
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02  # std of the normal init of fresh weights (HF's name)
    bos_token_id: int | None = None
    eos_token_id: int | tuple[int, ...] | None = None
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    remat: str = "none"
    attention_impl: str = "matmul"
    lora_rank: int = 0  # 0 = no adapters
    lora_alpha: float = 16.0  # adapter scale alpha / rank (PEFT's convention)
    lora_targets: tuple[str, ...] = ()
    scan_layers: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        if self.lora_rank < 0:
            raise ValueError(f"lora_rank must be >= 0, got {self.lora_rank}")
        unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
        if unknown:
            raise ValueError(f"lora_targets {unknown} are not projections; known: {LORA_TARGETS}")
        if self.lora_rank > 0 and not self.lora_targets:
            raise ValueError(f"lora_rank = {self.lora_rank} needs lora_targets (of {LORA_TARGETS})")
        if isinstance(self.remat, bool):
            object.__setattr__(self, "remat", "full" if self.remat else "none")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat must be one of {REMAT_POLICIES}, got {self.remat!r}")
        if self.attention_impl not in ATTENTION_IMPLS:
            raise ValueError(
                f"attention_impl must be one of {ATTENTION_IMPLS}, got {self.attention_impl!r}"
            )
        if self.attention_impl == "cudnn" and self.dtype != "bfloat16":
            raise ValueError("attention_impl='cudnn' needs dtype='bfloat16' (cuDNN's kernels)")
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise ValueError(
                f"unsupported model_type {self.model_type!r}; supported: {SUPPORTED_MODEL_TYPES}"
            )
        for name in ("dtype", "param_dtype"):
            value = getattr(self, name)
            if value not in _SUPPORTED_DTYPES:
                raise ValueError(f"{name} must be one of {_SUPPORTED_DTYPES}, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.num_kv_heads})"
            )
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError(
                    f"hidden_size ({self.hidden_size}) is not a multiple of "
                    f"num_heads ({self.num_heads}); give head_dim explicitly"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if isinstance(self.rope_scaling, Mapping):
            object.__setattr__(self, "rope_scaling", RopeScaling(**self.rope_scaling))

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head."""
        return self.num_heads // self.num_kv_heads

    @classmethod
    def from_hf(
        cls, hf_config: Mapping[str, Any] | transformers.PretrainedConfig, **overrides: Any
    ) -> ModelConfig:
        """Builds a config from a transformers config object or its dict (config.json).

        A dict goes through the matching transformers config class first, so both the old
        (`rope_theta` + `rope_scaling`) and the new (`rope_parameters`) layouts are understood.
        `overrides` replace fields after conversion (e.g. dtype="bfloat16", remat="full").
        """
        if isinstance(hf_config, Mapping):
            model_type = hf_config.get("model_type")
            _check_model_type(model_type)
            fields = {k: v for k, v in hf_config.items() if k != "model_type"}
            hf_config = _HF_CONFIG_CLASSES[model_type](**fields)
        model_type = getattr(hf_config, "model_type", None)
        _check_model_type(model_type)
        if getattr(hf_config, "use_sliding_window", False):
            raise ValueError(f"{model_type}: sliding-window attention is not supported")
        theta, scaling = _rope_from_hf(hf_config)
        hf_bias = bool(getattr(hf_config, "attention_bias", False))
        kwargs = dict(
            model_type=model_type,
            vocab_size=hf_config.vocab_size,
            hidden_size=hf_config.hidden_size,
            intermediate_size=hf_config.intermediate_size,
            num_layers=hf_config.num_hidden_layers,
            num_heads=hf_config.num_attention_heads,
            num_kv_heads=hf_config.num_key_value_heads or hf_config.num_attention_heads,
            head_dim=getattr(hf_config, "head_dim", None),
            rope_theta=theta,
            rope_scaling=scaling,
            rms_norm_eps=hf_config.rms_norm_eps,
            # Qwen2 always has q/k/v biases (and none on o_proj); Llama/Qwen3's attention_bias
            # flag puts biases on q/k/v and o_proj.
            attention_bias=model_type == "qwen2" or hf_bias,
            attention_out_bias=model_type != "qwen2" and hf_bias,
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(hf_config.tie_word_embeddings),
            max_position_embeddings=hf_config.max_position_embeddings,
            initializer_range=getattr(hf_config, "initializer_range", 0.02),
            bos_token_id=hf_config.bos_token_id,
            eos_token_id=_hashable_ids(hf_config.eos_token_id),
            pad_token_id=hf_config.pad_token_id,
        )
        if model_type == "llama" and getattr(hf_config, "mlp_bias", False):
            raise ValueError("llama: mlp_bias=True is not supported")
        if getattr(hf_config, "hidden_act", "silu") != "silu":
            raise ValueError(f"{model_type}: hidden_act {hf_config.hidden_act!r} is not supported")
        kwargs.update(overrides)
        return cls(**kwargs)

    def to_hf(self) -> transformers.PretrainedConfig:
        """The equivalent transformers config (LlamaConfig, Qwen2Config or Qwen3Config)."""
        rope_parameters: dict[str, Any] = {"rope_type": "default", "rope_theta": self.rope_theta}
        if self.rope_scaling is not None:
            rope_parameters = {
                "rope_type": "llama3",
                "rope_theta": self.rope_theta,
                **dataclasses.asdict(self.rope_scaling),
            }
        common = dict(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rope_parameters=rope_parameters,
            rms_norm_eps=self.rms_norm_eps,
            tie_word_embeddings=self.tie_word_embeddings,
            max_position_embeddings=self.max_position_embeddings,
            initializer_range=self.initializer_range,
            bos_token_id=self.bos_token_id,
            eos_token_id=(
                list(self.eos_token_id) if isinstance(self.eos_token_id, tuple)
                else self.eos_token_id
            ),
            pad_token_id=self.pad_token_id,
            hidden_act="silu",
        )
        self._check_hf_expressible()
        if self.model_type != "qwen2":
            common["attention_bias"] = self.attention_bias
        hf_config = _HF_CONFIG_CLASSES[self.model_type](**common)
        hf_config.architectures = [_HF_ARCHITECTURES[self.model_type]]
        hf_config.dtype = self.param_dtype
        return hf_config

    def _check_hf_expressible(self) -> None:
        """Raises if the architecture flags have no equivalent in the HF class of model_type."""
        if self.qk_norm != (self.model_type == "qwen3"):
            raise ValueError(f"{self.model_type}: qk_norm={self.qk_norm} has no HF equivalent")
        if self.model_type == "qwen2":
            if not self.attention_bias or self.attention_out_bias:
                raise ValueError("qwen2 needs attention_bias=True and attention_out_bias=False")
        elif self.attention_bias != self.attention_out_bias:
            raise ValueError(
                f"{self.model_type}: attention_bias and attention_out_bias must be equal for HF"
            )


def tiny_config(model_type: str = "qwen2", **overrides: Any) -> ModelConfig:
    """A small config for tests and from-scratch experiments (hidden 64, 2 layers, vocab 256).

    The architectural flags (qkv bias, q/k norm) follow `model_type`; any field can be overridden.
    """
    _check_model_type(model_type)
    kwargs: dict[str, Any] = dict(
        model_type=model_type,
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        rope_theta=10000.0,
        attention_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        tie_word_embeddings=model_type == "qwen2",
        max_position_embeddings=512,
    )
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def _check_model_type(model_type: Any) -> None:
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"unsupported model_type {model_type!r}; supported: {SUPPORTED_MODEL_TYPES}"
        )


def _hashable_ids(token_id: int | list[int] | None) -> int | tuple[int, ...] | None:
    """transformers allows a list of eos ids (Llama 3); a frozen config keeps it as a tuple."""
    if isinstance(token_id, (list, tuple)):
        return tuple(token_id)
    return token_id


def _rope_from_hf(hf_config: transformers.PretrainedConfig) -> tuple[float, RopeScaling | None]:
    """Reads (rope_theta, llama3 scaling or None) from a standardized transformers config."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    theta = params.get("rope_theta", getattr(hf_config, "rope_theta", None))
    if theta is None:
        raise ValueError(f"{hf_config.model_type}: config has no rope_theta")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type == "default":
        return float(theta), None
    if rope_type == "llama3":
        scaling = RopeScaling(
            factor=float(params["factor"]),
            low_freq_factor=float(params["low_freq_factor"]),
            high_freq_factor=float(params["high_freq_factor"]),
            original_max_position_embeddings=int(params["original_max_position_embeddings"]),
        )
        return float(theta), scaling
    raise ValueError(f"rope_type {rope_type!r} is not supported; supported: default, llama3")
