"""The grpc suite: the control plane's call rates. `ztm controller` (gRPC over
TLS 1.3 + HTTP/2 on one worker thread, which owns the store) is loaded by
`ztm-grpcbench`, a C client on ztm's own stack (link + BoringSSL + nghttp2 on
the engine), on 127.0.0.1.

Measurements, each against a fresh controller (new state directory, new CA):
  - unary: Mesh.GetEndpoint of an existing endpoint, 4 connections x 32
    calls in flight each, 10 s after 1 s of warm-up (--quick: 2 s); calls/s,
    p50/p99 latency per call;
  - join: N Mesh.Join calls (invite token + CSR; the controller signs a
    certificate and records the endpoint durably), 4 connections with
    server-only TLS x 32 in flight each; joins/s, p50/p99. The N invites and
    the joiners' N keys + CSRs are made before, untimed (N = 4000; --quick 500).

There is no peer tool to compare against: the suite reports ztm's figures
against the issue's absolute targets (on this 2-core machine: >= 20,000
unary calls/s and >= 2,000 joins/s, on the medians). Any failed call makes
the run a failed run.
"""

import json
import os
import re
import shutil
import subprocess
import tempfile
import time

from lib import report
from lib.env import rel
from lib.procs import StartError
from lib.progress import Progress
from lib.stats import summarize

NAME = "grpc"
SUMMARY = "ztm controller's control API over gRPC: GetEndpoint calls/s and Join (CSR signing) joins/s"
PEER_TOOLS = {}
TARGETS = ["ztm", "ztm-grpcbench"]

HOST = "127.0.0.1"
SNI = "localhost"  # the controller's default --name: its certificate's name
CLIENT = {"conns": 4, "streams": 32, "workers": 1}

TESTS = [
    {"name": "unary", "label": "GetEndpoint (unary)"},
    {"name": "join", "label": "Join (CSR signing)"},
]

GOALS = [
    {"name": "unary calls/s (GetEndpoint)", "test": "unary", "metric": "calls_per_s", "unit": "/s",
     "target": 20000},
    {"name": "joins/s (Join, CSR signing included)", "test": "join", "metric": "joins_per_s", "unit": "/s",
     "target": 2000},
]

# Rows of the results table: (test, metric, label).
ROWS = [
    ("unary", "calls_per_s", "unary: calls/s"),
    ("unary", "p50_us", "unary: p50 latency, µs"),
    ("unary", "p99_us", "unary: p99 latency, µs"),
    ("unary", "server_cpu_pct", "unary: server CPU %"),
    ("unary", "client_cpu_pct", "unary: client CPU %"),
    ("join", "joins_per_s", "join: joins/s"),
    ("join", "p50_us", "join: p50 latency, µs"),
    ("join", "p99_us", "join: p99 latency, µs"),
    ("join", "server_cpu_pct", "join: server CPU %"),
    ("join", "client_cpu_pct", "join: client CPU %"),
    ("join", "elapsed_s", "join: seconds for all joins"),
    ("join", "invites_per_s", "untimed: invites/s (admin, pipelined)"),
    ("join", "server_max_rss_mib", "join: server peak RSS, MiB"),
]

READY = r"event=controller\.listen\b[^\n]*\baddr=\S+:(\d+)"


class Failed(Exception):
    """One measurement failed; the message says why."""


# ---- command lines (the same functions print the report's templates) ----------

def controller_argv(b, state, cli_dir):
    # `env` execs ztm: the process (and its pid) is the controller itself.
    return ["env", f"ZTM_CONFIG_DIR={cli_dir}", b["ztm"], "controller", "--state", state,
            "--listen", f"{HOST}:0", "--log-level", "warn"]


def client_argv(b, test, port, cli_dir, server_pid, cfg):
    argv = [b["ztm-grpcbench"], test["name"], "--connect", f"{HOST}:{port}", "--ca", f"{cli_dir}/ca.pem",
            "--cert", f"{cli_dir}/admin.pem", "--key", f"{cli_dir}/admin.key", "--sni", SNI,
            "--conns", str(CLIENT["conns"]), "--streams", str(CLIENT["streams"]),
            "--workers", str(CLIENT["workers"])]
    if test["name"] == "unary":
        argv += ["--seconds", fmt_s(cfg["unary_seconds"]), "--warmup", fmt_s(cfg["unary_warmup"])]
    else:
        argv += ["--count", str(cfg["join_count"])]
    return argv + ["--server-pid", str(server_pid), "--json"]


