#!/usr/bin/env bash
# The project's test command (README and .ci/run): installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The environment tests (env/) need a real Docker engine: setup starts one, and with this set
# a missing engine fails them instead of skipping them.
export LEDGER_REQUIRE_DOCKER=1
# The `ledger ui` browser tests need chromium + chromedriver (setup installs them): with this
# set, a missing browser fails them instead of skipping them.
export LEDGER_REQUIRE_BROWSER=1
# One base-image cache for every test binary, so debootstrap runs once per machine (builders
# of the same cache wait for each other).
export DAVINCI_ENV_CACHE="${DAVINCI_ENV_CACHE:-$PWD/target/env-cache}"
# The official SWE-bench harness (swebench==5.0.2) in a venv, for the grading parity test;
# with this set a missing harness fails that test instead of skipping it.
export SWEBENCH_HARNESS_PYTHON="$(bash scripts/swebench-harness.sh)"
export SWEBENCH_REQUIRE_HARNESS=1
# A one-node Slurm cluster (slurm-wlm + munge, started by hand) for the Slurm executor's
# tests; with this set a missing cluster fails them instead of skipping them.
bash scripts/slurm.sh
export LEDGER_REQUIRE_SLURM=1
# NVRTC (from PyPI; no GPU needed) for the gpu crate's kernel-compilation test; with this set a
# missing NVRTC fails it instead of skipping it.
nvrtc_lib="$(bash scripts/nvrtc.sh)"
export LD_LIBRARY_PATH="$nvrtc_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export GPU_REQUIRE_NVRTC=1
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --no-fail-fast "$@"
