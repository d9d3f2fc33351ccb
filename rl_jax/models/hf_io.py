"""Loading and saving `CausalLM` as Hugging Face checkpoints (config.json + safetensors).

A parameter path of the NNX state maps onto a checkpoint tensor name by joining it with dots and
renaming the leaf: `kernel` (stored [in, out]) -> `weight` (stored [out, in], transposed);
`embedding` -> `weight`; `weight` and `bias` keep their names. For example
("model", "layers", 0, "self_attn", "q_proj", "kernel") <->
"model.layers.0.self_attn.q_proj.weight".
Only local directories are read: nothing is ever fetched from the hub.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, needed to read bf16 safetensors)
import numpy as np
import safetensors
import safetensors.numpy
import transformers
from flax import nnx

from rl_jax import parallel
from rl_jax.models.config import ModelConfig
from rl_jax.models.transformer import CausalLM, reconfigure

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_NAME = "config.json"
# Checkpoint tensors that carry no parameters of ours (old checkpoints stored rotary tables).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# A directory holding any of these has a tokenizer AutoTokenizer can read.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

FlatParams = dict[tuple[Any, ...], Any]


def hf_name(path: tuple[Any, ...]) -> str:
    """NNX parameter path -> checkpoint tensor name."""
    *prefix, leaf = (str(p) for p in path)
    renamed = {"kernel": "weight", "embedding": "weight"}.get(leaf, leaf)
    return ".".join([*prefix, renamed])


def _is_transposed(path: tuple[Any, ...]) -> bool:
    return path[-1] == "kernel"


def _flatten(tree: dict, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _unflatten(flat: FlatParams) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def to_hf_tensors(model: CausalLM) -> dict[str, np.ndarray]:
    """The model's parameters as checkpoint tensors {name: array in HF layout}.

    A model with LoRA adapters has no HF layout: fold them in first (`lora.merge_adapters`).
    """
    if model.config.lora_rank:
        raise ValueError(
            "the model has LoRA adapters, which a Hugging Face checkpoint cannot hold: save "
            "rl_jax.models.merge_adapters(model) (or call rl_jax.models.save_merged)"
        )
    tensors = {}
    model = reconfigure(model, scan_layers=False)  # checkpoints hold one tensor per layer
    for path, value in _flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param))):
        array = np.asarray(value)
        tensors[hf_name(path)] = np.ascontiguousarray(array.T if _is_transposed(path) else array)
    return tensors


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint: one file, or the shards listed by the index."""
    index_path = directory / WEIGHTS_INDEX_NAME
    if index_path.is_file():
        weight_map = json.loads(index_path.read_text())["weight_map"]
        files = [directory / name for name in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{index_path} lists {file.name}, which does not exist")
        return files
    single = directory / WEIGHTS_NAME
    if single.is_file():
        return [single]
    raise FileNotFoundError(
        f"no weights in {directory}: expected {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME}"
    )


def read_hf_tensors(
    directory: str | os.PathLike,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """All tensors of the checkpoint in `directory` as numpy arrays (bf16 as ml_dtypes).

    Returns (tensors by name, the path of the file each tensor came from).
    """
    tensors: dict[str, np.ndarray] = {}
    files: dict[str, str] = {}
    for file in _weight_files(Path(directory)):
        with safetensors.safe_open(str(file), framework="numpy") as f:
            for name in f.keys():
                tensors[name] = f.get_tensor(name)
                files[name] = str(file)
    return tensors, files


def _check_directory(directory: Path) -> None:
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory (only local checkpoints load)")
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory / CONFIG_NAME} does not exist")


def load_config(path: str | os.PathLike, **overrides: Any) -> ModelConfig:
    """ModelConfig from `path`/config.json; `overrides` as in `ModelConfig.from_hf`."""
    directory = Path(path)
    _check_directory(directory)
    hf_config = json.loads((directory / CONFIG_NAME).read_text())
    return ModelConfig.from_hf(hf_config, **overrides)


def params_from_hf(
    config: ModelConfig,
    tensors: dict[str, np.ndarray],
    files: dict[str, str] | None = None,
    source: str = "checkpoint",
    mesh: jax.sharding.Mesh | None = None,
) -> CausalLM:
    """A CausalLM whose parameters are `tensors` (HF names and layout), cast to param_dtype.

    With a `mesh`, each parameter is placed shard by shard with `parallel.param_sharding`'s
    layout (FSDP over the mesh's "fsdp" axis): every device receives only its slice of the host
    tensor (`jax.make_array_from_callback`), so no device ever holds a whole model it does not
    keep. Without one, the arrays go to the default device whole.

    Raises ValueError naming the tensor (and its file, from `files`, or else `source`) for a
    missing tensor, a wrong shape or an unexpected one. With `config.scan_layers` the layers
    are loaded one by one, then stacked (`reconfigure`).
    """
    if config.lora_rank:
        raise ValueError(
            f"{source}: a checkpoint holds no LoRA adapters; load the base model (lora_rank=0) "
            "and add them with rl_jax.models.add_adapters"
        )
    if config.scan_layers:
        unscanned = dataclasses.replace(config, scan_layers=False)
        return reconfigure(params_from_hf(unscanned, tensors, files, source, mesh),
                           scan_layers=True)
    files = files or {}
    abstract = nnx.eval_shape(lambda: CausalLM(config, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    param_dtype = jnp.dtype(config.param_dtype)
    flat: FlatParams = {}
    used = set()
    for path, spec in _flatten(nnx.to_pure_dict(state)):
        name = hf_name(path)
        expected = tuple(reversed(spec.shape)) if _is_transposed(path) else tuple(spec.shape)
        if name not in tensors:
            raise ValueError(f"{source}: missing tensor {name} (expected shape {expected})")
        array = tensors[name]
        if tuple(array.shape) != expected:
            raise ValueError(
                f"{files.get(name, source)}: tensor {name} has shape {tuple(array.shape)}, "
                f"expected {expected}"
            )
        used.add(name)
        host = array.T if _is_transposed(path) else array
        flat[path] = _place(host, param_dtype, mesh)
    unexpected = sorted(
        name for name in tensors
        if name not in used
        and not name.endswith(_IGNORED_SUFFIXES)
        and not (config.tie_word_embeddings and name == "lm_head.weight")
    )
    if unexpected:
        raise ValueError(f"{source}: unexpected tensors {unexpected}")
    nnx.replace_by_pure_dict(state, _unflatten(flat))
    return nnx.merge(graphdef, state)


def _place(host: np.ndarray, dtype: jnp.dtype, mesh: jax.sharding.Mesh | None) -> jax.Array:
    """``host`` as a ``dtype`` array: whole on the default device, or with ``mesh`` split as
    ``parallel.param_sharding`` splits it, each device's slice cast and copied on its own."""
    if mesh is None:
        return jnp.asarray(host, dtype=dtype)
    sharding = parallel.param_sharding(jax.ShapeDtypeStruct(host.shape, dtype), mesh)
    return jax.make_array_from_callback(
        host.shape, sharding, lambda index: np.asarray(host[index], dtype=dtype)
    )


def _remove_stale_shards(directory: Path) -> None:
    """Deletes an old shard index and its shards, which the loader would read before our file."""
    index_path = directory / WEIGHTS_INDEX_NAME
    if not index_path.is_file():
        return
    for name in set(json.loads(index_path.read_text())["weight_map"].values()):
        (directory / name).unlink(missing_ok=True)
    index_path.unlink()


def save_pretrained(
    model: CausalLM,
    tokenizer: transformers.PreTrainedTokenizerBase | None,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
) -> None:
    """Writes config.json, model.safetensors (and the tokenizer files) into `path`.

    `transformers.AutoModelForCausalLM.from_pretrained(path)` loads the result with the same
    tensors. Refuses (FileExistsError) to write into an existing non-empty directory unless
    `overwrite=True`.
    """
    if not isinstance(model, CausalLM):
        raise TypeError(f"save_pretrained expects a CausalLM, got {type(model).__name__}")
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise FileExistsError(f"{directory} exists and is not a directory")
    if directory.is_dir() and any(directory.iterdir()) and not overwrite:
        raise FileExistsError(f"{directory} is not empty; pass overwrite=True to write into it")
    hf_config = model.config.to_hf()
    tensors = to_hf_tensors(model)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_stale_shards(directory)
    safetensors.numpy.save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})
    hf_config.save_pretrained(str(directory))
    if tokenizer is not None:
        tokenizer.save_pretrained(str(directory))
