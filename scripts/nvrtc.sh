#!/usr/bin/env bash
# Installs NVRTC (NVIDIA's run-time CUDA compiler, from PyPI's nvidia-cuda-nvrtc-cu12; no GPU and
# no driver needed) under target/, and prints the directory of its libraries, for
# LD_LIBRARY_PATH. The gpu crate's kernel test compiles every kernel with it.
set -euo pipefail
cd "$(dirname "$0")/.."
version=12.8.93
dir="$PWD/target/nvrtc-$version"
lib="$dir/nvidia/cuda_nvrtc/lib"
if [ ! -e "$lib/libnvrtc.so.12" ]; then
    echo "nvrtc: installing nvidia-cuda-nvrtc-cu12==$version into $dir" >&2
    python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$dir" \
        "nvidia-cuda-nvrtc-cu12==$version" >&2
fi
echo "$lib"
