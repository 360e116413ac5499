#!/usr/bin/env bash
# The official SWE-bench harness, swebench==5.0.2 from PyPI, in a virtual environment
# (target/swebench-5.0.2, or $SWEBENCH_HARNESS_VENV) for the grading parity tests and bench.
# Idempotent; prints the environment's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${SWEBENCH_HARNESS_VENV:-$PWD/target/swebench-5.0.2}"
if ! "$venv/bin/python" -c 'import sys, swebench; sys.exit(swebench.__version__ != "5.0.2")' >/dev/null 2>&1; then
    echo "swebench-harness: installing swebench==5.0.2 into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check swebench==5.0.2 >&2
fi
echo "$venv/bin/python"
