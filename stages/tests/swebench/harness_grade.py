"""Grades test logs with the official SWE-bench harness (swebench==5.0.2), for the parity
test: one JSON case per stdin line in, one JSON verdict per line out.

A case: id, parser (harness registry name), output (the test command's output), file (the
eval log as the harness's eval script would leave it), f2p, p2p, timed_out. The verdict
holds what the harness's own functions return: the parser's status map (in dict order), the
get_logs_eval map and flag, the get_eval_tests_report lists and get_resolution_status.
A run killed by its time limit is an EvaluationError in run_instance: never resolved.
"""

import json
import os
import sys
import tempfile

from swebench.harness.constants import FAIL_TO_PASS, PASS_TO_PASS, EvalType, ResolvedStatus
from swebench.harness.grading import get_eval_tests_report, get_logs_eval, get_resolution_status
from swebench.harness.log_parsers import PARSER_REGISTRY
from swebench.types import TestSpec


def grade(case):
    out = {"id": case["id"]}
    parser = PARSER_REGISTRY[case["parser"]]
    try:
        out["parsed"] = [[k, v] for k, v in parser(case["output"], None).items()]
    except Exception as e:  # the harness's own failure is a verdict too
        out["parse_error"] = type(e).__name__
    spec = TestSpec(
        instance_id=case["id"],
        image="",
        eval_script_list=[],
        repo="",
        version="",
        FAIL_TO_PASS=case["f2p"],
        PASS_TO_PASS=case["p2p"],
        log_parser=case["parser"],
        eval_type=EvalType.PASS_AND_FAIL.value,
    )
    fd, path = tempfile.mkstemp(suffix=".txt")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(case["file"])
    try:
        status_map, found = get_logs_eval(spec, path)
        out["found"] = found
        out["map"] = [[k, v] for k, v in status_map.items()]
        report = get_eval_tests_report(
            status_map, {FAIL_TO_PASS: case["f2p"], PASS_TO_PASS: case["p2p"]}
        )
        out["f2p"] = report[FAIL_TO_PASS]
        out["p2p"] = report[PASS_TO_PASS]
        resolution = get_resolution_status(report) if found else ResolvedStatus.NO.value
        out["resolution"] = resolution
        out["resolved"] = (
            found and resolution == ResolvedStatus.FULL.value and not case["timed_out"]
        )
    except Exception as e:
        out["error"] = type(e).__name__
        out["resolved"] = False
    finally:
        os.unlink(path)
    return out


for line in sys.stdin:
    if line.strip():
        print(json.dumps(grade(json.loads(line))), flush=True)
