#!/usr/bin/env bash
# Mutation runs of rl_jax's math and dispatch code, one module group at a time (one process).
#   [MUTATION_GROUPS="advantages mismatch"] nice -n 10 tools/mutation.sh [report_dir] [max_mutants_per_module] > mutation.log 2>&1 &
# Each group mutates its modules against the tests of that concept; reports in report_dir.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-/tmp/mutation}
MAX=${2:-25}
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
MUTATION_GROUPS=${MUTATION_GROUPS:-"shaping registry step advantages mismatch losses kl rewards"}
run() {  # name, modules, tests, [pytest args]
  case " $MUTATION_GROUPS " in *" $1 "*) ;; *) return ;; esac
  nice -n 10 "$PY" tools/mutation.py --modules $2 --tests $3 --pytest-args "${4:-}" \
    --max-mutants "$MAX" --timeout 240 --report "$OUT/$1"
}
run shaping rl_jax/algorithm/shaping.py tests/test_option_dispatch.py "-k shaping"
run advantages rl_jax/advantages.py tests/test_advantages.py
run mismatch rl_jax/mismatch.py tests/test_mismatch.py
run registry rl_jax/algorithm/registry.py \
  "tests/test_option_dispatch.py tests/test_loop.py::test_a_value_that_would_be_ignored_is_refused" \
  "-k 'not shaping'"  # the registry's flags (critic, whitens, uses_agg) are what check_config reads
run step "rl_jax/algorithm/step.py::advantages_and_returns,make_prepare,make_loss" \
  tests/test_option_dispatch.py "-k 'not update'"
run losses rl_jax/losses.py "tests/test_losses.py tests/test_policy_variants.py"
run kl rl_jax/kl.py tests/test_kl.py
run rewards rl_jax/rewards.py tests/test_rewards.py
