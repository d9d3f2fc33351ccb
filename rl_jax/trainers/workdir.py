"""A workdir belongs to one run: a lock while a process uses it, and the config it started with.

``workdir/lock`` holds ``{"pid", "host"}`` of the process running in it; a second process is
refused, naming the holder; a lock left by a process that is gone (same host) is taken over.

``workdir/config.json`` is the config the run was started with. A restart whose config changes
what is trained (model, task, tokenizer, rewards, algorithm, optimizer, seed, ...) is refused with
the changed fields, unless ``allow_config_change``; the fields of ``HARMLESS`` (step counts,
logging, evaluation, checkpoint cadence, the divergence guard) may change.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections.abc import Iterator
from typing import Any

import ml_collections

from rl_jax.config import default_config, flat_fields

# Fields (or sections, ending in ".") a restart may change: they do not change what was trained.
HARMLESS = ("sft.steps", "rm.steps", "rl.steps", "rl.max_approx_kl", "log.", "eval.",
            "checkpoint.")


class WorkdirLockedError(RuntimeError):
    """Another live process holds the workdir's lock."""


class ConfigChangedError(ValueError):
    """The workdir was started with a config that trains something else."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextlib.contextmanager
def locked(workdir: str) -> Iterator[None]:
    """Holds ``workdir/lock`` while the block runs.

    Raises:
      WorkdirLockedError: the lock belongs to a live process, or to a process on another host.
    """
    path = os.path.join(workdir, "lock")
    mine = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as f:
                    holder = json.load(f)
                pid, host = int(holder["pid"]), str(holder["host"])
            except (OSError, ValueError, KeyError, TypeError):
                pid, host = -1, mine["host"]  # unreadable (a kill mid-write): nobody holds it
            if host != mine["host"] or (pid != mine["pid"] and pid > 0 and _alive(pid)):
                raise WorkdirLockedError(
                    f"workdir {workdir} is in use by PID {pid} on host {host} (lock file {path}); "
                    "wait for it to end, or use another --workdir; if that process is gone, "
                    "delete the lock file"
                ) from None
            if pid != mine["pid"]:
                print(f"{path}: taking over the lock of PID {pid} on {host}, which is gone")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(mine, f)
        break
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError):
            with open(path, encoding="utf-8") as f:
                if json.load(f).get("pid") == mine["pid"]:
                    os.remove(path)


def config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as nested JSON (the format ``rl_jax.ablation`` writes too)."""
    return json.loads(config.to_json_best_effort())


def flat_config(config: ml_collections.ConfigDict | dict) -> dict[str, Any]:
    """``{"rl.optim.lr": 3e-4, ...}`` with JSON values (tuples become lists)."""
    tree = config_json(config) if isinstance(config, ml_collections.ConfigDict) else config
    return {field: json.loads(json.dumps(value, default=str))
            for field, value in flat_fields(tree).items()}


def config_changes(saved: dict[str, Any], config: ml_collections.ConfigDict) -> list[str]:
    """The fields (not ``HARMLESS``) whose value differs: ``"field: saved -> now"``. A field the
    saved config lacks (added to rl_jax since) is no change while it has its default value."""
    now, defaults = flat_config(config), flat_config(default_config())
    saved, changes = flat_config(saved), []
    for field in sorted(set(saved) | set(now)):
        if any(field == h or (h.endswith(".") and field.startswith(h)) for h in HARMLESS):
            continue
        if field not in saved and field in defaults and now.get(field) == defaults[field]:
            continue
        before, after = saved.get(field, "<absent>"), now.get(field, "<absent>")
        if before != after:
            changes.append(f"{field}: {before!r} -> {after!r}")
    return changes


def check_workdir_config(
    workdir: str, config: ml_collections.ConfigDict, allow_config_change: bool = False
) -> None:
    """Compares ``config`` with ``workdir/config.json`` (written on the first start), then saves
    ``config`` there.

    Raises:
      ConfigChangedError: listing each changed field, unless ``allow_config_change``.
    """
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except ValueError as error:
            print(f"{path}: unreadable ({error}); not compared, rewritten")
            saved = None
        changes = config_changes(saved, config) if saved is not None else []
        if changes and not allow_config_change:
            raise ConfigChangedError(
                f"workdir {workdir} was started with another config ({path}); changed fields:\n  "
                + "\n  ".join(changes)
                + "\nuse another --workdir, or pass --allow_config_change to continue anyway"
            )
        if changes:
            print(f"{workdir}: continuing with a changed config (allowed):\n  "
                  + "\n  ".join(changes))
    temporary = path + ".tmp"
    with open(temporary, "w", encoding="utf-8") as f:
        json.dump(config_json(config), f, indent=1)
    os.replace(temporary, path)
