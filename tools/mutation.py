"""A small mutation tester for rl_jax's math and dispatch code (``ast``-based, no dependencies).

    nice -n 10 .venv/bin/python tools/mutation.py \
        --modules rl_jax/advantages.py rl_jax/algorithm/shaping.py \
        --tests tests/test_advantages.py --max-mutants 40 --timeout 300 --report /tmp/mutation

For each module (optionally ``path::fn1,fn2`` to mutate only those functions) every mutation site
is listed (comparison flipped, ``+``/``-`` and ``*``/``/`` swapped, ``min``/``max`` and
``minimum``/``maximum`` swapped, a number changed to ``c + 1`` or ``0``, an ``if`` condition
negated, a returned call replaced by another ``return``'s call of the same function, a term of a
returned sum dropped, a keyword argument dropped, a string compared with ``==`` changed). Each
mutant is written over the module (``ast.unparse`` of the changed tree), the tests run
(``pytest -x -q -p no:cacheprovider``, in a subprocess with a timeout) and the original text is
written back in a ``finally`` (and on SIGINT/SIGTERM). A mutant is *killed* when the tests fail,
*survived* when they pass, *timeout* when they run past ``--timeout``. The report
(``<report>.json`` and ``<report>.txt``) is rewritten after every mutant.

Mutants are run module by module, in the order given; ``--max-mutants`` caps each module
(a seeded sample spread over the file when there are more sites).
"""

from __future__ import annotations

import argparse
import ast
import copy
import dataclasses
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

COMPARE_SWAP = {
    ast.Lt: ast.GtE, ast.GtE: ast.Lt, ast.Gt: ast.LtE, ast.LtE: ast.Gt,
    ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.In: ast.NotIn, ast.NotIn: ast.In,
    ast.Is: ast.IsNot, ast.IsNot: ast.Is,
}
BOUNDARY = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt}
BINOP_SWAP = {
    ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult,
    ast.FloorDiv: ast.Div, ast.Pow: ast.Mult, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd,
}
NAME_SWAP = {
    "min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum",
    "sum": "mean", "mean": "sum", "argmax": "argmin", "argmin": "argmax",
    "exp": "expm1", "expm1": "exp", "log": "log1p", "log1p": "log",
}


@dataclasses.dataclass
class Mutant:
    module: str
    line: int
    function: str
    description: str
    site: int  # index of the node in the walk order
    kind: str
    status: str = "pending"
    seconds: float = 0.0


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def _functions(tree: ast.AST) -> dict[int, str]:
    """id(node) -> the name of the innermost top-level function holding it ("" outside)."""
    owner = {}
    for top in tree.body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(top):
                owner[id(node)] = top.name
    return owner


