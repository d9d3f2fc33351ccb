"""Typed settings: built once from the config, frozen, without defaults of their own, and the only
thing below ``trainers.run.run`` that carries the config's values."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from rl_jax import settings as settings_lib
from rl_jax.algorithm import RLSettings, ScoreShaping
from rl_jax.config import default_config
from rl_jax.optim import OptimSettings
from rl_jax.settings import RunSettings
from tests.testing_utils import tiny_config

ROOT = Path(__file__).resolve().parents[1]
# The modules that may read the ConfigDict: run() turns it into settings, workdir.py saves and
# compares it (config.json, the record of the run).
MAY_READ_CONFIG = {"run.py", "workdir.py"}
CONFIG_NAMES = {"config", "cfg", "ConfigDict"}


def config_reads(source: str) -> list[str]:
    """Where ``source`` reads a ConfigDict: an import of ml_collections, a name or parameter
    ``config`` / ``cfg`` / ``ConfigDict``, ``<ctx|self|context>.config``, or a ``from_config`` call
    (building settings is run()'s job). ``model.config`` (a model's architecture) is not one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Import | ast.ImportFrom):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""])
            if any(m.split(".")[0] == "ml_collections" for m in modules):
                found.append(f"line {line}: imports ml_collections")
        elif isinstance(node, ast.Name) and node.id in CONFIG_NAMES:
            found.append(f"line {line}: the name {node.id}")
        elif isinstance(node, ast.arg) and node.arg in CONFIG_NAMES:
            found.append(f"line {line}: the parameter {node.arg}")
        elif isinstance(node, ast.Attribute):
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            if node.attr == "config" and owner in ("ctx", "self", "context"):
                found.append(f"line {line}: {owner}.config")
            elif node.attr == "from_config":
                found.append(f"line {line}: a from_config call")
    return found


def _checked_modules() -> list[Path]:
    trainers = sorted((ROOT / "rl_jax" / "trainers").glob("*.py"))
    return [p for p in trainers if p.name not in MAY_READ_CONFIG] + [ROOT / "rl_jax" / "memory.py"]


def test_nothing_below_run_reads_the_config():
    modules = _checked_modules()
    assert {"evaluation.py", "loop.py", "rl.py", "sft.py", "setup.py", "memory.py"} <= {
        p.name for p in modules}
    reads = {str(p.relative_to(ROOT)): config_reads(p.read_text()) for p in modules}
    assert {name: where for name, where in reads.items() if where} == {}


@pytest.mark.parametrize(
    "snippet",
    [
        "def evaluate(ctx, params):\n    return ctx.config.eval.k\n",
        "import ml_collections\n",
        "from ml_collections import ConfigDict\n",
        "def run_sft(ctx, config):\n    return 1\n",
        "def f(ctx):\n    cfg = ctx.settings\n    return cfg.steps\n",
        "def f(ctx):\n    return RLSettings.from_config(ctx.raw)\n",
        "class Context:\n    config: object\n",
    ],
)
def test_the_check_flags_a_config_read(snippet):
    assert config_reads(snippet), snippet


def test_the_check_passes_settings_and_model_configs():
    source = ("def f(ctx, settings):\n"
              "    return ctx.policy.config.vocab_size + settings.evaluation.k\n")
    assert config_reads(source) == []
    run_py = (ROOT / "rl_jax" / "trainers" / "run.py").read_text()
    assert config_reads(run_py)  # the entry does read it (a check that can fire)


def _dataclasses() -> list[type]:
    own = [v for v in vars(settings_lib).values()
           if dataclasses.is_dataclass(v) and v.__module__ == settings_lib.__name__]
    return [*own, RLSettings, ScoreShaping, OptimSettings]


@pytest.mark.parametrize("cls", _dataclasses(), ids=lambda c: c.__name__)
def test_settings_are_frozen_and_have_no_defaults(cls):
    """The config (``rl_jax.config.default_config``) is the one place a default lives."""
    assert cls.__dataclass_params__.frozen
    with_default = [f.name for f in dataclasses.fields(cls)
                    if f.default is not dataclasses.MISSING
                    or f.default_factory is not dataclasses.MISSING]
    assert with_default == []


def test_run_settings_carry_the_config_values():
    config = tiny_config(**{"rl.num_prompts": 4, "rl.group_size": 3, "eval.k": 2,
                            "rollout.top_k": 5, "checkpoint.every": 7, "kl.coef": 0.04})
    s = RunSettings.from_config(config)
    assert s.stages == tuple(config.stages)
    assert s.evaluation.rows_per_call == 12 and s.evaluation.k == 2
    assert s.sampling.top_k == 5 and s.sampling.max_new_tokens == config.rollout.max_new_tokens
    assert s.loop.checkpoint_every == 7 and s.loop.eval_every == config.eval.every
    assert s.rl.algorithm == RLSettings.from_config(config)
    assert s.rl.rollout.shaping == ScoreShaping.from_config(config)
    assert s.rl.kl_coef == 0.04 and s.rl.after_sft == ("sft" in config.stages)
    assert s.sft.optim == OptimSettings.from_config(config.sft.optim)
    assert dict(s.rewards.weights) == config.rewards.weights.to_dict()
    assert dict(s.task.kwargs) == config.task.kwargs.to_dict()
    # One object per shared part: the stages hold the same sampling, evaluation and loop.
    assert s.sft.evaluation is s.rl.evaluation is s.evaluation
    assert s.rm.sampling is s.rl.rollout.sampling is s.sampling
    assert s.sft.loop is s.rm.loop is s.rl.loop is s.loop


def test_settings_are_read_only_copies():
    config = default_config()
    s = RunSettings.from_config(config)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rl.steps = 1
    with pytest.raises(TypeError):
        s.rewards.weights["exact_match"] = 2.0
    config.rewards.weights.exact_match = 3.0  # the settings were copied, not shared
    assert s.rewards.weights["exact_match"] == 1.0
