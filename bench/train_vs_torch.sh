#!/usr/bin/env bash
# Trains the same Qwen2 config with the same batch, sequence length and steps in candle
# (model/examples/bench.rs) and in PyTorch + transformers, on this CPU, in one run; prints
# training tokens/s, greedy generation tokens/s (KV cache) and peak RSS for both, and the
# ratios. Then checks that our checkpoint loads in transformers with the same logits.
# Not part of CI: it installs torch and transformers from PyPI into bench/.venv.
#
#   bench/train_vs_torch.sh            # defaults below; override with env vars
set -euo pipefail
cd "$(dirname "$0")/.."
VOCAB=${VOCAB:-4096} HIDDEN=${HIDDEN:-256} LAYERS=${LAYERS:-4} HEADS=${HEADS:-8}
KV=${KV:-2} INTER=${INTER:-704} SEQ=${SEQ:-256} BATCH=${BATCH:-8} STEPS=${STEPS:-10} GEN=${GEN:-128}
THREADS=${THREADS:-$(nproc)}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
ARGS="--vocab $VOCAB --hidden $HIDDEN --layers $LAYERS --heads $HEADS --kv-heads $KV --inter $INTER --seq $SEQ --batch $BATCH --steps $STEPS --gen $GEN"
OUT=${OUT:-$(mktemp -d)}

VENV=bench/.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q torch transformers safetensors numpy || {
    echo "could not install torch/transformers from PyPI" >&2; exit 2; }
fi
PY="$VENV/bin/python"

# PROFILE=dev reuses a debug build (dependencies are opt-level 2 there; our crate is not).
PROFILE=${PROFILE:-release}
cargo build -q --profile "$PROFILE" -p davinci-model --example bench
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
DIR=$PROFILE; [ "$PROFILE" = dev ] && DIR=debug
CANDLE=$("$CARGO_TARGET_DIR/$DIR/examples/bench" $ARGS --save "$OUT/ckpt")
TORCH=$("$PY" bench/torch_bench.py $ARGS --threads "$THREADS")
echo "$CANDLE"
echo "$TORCH"
"$PY" - "$CANDLE" "$TORCH" <<'PYEOF'
import json, sys
c, t = json.loads(sys.argv[1]), json.loads(sys.argv[2])
for k in ["train_tokens_per_s", "gen_tokens_per_s", "peak_rss_mib"]:
    print(f"{k:20s} candle {c[k]:10.1f}  torch {t[k]:10.1f}  candle/torch {c[k] / t[k]:.3f}")
PYEOF
"$PY" bench/check_transformers_logits.py "$OUT/ckpt"
