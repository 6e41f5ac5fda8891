#!/usr/bin/env python3
"""The benchmark harness is code too: a --quick run of every suite (tiny
sizes, one run) must produce its report files, the JSON must parse, and
every figure must be present and positive (counts of failures, errors and
retransmits: present and zero-or-more). No timing threshold is asserted.

Usage: test_bench_quick.py BUILD_DIR"""
import glob
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
BUILD = sys.argv[1]
SUITES = ["relay", "h2", "grpc", "tunnel"]
# Counters of things that went wrong: present, and zero or more.
MAY_BE_ZERO = ("fail", "error", "timeout", "retransmit", "status_3", "status_4", "status_5", "not_run")


def figures(node, path=""):
    """Yields (path, metric name, median) for every summarised figure."""
    if isinstance(node, dict):
        if "median" in node and "n" in node:
            yield path, path.rsplit(".", 1)[-1], node["median"]
            return
        for k, v in node.items():
            yield from figures(v, f"{path}.{k}" if path else k)


def main():
    out = tempfile.mkdtemp(prefix="ztm-bench-quick-")
    cmd = [os.path.join(ROOT, "bench", "run"), *SUITES, "--quick", "--runs", "1", "--build-dir", BUILD,
           "--no-build", "--results-dir", out]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    problems = []
    if r.returncode != 0:
        problems.append(f"bench/run exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}")
    counted = 0
    for suite in SUITES:
        js = glob.glob(os.path.join(out, f"{suite}-*.json"))
        mds = glob.glob(os.path.join(out, f"{suite}-*.md"))
        if len(js) != 1 or len(mds) != 1 or not os.path.exists(os.path.join(out, f"latest-{suite}.md")):
            problems.append(f"{suite}: report files missing in {out}: {sorted(os.listdir(out))}")
            continue
        if os.path.getsize(mds[0]) < 200:
            problems.append(f"{suite}: the markdown report is nearly empty")
        try:
            d = json.load(open(js[0]))
        except ValueError as e:
            problems.append(f"{suite}: the JSON report does not parse: {e}")
            continue
        for key in ("machine", "tools", "commands", "summary", "runs_raw"):
            if not d.get(key):
                problems.append(f"{suite}: the JSON report has no {key}")
        figs = list(figures(d.get("summary", {})))
        if not figs:
            problems.append(f"{suite}: no figures in the summary")
        for path, metric, median in figs:
            counted += 1
            if not isinstance(median, (int, float)):
                problems.append(f"{suite}: {path} is not a number: {median!r}")
            elif any(w in metric for w in MAY_BE_ZERO):
                if median < 0:
                    problems.append(f"{suite}: {path} = {median} < 0")
            elif median <= 0:
                problems.append(f"{suite}: {path} = {median}, expected > 0")
    if problems:
        print("FAIL test_bench_quick:\n  " + "\n  ".join(problems))
        sys.exit(1)
    print(f"PASS test_bench_quick: {', '.join(SUITES)} --quick: reports written and parsed, "
          f"{counted} figures present and positive")


if __name__ == "__main__":
    main()