def _mutations(node: ast.AST, parent_fn: ast.AST | None):
    """(kind, description, apply(node_copy, fn_copy)) for each mutation of ``node``."""
    out = []
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            t = type(op)
            if t in COMPARE_SWAP:
                new = COMPARE_SWAP[t]
                out.append(("compare", f"{t.__name__} -> {new.__name__}",
                            lambda n, f, i=i, new=new: n.ops.__setitem__(i, new())))
            if t in BOUNDARY:
                new = BOUNDARY[t]
                out.append(("boundary", f"{t.__name__} -> {new.__name__}",
                            lambda n, f, i=i, new=new: n.ops.__setitem__(i, new())))
        if len(node.ops) == 1 and isinstance(node.ops[0], (ast.Eq, ast.NotEq)):
            for side in ("left", "comparators"):
                value = node.left if side == "left" else node.comparators[0]
                if isinstance(value, ast.Constant) and isinstance(value.value, str):
                    def apply(n, f, side=side):
                        target = n.left if side == "left" else n.comparators[0]
                        target.value = target.value + "_mutant"
                    out.append(("string", f"{value.value!r} -> {value.value + '_mutant'!r}", apply))
    elif isinstance(node, ast.BinOp) and type(node.op) in BINOP_SWAP:
        new = BINOP_SWAP[type(node.op)]
        out.append(("binop", f"{type(node.op).__name__} -> {new.__name__}",
                    lambda n, f, new=new: setattr(n, "op", new())))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not, ast.Invert)):
        out.append(("unary", f"drop {type(node.op).__name__}", "replace_with_operand"))
    elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
        c = node.value
        out.append(("number", f"{c!r} -> {c + 1!r}", lambda n, f: setattr(n, "value", n.value + 1)))
        if c != 0:
            out.append(("number", f"{c!r} -> 0",
                        lambda n, f: setattr(n, "value", type(n.value)(0))))
    elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
        out.append(("bool", f"{node.value} -> {not node.value}",
                    lambda n, f: setattr(n, "value", not n.value)))
    elif isinstance(node, ast.Name) and node.id in NAME_SWAP and isinstance(node.ctx, ast.Load):
        new = NAME_SWAP[node.id]
        if node.id in ("min", "max"):
            out.append(("call", f"{node.id} -> {new}", lambda n, f, new=new: setattr(n, "id", new)))
    elif isinstance(node, ast.Attribute) and node.attr in NAME_SWAP:
        new = NAME_SWAP[node.attr]
        out.append(("call", f".{node.attr} -> .{new}",
                    lambda n, f, new=new: setattr(n, "attr", new)))
    elif isinstance(node, (ast.If, ast.IfExp, ast.While)):
        out.append(("condition", "negate condition",
                    lambda n, f: setattr(n, "test", ast.UnaryOp(ast.Not(), n.test))))
    elif isinstance(node, ast.Call):
        for i, kw in enumerate(node.keywords):
            if kw.arg is not None:
                out.append(("keyword", f"drop {kw.arg}=",
                            lambda n, f, i=i: n.keywords.pop(i)))
    elif isinstance(node, ast.Return) and node.value is not None:
        value = node.value
        if isinstance(value, ast.BinOp) and isinstance(value.op, (ast.Add, ast.Sub, ast.Mult)):
            out.append(("return_term", "return the left operand only",
                        lambda n, f: setattr(n, "value", n.value.left)))
            out.append(("return_term", "return the right operand only",
                        lambda n, f: setattr(n, "value", n.value.right)))
        if isinstance(value, ast.Call) and parent_fn is not None:
            calls = [r for r in ast.walk(parent_fn) if isinstance(r, ast.Return)
                     and isinstance(r.value, ast.Call)]
            index = next(i for i, r in enumerate(calls) if r is node)
            if len(calls) > 1:
                other = (index + 1) % len(calls)

                def apply(n, f, other=other):
                    others = [r for r in ast.walk(f) if isinstance(r, ast.Return)
                              and isinstance(r.value, ast.Call)]
                    n.value = copy.deepcopy(others[other].value)
                out.append(("dispatch", f"return the call of line {calls[other].lineno} instead",
                            apply))
    return out


def list_mutants(path: str, functions: set[str] | None) -> list[tuple[Mutant, object]]:
    tree = ast.parse(Path(path).read_text())
    skip, owner = _docstring_nodes(tree), _functions(tree)
    fn_nodes = {top.name: top for top in tree.body
                if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef))}
    result = []
    for site, node in enumerate(ast.walk(tree)):
        if id(node) in skip or not hasattr(node, "lineno"):
            continue
        fn = owner.get(id(node), "")
        if functions is not None and fn not in functions:
            continue
        if fn == "" and isinstance(node, ast.Constant):
            continue  # module-level constants (tuples of option names, defaults)
        for k, (kind, desc, apply) in enumerate(_mutations(node, fn_nodes.get(fn))):
            result.append((Mutant(path, node.lineno, fn, desc, site, kind), (k, apply)))
    return result


def mutant_source(path: str, site: int, k: int, apply) -> str:
    tree = ast.parse(Path(path).read_text())
    owner = _functions(tree)
    fn_nodes = {top.name: top for top in tree.body
                if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef))}
    parents = {}
    for parent in ast.walk(tree):
        for child in ast.iter_child_nodes(parent):
            parents[id(child)] = parent
    node = list(ast.walk(tree))[site]
    fn = fn_nodes.get(owner.get(id(node), ""))
    if apply == "replace_with_operand":
        parent = parents[id(node)]
        for field, value in ast.iter_fields(parent):
            if value is node:
                setattr(parent, field, node.operand)
            elif isinstance(value, list):
                for i, item in enumerate(value):
                    if item is node:
                        value[i] = node.operand
    else:
        apply(node, fn)
    ast.fix_missing_locations(tree)
    return ast.unparse(tree) + "\n"