def fmt_s(seconds):
    return f"{seconds:g}"


def fs_type(path):
    """The file system type of PATH as `stat -f -c %T` names it."""
    try:
        r = subprocess.run(["stat", "-f", "-c", "%T", path], capture_output=True, text=True, timeout=10)
        return r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def state_root(ctx):
    """Where the controllers' state directories go: a temp dir under /tmp,
    unless /tmp is a tmpfs (fsync would cost nothing): then /var/tmp."""
    for base in ("/tmp", "/var/tmp"):
        if os.path.isdir(base) and fs_type(base) != "tmpfs":
            return tempfile.mkdtemp(prefix="ztm-bench-grpc-state-", dir=base)
    return tempfile.mkdtemp(prefix="ztm-bench-grpc-state-", dir="/tmp")


# ---- one measurement ---------------------------------------------------------

def _peak_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _tail(text, n=3):
    return " | ".join(text.strip().splitlines()[-n:]) or "(no output)"


def parse_client(code, out, err, timeout):
    if code is None:
        raise Failed(f"ztm-grpcbench did not finish within {timeout:g} s")
    j = None
    for line in reversed(out.strip().splitlines()):
        try:
            j = json.loads(line)
            break
        except ValueError:
            continue
    if j is None:
        raise Failed(f"ztm-grpcbench exited with code {code}: {_tail(err or out)}")
    if code != 0 or j.get("error"):
        e = Failed(f"ztm-grpcbench exited with code {code}: {j.get('error') or _tail(err or out)}")
        e.metrics = j
        raise e
    return j


def measure(ctx, cfg, rnd, test, root):
    rec = {"round": rnd, "test": test["name"], "ok": False, "error": None, "metrics": {}, "argv": {}}
    server = None
    state = os.path.join(root, f"state-{rnd}-{test['name']}")
    cli_dir = os.path.join(root, f"cli-{rnd}-{test['name']}")
    try:
        os.makedirs(cli_dir, mode=0o700)
        argv = rec["argv"]["server"] = controller_argv(ctx.bin, state, cli_dir)
        try:
            server = ctx.procs.start("ztm controller", argv, ready_line=READY, timeout=30)
        except StartError as e:
            raise Failed(f"ztm controller failed to start: {e}") from None
        port = int(server.match.group(1))
        for f in ("ca.pem", "admin.pem", "admin.key"):
            if not os.path.exists(os.path.join(cli_dir, f)):
                raise Failed(f"ztm controller wrote no {f} to ZTM_CONFIG_DIR")
        argv = rec["argv"]["client"] = client_argv(ctx.bin, test, port, cli_dir, server.pid, cfg)
        if test["name"] == "unary":
            timeout = cfg["unary_seconds"] + cfg["unary_warmup"] + 60
        else:
            timeout = 120 + cfg["join_count"] / 50
        t0 = time.monotonic()
        code, out, err = ctx.procs.run("ztm-grpcbench", argv, timeout)
        wall = time.monotonic() - t0
        alive = server.alive()
        rss = _peak_rss_mib(server.pid) if alive else None
        if not alive:
            ctx.procs.stop(server)
            raise Failed(f"ztm controller exited during the test (code {server.popen.returncode}): "
                         f"{server.tail()}")
        try:
            metrics = parse_client(code, out, err, timeout)
        except Failed as e:
            rec["metrics"] = getattr(e, "metrics", {})
            raise
        if rss is not None:
            metrics["server_max_rss_mib"] = rss
        rec["metrics"] = metrics
        rec["wall_s"] = round(wall, 3)
        rec["ok"] = True
    except (Failed, OSError) as e:
        rec["error"] = str(e)
    finally:
        if server:
            ctx.procs.stop(server)
            # At --log-level warn anything besides the ready line is worth keeping.
            extra = [l for l in server.stderr_text().strip().splitlines()
                     if "event=controller.listen" not in l]
            if extra:
                rec["server_stderr_tail"] = extra[-10:]
        shutil.rmtree(state, ignore_errors=True)
        shutil.rmtree(cli_dir, ignore_errors=True)
    return rec


def brief(rec):
    if not rec["ok"]:
        return f"FAILED: {rec['error']}"
    m = rec["metrics"]
    cpu = f", CPU server {m['server_cpu_pct']:.0f} %" if m.get("server_cpu_pct") is not None else ""
    if rec["test"] == "unary":
        return f"{m['calls_per_s']:,.0f} calls/s, p50 {m['p50_us']:,.0f} µs, p99 {m['p99_us']:,.0f} µs{cpu}"
    return (f"{m['joins_per_s']:,.0f} joins/s ({m['joins_ok']} in {m['elapsed_s']:.2f} s), "
            f"p50 {m['p50_us']:,.0f} µs, p99 {m['p99_us']:,.0f} µs{cpu}")


