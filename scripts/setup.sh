#!/usr/bin/env bash
# Installs the system packages the pipeline and its tests need, and makes sure a Docker
# engine answers. Idempotent, and quick when everything is already in place.
#
# Environment:
#   LEDGER_SKIP_DOCKER=1       do not install or start the Docker engine
#   LEDGER_SKIP_BROWSER=1      do not install the headless browser of the `ledger ui` tests
#   DOCKER_WAIT_SECS=N         how long to wait for a freshly started engine (default 60)
#   DOCKERD_LOG=path           where a dockerd started here logs (default /tmp/dockerd.log)
set -euo pipefail

need=()
command -v git >/dev/null || need+=(git)
command -v cc >/dev/null || need+=(build-essential)
# The SWE-bench harness venv (scripts/swebench-harness.sh).
python3 -m venv --help >/dev/null 2>&1 || need+=(python3-venv)
if [ "${LEDGER_SKIP_BROWSER:-}" != "1" ]; then
    # The browser tests of `ledger ui` (tests/ui.rs) drive Debian's chromium through
    # chromedriver; fonts so its screenshots show text.
    command -v chromium >/dev/null || need+=(chromium)
    command -v chromedriver >/dev/null || need+=(chromium-driver)
    [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
fi
if [ "${LEDGER_SKIP_DOCKER:-}" != "1" ]; then
    # `docker` alone may be a client without an engine; the engine is `dockerd`.
    command -v dockerd >/dev/null || need+=(docker.io)
    command -v debootstrap >/dev/null || need+=(debootstrap)
fi

sudo=()
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null; then
    sudo=(sudo)
fi

if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

if [ "${LEDGER_SKIP_DOCKER:-}" = "1" ]; then
    exit 0
fi

# Start the engine when none answers: no bridge and no iptables (containers run with
# `--network none`), in the background, logging to a file.
if ! docker info >/dev/null 2>&1; then
    log="${DOCKERD_LOG:-/tmp/dockerd.log}"
    echo "setup: no Docker engine answers; starting dockerd (log: $log)" >&2
    "${sudo[@]}" nohup dockerd --bridge=none --iptables=false >>"$log" 2>&1 </dev/null &
    wait_secs="${DOCKER_WAIT_SECS:-60}"
    for _ in $(seq 1 "$wait_secs"); do
        if docker info >/dev/null 2>&1; then
            break
        fi
        sleep 1
    done
    if ! docker info >/dev/null 2>&1; then
        echo "setup: dockerd did not answer within ${wait_secs}s; last lines of $log:" >&2
        tail -n 20 "$log" >&2 || true
        exit 1
    fi
    echo "setup: Docker engine is up" >&2
fi
