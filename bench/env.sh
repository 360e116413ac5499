#!/usr/bin/env bash
# Compares our bollard-based env::Container with the docker CLI doing the same work on the same
# base image with the same container settings (env/benches/containers.rs), in one run, and
# prints one table: start-to-first-exec latency, exec round-trips/s, rollouts/min at N parallel.
#
#   bench/env.sh                                   # defaults: ~2-3 minutes
#   BENCH_ENV_STARTS=40 BENCH_ENV_EXECS=500 BENCH_ENV_ROLLOUTS=5 BENCH_ENV_PARALLEL=1,2,4,8 bench/env.sh
#
# Needs a Docker engine (started with scripts/setup.sh when `docker info` fails) and the base
# image, built once by debootstrap and cached under target/env-cache (DAVINCI_ENV_CACHE).
# The numbers are only as quiet as the machine: stop other heavy work (builds) first.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! docker info >/dev/null 2>&1; then
    echo "no Docker engine answers: starting one with scripts/setup.sh" >&2
    bash scripts/setup.sh
fi

exec cargo bench -p davinci-env --bench containers "$@"
