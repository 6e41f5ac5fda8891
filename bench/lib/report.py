"""Report files: bench/results/<suite>-<UTC stamp>.json (everything: machine,
commands, every run's raw figures, the summary), the same stem .md (a summary
for people, rendered from the JSON alone) and latest-<suite>.md (a copy of the
newest). Files are written whole or not at all (temp file + rename)."""

import datetime
import json
import re
import shutil
import subprocess
import os

SCHEMA = 1


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def stamp(t):
    """File-name form of a UTC time: 20261124T153000Z."""
    return t.strftime("%Y%m%dT%H%M%SZ")


def iso(t):
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def num(v, unit=""):
    """A figure for a table: 3 significant digits or so, '–' when missing."""
    if v is None:
        return "–"
    a = abs(v)
    if a >= 1000:
        s = f"{v:,.0f}"
    elif a >= 100:
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def spread(stat, unit=""):
    """'median (min–max)' of a stats.summarize() result."""
    if not stat:
        return "failed"
    if stat["n"] == 1:
        return num(stat["median"], unit)
    return f"{num(stat['median'], unit)} ({num(stat['min'])}–{num(stat['max'])})"


def times(r):
    return "–" if r is None else f"{r:.2f}×"


def table(headers, rows, right=None):
    """A markdown table; RIGHT: indexes of right-aligned columns (default all
    but the first)."""
    right = set(range(1, len(headers)) if right is None else right)
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join(" ---: " if i in right else " --- " for i in range(len(headers))) + "|"]
    for row in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(out)


def render(data, body):
    """The whole markdown report: a header, the suite's BODY, the machine and
    the commands."""
    m = data["machine"]
    git = data.get("git") or {}
    commit = (git.get("commit") or "unknown")[:12]
    if git.get("dirty"):
        commit += " with local changes"
    lines = [f"# ztm benchmark: {data['suite']} — {data['started_utc'].replace('T', ' ').replace('Z', ' UTC')}", ""]
    if data.get("quick"):
        lines += ["> **Quick run (`--quick`)**: short measurements for checking the harness; the "
                  "figures are not representative.", ""]
    lines += [f"{data['tools'].get('ztm', 'ztm')} at commit {commit}, {data['build']['type']} build in "
              f"`{data['build']['dir']}`; {data['runs']} run{'s' if data['runs'] != 1 else ''} per "
              f"measurement; the whole suite took {data['duration_s'] / 60:.1f} min.", "", body.rstrip(), ""]

    la = data.get("load_average") or {}
    fmt_la = lambda v: " ".join(str(x) for x in v) if v else "?"
    lines += ["## Machine", "", table(["", ""], [
        ["CPU", f"{m['cpu_model']}, {m['nproc']} CPUs available ({m['cpus_online']} online)"],
        ["memory", f"{m['memory_gib']} GiB"],
        ["kernel", m["kernel"]],
        ["Debian", m["debian"] or "?"],
        ["CPU frequency governor", m.get("cpu_governor") or "n/a"],
        ["load average (1/5/15 min) at start, end", f"{fmt_la(la.get('start'))}; {fmt_la(la.get('end'))}"],
        *[[name, v] for name, v in data["tools"].items()],
    ], right=set()), ""]

    lines += ["## Commands", "", f"Run as: `{' '.join(data['invocation'])}`", ""]
    if data.get("commands"):
        lines += ["Each measurement (ports are ephemeral, picked per measurement):", "", "```"]
        width = max(len(c["name"]) for c in data["commands"])
        lines += [f"{c['name']:<{width}}  {c['command']}" for c in data["commands"]]
        lines += ["```", ""]
    for name, text in (data.get("files") or {}).items():
        lines += [f"`{name}`:", "", "```", text.rstrip(), "```", ""]
    return "\n".join(lines)