class Restorer:
    """Writes the original text back on exit, SIGINT and SIGTERM."""

    def __init__(self):
        self.saved: dict[str, str] = {}
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame):
        self.restore()
        print(f"signal {signum}: restored {list(self.saved)}", flush=True)
        sys.exit(128 + signum)

    def write(self, path: str, text: str):
        if path not in self.saved:
            self.saved[path] = Path(path).read_text()
        Path(path).write_text(text)

    def restore(self):
        for path, text in self.saved.items():
            Path(path).write_text(text)
        self.saved.clear()


def run_tests(tests: list[str], timeout: float, extra: list[str]) -> tuple[str, float]:
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *extra, *tests]
    start = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the pytest we started, and its children
        proc.wait()
        return "timeout", time.time() - start
    return ("survived" if rc == 0 else "killed"), time.time() - start


def write_report(prefix: str, mutants: list[Mutant], command: str):
    Path(prefix + ".json").write_text(json.dumps(
        {"command": command, "mutants": [dataclasses.asdict(m) for m in mutants]}, indent=1))
    lines = [f"command: {command}", ""]
    modules = list(dict.fromkeys(m.module for m in mutants))
    for module in modules:
        ms = [m for m in mutants if m.module == module and m.status != "pending"]
        counts = {s: sum(m.status == s for m in ms) for s in ("killed", "survived", "timeout")}
        lines.append(f"{module}: {len(ms)} mutants, " + ", ".join(f"{v} {k}" for k, v in
                                                                 counts.items()))
    lines.append("")
    for m in mutants:
        if m.status in ("survived", "timeout"):
            lines.append(f"{m.status.upper():8} {m.module}:{m.line} [{m.function}] {m.kind}: "
                         f"{m.description}")
    Path(prefix + ".txt").write_text("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modules", nargs="+", required=True,
                        help="files to mutate, optionally path::fn1,fn2")
    parser.add_argument("--tests", nargs="+", required=True, help="pytest targets")
    parser.add_argument("--pytest-args", default="", help="extra pytest arguments, one string")
    parser.add_argument("--max-mutants", type=int, default=50, help="per module")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per mutant")
    parser.add_argument("--kinds", default="", help="comma-separated mutation kinds to keep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", default="mutation_report")
    parser.add_argument("--list", action="store_true", help="list the mutants, run nothing")
    args = parser.parse_args(argv)
    command = " ".join([Path(sys.executable).name, *sys.argv])
    extra = shlex.split(args.pytest_args)

    plan: list[tuple[Mutant, object]] = []
    for spec in args.modules:
        path, _, fns = spec.partition("::")
        found = list_mutants(path, set(fns.split(",")) if fns else None)
        if args.kinds:
            found = [f for f in found if f[0].kind in args.kinds.split(",")]
        if len(found) > args.max_mutants:
            keep = sorted(random.Random(args.seed).sample(range(len(found)), args.max_mutants))
            found = [found[i] for i in keep]
        plan.extend(found)
    mutants = [m for m, _ in plan]
    if args.list:
        for m in mutants:
            print(f"{m.module}:{m.line} [{m.function}] {m.kind}: {m.description}")
        return 0

    restorer = Restorer()
    try:
        status, seconds = run_tests(args.tests, args.timeout * 3, extra)
        print(f"baseline: {status} in {seconds:.0f}s", flush=True)
        if status != "survived":
            print("the tests fail (or time out) on the unmutated code: nothing to measure")
            return 1
        for mutant, (k, apply) in plan:
            try:
                text = mutant_source(mutant.module, mutant.site, k, apply)
                compile(text, mutant.module, "exec")
            except Exception as error:  # an invalid mutant: not counted
                mutant.status, mutant.description = "invalid", f"{mutant.description} ({error})"
                continue
            try:
                restorer.write(mutant.module, text)
                mutant.status, mutant.seconds = run_tests(args.tests, args.timeout, extra)
            finally:
                restorer.restore()
            print(f"{mutant.status:8} {mutant.seconds:5.0f}s {mutant.module}:{mutant.line} "
                  f"[{mutant.function}] {mutant.kind}: {mutant.description}", flush=True)
            write_report(args.report, mutants, command)
    finally:
        restorer.restore()
        write_report(args.report, mutants, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
