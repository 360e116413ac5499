#!/usr/bin/env bash
# Evaluated instances per minute with N parallel containers: the `rollout` stage grading gold
# patches (apply + full test suite per instance, each in a fresh container) on instances
# synthesized from the quickstart's three PyPI projects, at N = 1, 2, 4 (BENCH_EVAL_PARALLEL),
# and HumanEval canonical programs per minute at the same N. Every step executes for real:
# each N is a different action, rollouts re-perform recorded container actions, and each N's
# HumanEval programs get their own time limit (part of the observation key), so none is
# answered from an earlier N's record.
#
#   bench/eval.sh            # needs a Docker engine (scripts/setup.sh) and PyPI
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
ledger="$PWD/target/release/ledger"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
parallel=${BENCH_EVAL_PARALLEL:-1 2 4}

{
    printf '[experiment]\nname = "eval-bench"\nseed = 3\n\n[[stage]]\n'
    awk 'BEGIN{p=0} /^\[\[stage\]\]$/{if(p==1)exit} /^id = "bugs"/{p=1} p' configs/quickstart.toml \
        | sed 's/^bugs_per_package = .*/bugs_per_package = 4/; s/^candidates_per_package = .*/candidates_per_package = 12/'
    for n in $parallel; do
        printf '\n[[stage]]\nid = "gold-%s"\nuses = "rollout"\ninputs = { instances = "bugs.instances" }\npolicy = { kind = "gold" }\nparallel = %s\n' "$n" "$n"
        printf '\n[[stage]]\nid = "heval-%s"\nuses = "humaneval"\npolicy = "canonical"\nlimit = 40\nparallel = %s\ntimeout_secs = %s\n' "$n" "$n" "$((10 + n))"
    done
} > "$work/bench.toml"

"$ledger" --ledger "$work/.ledger" run --no-progress --json "$work/bench.toml" > "$work/report.json"
python3 - "$work/report.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
def metric(step, name):
    return dict((k, v) for k, v in step["metrics"]).get(name)
print(f"{'what':<44} {'N':>3} {'items':>6} {'seconds':>8} {'per minute':>11}")
for s in r["steps"]:
    if s["node"].startswith("gold-"):
        n, items = s["node"].split("-")[1], metric(s, "rollouts")
        what = "SWE-style instances graded (gold patches)"
    elif s["node"].startswith("heval-"):
        n, items = s["node"].split("-")[1], metric(s, "samples")
        what = "HumanEval programs executed (canonical)"
    else:
        print(f"{s['node'] + ' (' + s['stage'] + ')':<44} {'':>3} {'':>6} {s['seconds']:>8.1f}")
        continue
    print(f"{what:<44} {n:>3} {int(items):>6} {s['seconds']:>8.1f} {items / s['seconds'] * 60:>11.1f}")
PY