def _write_atomic(path, text):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def failures(data, names, labels):
    """Markdown lines listing the failed measurements of a suite with
    variants, grouped by variant and error (the same failure in another run
    differs only by pids and ports); no lines when nothing failed."""
    failed = [r for r in data["runs_raw"] if not r["ok"]]
    if not failed:
        return []
    out = ["## Failures", ""]
    groups = {}
    for r in failed:
        key = re.sub(r"\d{3,}", "N", r["error"])
        groups.setdefault((r["variant"], key), []).append(r)
    total = {v: sum(1 for r in data["runs_raw"] if r["variant"] == v) for v in names}
    tests = {t["name"]: t["label"] for t in data["tests"]}
    for (variant, _), rs in groups.items():
        where = "; ".join(sorted({tests[r["test"]] for r in rs}))
        out.append(f"- {labels[variant]}, {len(rs)} of {total[variant]} measurements "
                   f"({where}): {rs[0]['error']}")
    out.append("")
    return out


def _stat(summary, test, variant, metric):
    node = summary.get(test, {})
    if variant is not None:
        node = node.get(variant, {})
    v = node.get(metric)
    return v if isinstance(v, dict) and "median" in v else None


def plot(results_dir, data):
    """SVG bar charts (median, min-max bars) with gnuplot for the figures a
    suite lists in data["plots"]: [{"test", "metric", "title", "unit"}], one
    bar per variant in data["variants"] (or one "ztm" bar). Returns markdown
    lines linking them, or a line saying why there are none."""
    specs = data.get("plots") or []
    if not specs:
        return []
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        return ["Plots: not drawn, gnuplot is not installed (`apt-get install gnuplot-nox`).", ""]
    variants = data.get("variants") or [[None, "ztm"]]
    summary = data.get("summary") or {}
    lines = ["## Plots", ""]
    for spec in specs:
        rows = []
        for v in variants:
            if isinstance(v, dict):
                key, label = v["name"], v.get("label", v["name"])
            else:
                key, label = v[0], v[1]
            st = _stat(summary, spec["test"], key, spec["metric"])
            if st:
                rows.append((label, st["median"], st["min"], st["max"]))
        if not rows:
            continue
        name = f"{data['suite']}-{data['stamp']}-{spec['test']}-{spec['metric']}"
        dat = os.path.join(results_dir, name + ".dat")
        svg = os.path.join(results_dir, name + ".svg")
        with open(dat, "w") as f:
            for label, med, lo, hi in rows:
                f.write(f'"{label}" {med} {lo} {hi}\n')
        script = "\n".join([
            "set terminal svg size 640,360 dynamic font 'sans,11'",
            f"set output '{svg}'",
            f"set title \"{spec['title']} (median, min-max)\"",
            f"set ylabel \"{spec['unit']}\"",
            "set style fill solid 0.6 border -1",
            "set boxwidth 0.6",
            "set yrange [0:*]",
            "set grid ytics",
            "unset key",
            "set format y '%g'" if max(r[3] for r in rows) < 1000 else "set format y '%.0s%c'",
            f"set xrange [-0.6:{len(rows) - 0.4}]",
            # x y ylow yhigh xdelta: five columns, so the bars are min-max
            f"plot '{dat}' using 0:2:3:4:(0.3):xtic(1) with boxerrorbars lc rgb '#4477aa'",
        ])
        r = subprocess.run([gnuplot], input=script, capture_output=True, text=True)
        os.remove(dat)
        if r.returncode != 0 or not os.path.exists(svg):
            lines.append(f"- {spec['title']}: gnuplot failed: {r.stderr.strip()[:200]}")
            continue
        data.setdefault("plot_files", []).append(os.path.basename(svg))
        lines.append(f"![{spec['title']}]({os.path.basename(svg)})")
        lines.append("")
    return lines


def write(results_dir, data, body):
    """Writes the JSON, the markdown (with plots) and latest-<suite>.md;
    returns their paths."""
    os.makedirs(results_dir, exist_ok=True)
    base = os.path.join(results_dir, f"{data['suite']}-{data['stamp']}")
    body = body + "\n" + "\n".join(plot(results_dir, data))
    _write_atomic(base + ".json", json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    markdown = render(data, body)
    _write_atomic(base + ".md", markdown)
    latest = os.path.join(results_dir, f"latest-{data['suite']}.md")
    _write_atomic(latest, markdown)
    return [base + ".json", base + ".md", latest]
