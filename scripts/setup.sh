#!/usr/bin/env bash
# Installs the system packages the pipeline and its tests need. Idempotent.
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v cc >/dev/null || need+=(build-essential)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}"
fi