# ---- the suite ---------------------------------------------------------------

def run(ctx):
    root = state_root(ctx)
    cfg = {
        "unary_seconds": 2 if ctx.quick else 10,
        "unary_warmup": 1,
        "join_count": 500 if ctx.quick else 4000,
        "client": dict(CLIENT),
        "sni": SNI,
        "tmp_fs": fs_type("/tmp"),
        "state_dir_root": root,
        "state_fs": fs_type(root),
    }
    steps, estimates = [], []
    for r in range(1, ctx.runs + 1):
        for test in TESTS:
            steps.append((r, test))
            estimates.append(cfg["unary_seconds"] + cfg["unary_warmup"] + 1.5 if test["name"] == "unary"
                             else 2 + cfg["join_count"] / 1000)

    ctx.say(f"controller state in {root} ({cfg['state_fs']}; /tmp is {cfg['tmp_fs']})")
    records = []
    try:
        progress = Progress(estimates)
        for r, test in steps:
            progress.start(f"round {r}/{ctx.runs} · {test['label']}")
            rec = measure(ctx, cfg, r, test, root)
            records.append(rec)
            progress.done(brief(rec))
    finally:
        shutil.rmtree(root, ignore_errors=True)

    summary = {}
    for test in TESTS:
        recs = [x for x in records if x["test"] == test["name"]]
        keys = sorted({k for x in recs if x["ok"] for k, v in x["metrics"].items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        summary[test["name"]] = {
            "runs": len(recs), "failed": sum(not x["ok"] for x in recs),
            **{k: summarize([x["metrics"].get(k) if x["ok"] else None for x in recs]) for k in keys},
        }

    goals = []
    for g in GOALS:
        s = summary[g["test"]].get(g["metric"])
        value = s["median"] if s else None
        goals.append({**g, "value": value, "ratio": None if value is None else value / g["target"],
                      "met": None if value is None else value >= g["target"]})

    shown = {k: (rel(p) if k in TARGETS else os.path.basename(p)) for k, p in ctx.bin.items()}
    commands = [{"name": "controller", "command": " ".join(controller_argv(shown, "$STATE", "$CLI"))}]
    for test in TESTS:
        commands.append({"name": f"{test['name']} client", "command": " ".join(
            client_argv(shown, test, "$PORT", "$CLI", "$SERVER_PID", cfg))})
    commands.append({"name": "note", "command": "a fresh controller per measurement: $STATE is a new "
                                                f"directory under {root} ({cfg['state_fs']}), $CLI a new "
                                                "ZTM_CONFIG_DIR where it writes ca.pem, admin.pem, admin.key"})
    commands.append({"name": "note", "command": "the controller binds port 0 and prints the port it got "
                                                "(event=controller.listen addr=…); $PORT is that port"})

    return {
        "config": cfg,
        "tests": TESTS,
        "runs_raw": records,
        "summary": summary,
        "goals": goals,
        "commands": commands,
        "plots": [
            {"test": "unary", "metric": "calls_per_s", "title": "GetEndpoint (unary)", "unit": "calls/s"},
            {"test": "join", "metric": "joins_per_s", "title": "Join (CSR signing included)", "unit": "joins/s"},
        ],
    }


# ---- the markdown body -------------------------------------------------------

def render(data):
    cfg = data["config"]
    summary = data["summary"]
    c = cfg["client"]
    out = ["## Targets", "",
           "From the issue (on this 2-core machine, medians): ≥ 20,000 unary calls/s and ≥ 2,000 "
           "joins/s. There is no peer tool to compare against: the figures stand against these "
           "absolute targets.", ""]
    rows = []
    for g in data["goals"]:
        verdict = {True: "**met**", False: "**missed**", None: "not measured"}[g["met"]]
        rows.append([g["name"], report.num(g["value"], g["unit"]), f"≥ {g['target']:,}{g['unit']}",
                     report.times(g["ratio"]), verdict])
    out += [report.table(["target", "ztm controller", "goal", "median / goal", "verdict"], rows), ""]
    missing = [g["name"] for g in data["goals"] if g["met"] is None]
    if missing:
        out += [f"Not measured ({', '.join(missing)}): see the failures below.", ""]

    runs = (f"Median of {data['runs']} runs (min–max)" if data["runs"] > 1
            else "One run per measurement, so no spread")
    tmpfs = cfg.get("tmp_fs") == "tmpfs"
    out += ["## Results", "",
            f"{runs}. `ztm controller` (one worker thread; unary calls that arrive in one loop turn run "
            "in one store group, one fsync if it wrote anything, replies after it is durable) against `ztm-grpcbench` (C, "
            f"ztm's own link + TLS 1.3 + HTTP/2 on {c['workers']} engine worker), {c['conns']} "
            f"connections × {c['streams']} calls in flight each, both on this machine. A fresh "
            "controller (new state directory, new CA) per measurement.", "",
            f"- **unary**: Mesh.GetEndpoint of an existing endpoint (found with ListEndpoints), "
            f"re-issued as each call completes; calls completed in the {cfg['unary_seconds']:g} s after "
            f"{cfg['unary_warmup']:g} s of warm-up, with the admin identity (mutual TLS).",
            f"- **join**: {cfg['join_count']:,} Mesh.Join calls (invite token + CSR of a new P-256 key; "
            "the controller checks the token, signs a certificate and stores the endpoint), over "
            "connections with server-only TLS (a joiner has no certificate yet); timed from the "
            "client engine's start (TCP + TLS handshakes included) to the last answer. The invites "
            "(Mesh.Invite with the admin identity, pipelined the same way) and the joiners' keys and "
            "CSRs are made before, untimed.",
            "- latency: per call, from the request's HEADERS being queued to its status arriving "
            "(log-linear histogram, within 0.8 %).",
            "- CPU %: over the measured period (unary: the window; join: the timed phase), server from "
            "/proc/PID/stat (all threads), client from getrusage; 100 % = one core. Client and server "
            "share the machine's CPUs.",
            f"- the controllers' state directories: `{cfg['state_dir_root']}` on {cfg['state_fs']}; "
            f"/tmp is {cfg['tmp_fs']}"
            + (" (a tmpfs: fsync costs nothing there, so the state went elsewhere)" if tmpfs else
               " (not a tmpfs: each store group's fsync reaches the disk)") + ".", ""]
    rows = []
    for test, metric, label in ROWS:
        s = summary[test]
        if s.get(metric) is None:
            rows.append([label, f"failed ({s['failed']}/{s['runs']})" if s["failed"] else "–"])
        else:
            part = f" ({s['failed']} of {s['runs']} failed)" if s["failed"] else ""
            rows.append([label, report.spread(s[metric]) + part])
    out += [report.table(["measurement", "ztm controller"], rows), ""]

    failed = [r for r in data["runs_raw"] if not r["ok"]]
    if failed:
        out += ["## Failures", ""]
        tests = {t["name"]: t["label"] for t in data["tests"]}
        for r in failed:
            out.append(f"- round {r['round']}, {tests[r['test']]}: {r['error']}")
        out.append("")
    noisy = [r for r in data["runs_raw"] if r.get("server_stderr_tail")]
    if noisy:
        out += ["## What the controller logged", "",
                "At `--log-level warn` the controller prints only its ready line unless something "
                "went wrong:", ""]
        for r in noisy:
            out.append(f"- round {r['round']}, {r['test']}:")
            out += ["", "```", *r["server_stderr_tail"], "```", ""]

    out += ["## Every run", ""]
    rows = []
    for r in data["runs_raw"]:
        m = r["metrics"]
        if not r["ok"]:
            cell = "failed"
        elif r["test"] == "unary":
            cell = (f"{m['calls_per_s']:,.0f} calls/s ({m['calls_ok']:,} calls), p50 {m['p50_us']:,.0f} µs, "
                    f"p99 {m['p99_us']:,.0f} µs, {m['errors']} errors")
        else:
            cell = (f"{m['joins_per_s']:,.0f} joins/s ({m['joins_ok']:,} in {m['elapsed_s']:.2f} s), "
                    f"p50 {m['p50_us']:,.0f} µs, p99 {m['p99_us']:,.0f} µs, {m['errors']} errors")
        if r["ok"] and m.get("server_cpu_pct") is not None:
            cell += f"; CPU server {m['server_cpu_pct']:.0f} %, client {m['client_cpu_pct']:.0f} %"
        rows.append([str(r["round"]), r["test"], cell])
    out += [report.table(["round", "test", "result"], rows, right=set()), ""]
    return "\n".join(out)
