#!/usr/bin/env bash
# Trains the same Qwen2 config with the same batch, sequence length and steps in candle
# (model/examples/bench.rs) and in PyTorch + transformers (bench/torch_bench.py), on this CPU,
# in one run; prints one table: training tokens/s, greedy generation tokens/s (KV cache) and
# peak RSS for both, their ratios and the targets. Then checks that our checkpoint loads in
# transformers with the same logits.
# Not part of CI: it installs torch (the CPU wheel when download.pytorch.org answers, else the
# PyPI wheel) and transformers into bench/.venv.
#
#   bench/train_vs_torch.sh                 # defaults below; override with env vars
#   REPEAT=5 THREADS=1 bench/train_vs_torch.sh
#
# Fairness: both sides get the same config (tied embeddings, rope_theta 1e4), batch, sequence
# length, steps, AdamW settings and global-norm clipping, f32, one untimed warm-up step and an
# untimed 8-token generation warm-up, and THREADS threads (RAYON_NUM_THREADS for candle;
# torch.set_num_threads, OMP_NUM_THREADS and MKL_NUM_THREADS for torch). Torch uses
# transformers' default attention, SDPA (TORCH_ATTN=eager for the eager one). The two run one
# after the other, REPEAT times alternating; the table shows medians. Peak RSS includes each
# runtime's own libraries (torch's CUDA-enabled wheel maps a lot); the "after import" row is
# that part. The numbers are only as quiet as the machine: the load average is printed.
set -euo pipefail
cd "$(dirname "$0")/.."
VOCAB=${VOCAB:-4096} HIDDEN=${HIDDEN:-256} LAYERS=${LAYERS:-4} HEADS=${HEADS:-8}
KV=${KV:-2} INTER=${INTER:-704} SEQ=${SEQ:-256} BATCH=${BATCH:-8} STEPS=${STEPS:-10} GEN=${GEN:-128}
THREADS=${THREADS:-$(nproc)} REPEAT=${REPEAT:-3} TORCH_ATTN=${TORCH_ATTN:-sdpa}
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
ARGS="--vocab $VOCAB --hidden $HIDDEN --layers $LAYERS --heads $HEADS --kv-heads $KV --inter $INTER --seq $SEQ --batch $BATCH --steps $STEPS --gen $GEN"
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"

VENV=bench/.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --timeout 20 --retries 1 --index-url https://download.pytorch.org/whl/cpu torch 2>/dev/null ||
    echo "download.pytorch.org did not answer: installing torch from PyPI (CUDA-enabled, larger)" >&2
  "$VENV/bin/pip" install -q torch transformers safetensors numpy || {
    rm -rf "$VENV"; echo "could not install torch/transformers from PyPI" >&2; exit 2; }
fi
PY="$VENV/bin/python"

# PROFILE=dev reuses a debug build (dependencies are opt-level 2 there; our crate is not).
PROFILE=${PROFILE:-release}
cargo build -q --profile "$PROFILE" -p davinci-model --example bench
CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
DIR=$PROFILE; [ "$PROFILE" = dev ] && DIR=debug
: >"$OUT/candle.jsonl"; : >"$OUT/torch.jsonl"
for i in $(seq "$REPEAT"); do
  SAVE=(); [ "$i" = 1 ] && SAVE=(--save "$OUT/ckpt")
  "$CARGO_TARGET_DIR/$DIR/examples/bench" $ARGS "${SAVE[@]}" | tee -a "$OUT/candle.jsonl"
  "$PY" bench/torch_bench.py $ARGS --threads "$THREADS" --attn "$TORCH_ATTN" | tee -a "$OUT/torch.jsonl"
done
"$PY" - "$OUT/candle.jsonl" "$OUT/torch.jsonl" "$ARGS" "$PROFILE" <<'PYEOF'
import json, os, statistics, sys
runs = [[json.loads(l) for l in open(f) if l.strip()] for f in sys.argv[1:3]]
c, t = runs
med = lambda rs, k: statistics.median(r[k] for r in rs)
print()
print(f"config: {sys.argv[3]}; f32; {c[0]['threads']} threads each; candle {sys.argv[4]} build; "
      f"torch {t[0]['torch']} ({t[0]['attn']} attention); {len(c)} runs each, medians; "
      f"load average {os.getloadavg()[0]:.2f}")
rows = [
    ("train tokens/s", "train_tokens_per_s", True, ">= 1.00 (at least torch)"),
    ("generation tokens/s", "gen_tokens_per_s", True, ">= 1.00 (at least torch)"),
    ("peak RSS MiB", "peak_rss_mib", False, "reported (lower is better)"),
    ("  RSS after import MiB", "import_rss_mib", False, "(runtime libraries alone)"),
]
print(f"{'metric':24s} {'candle':>10s} {'torch':>10s} {'candle/torch':>13s}  target")
misses = 0
for name, k, speed, target in rows:
    cv, tv = med(c, k), med(t, k)
    ratio = cv / tv if tv else float("nan")
    flag = ""
    if speed:
        flag = "  ok" if ratio >= 1.0 else "  MISS"
        misses += ratio < 1.0
    print(f"{name:24s} {cv:10.1f} {tv:10.1f} {ratio:13.3f}  {target}{flag}")
spread = lambda rs, k: f"{min(r[k] for r in rs):.0f}-{max(r[k] for r in rs):.0f}"
print(f"ranges: train candle {spread(c, 'train_tokens_per_s')}, torch {spread(t, 'train_tokens_per_s')}; "
      f"generation candle {spread(c, 'gen_tokens_per_s')}, torch {spread(t, 'gen_tokens_per_s')}")
print(f"final loss after the timed steps: candle {c[0]['final_loss']:.4f}, torch {t[0]['final_loss']:.4f} "
      "(random tokens, different initial weights: ln(vocab) is the expectation)")
PYEOF
"$PY" bench/check_transformers_logits.py "$OUT/ckpt"
