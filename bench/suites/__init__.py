"""Benchmark suites, one module per suite (bench/run <name> runs <name>.py).

A suite module defines:
  NAME        its name on the command line and in the result file names;
  SUMMARY     one line for `bench/run --list`;
  PEER_TOOLS  {command: Debian package} of the tools it runs besides ztm;
  TARGETS     build targets it needs (executables that land in the build dir);
  run(ctx)    runs the measurements and returns the suite's part of the JSON
              report: at least "commands" ([{name, command}], the exact
              command lines with placeholders for the ports) and whatever it
              measured; bench/run adds the machine, the tools and the times;
  render(data) the markdown body of the report from that JSON alone (so a
              report can be re-rendered from its JSON).

ctx carries: runs, quick, bin ({command or target: path}), procs (a
lib.procs.Supervisor: every process must be started through it, so that
Ctrl-C stops it), tmp (a private temp dir, removed afterwards) and say(text).
"""

import importlib
import os
import pkgutil


def available():
    here = os.path.dirname(__file__)
    return sorted(m.name for m in pkgutil.iter_modules([here]) if not m.name.startswith("_"))


def load(name):
    return importlib.import_module(f"suites.{name}")
