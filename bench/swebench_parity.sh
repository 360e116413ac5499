#!/usr/bin/env bash
# Grading parity with the official SWE-bench harness (swebench==5.0.2): real container runs
# of the pytest (Flask), Django and SymPy suites plus adversarial texts, graded by both under
# every applicable parser. Prints the table: logs x parser, agree / refused / differ, and
# false positives (ours, target 0; the harness's on the adversarial texts).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export SWEBENCH_HARNESS_PYTHON="$(bash scripts/swebench-harness.sh)"
export SWEBENCH_REQUIRE_HARNESS=1 LEDGER_REQUIRE_DOCKER=1
cargo nextest run -p davinci-stages --test swebench grading_parity_with_the_official_harness --no-capture
