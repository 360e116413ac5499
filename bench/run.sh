#!/usr/bin/env bash
# Runs the ledger benchmark (benches/ledger.rs): ingest vs b3sum + cp (+ sync), event appends,
# and `ledger verify`, printing one comparison table.
#
#   bench/run.sh                          # full run: a 1 GiB file, 200,000 batched events
#   BENCH_INGEST_MIB=64 bench/run.sh      # quick run on a 64 MiB file
#   bench/run.sh big                      # a 1,000,000-event, 10,000-artifact ledger
#                                         # (benches/big_ledger.rs): creation, verify vs b3sum,
#                                         # lineage, replay
#
# Other knobs: BENCH_EVENTS (batched events per run), BENCH_UNBATCHED_EVENTS, BENCH_ROUNDS;
# for `big`: BIG_EVENTS, BIG_FILES, BIG_SHARDS, BIG_FILE_KIB, BIG_ROUNDS, BIG_KEEP, BIG_REUSE.
# The numbers are only as quiet as the machine: stop other heavy work (builds) first.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# cargo-installed tools land here; make sure the bench finds b3sum there.
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"

if ! command -v b3sum >/dev/null 2>&1; then
    echo "b3sum not found: installing it with \`cargo install b3sum --locked\`" >&2
    cargo install b3sum --locked
fi

if [ "${1:-}" = big ]; then
    shift
    exec cargo bench --bench big_ledger "$@"
fi
exec cargo bench --bench ledger "$@"
