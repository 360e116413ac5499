#!/usr/bin/env bash
# The project's test command (README and .ci/run): installs what the tests need, then runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install cargo-nextest --locked
fi
cargo nextest run --workspace --no-fail-fast "$@"
