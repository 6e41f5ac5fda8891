"""The things a benchmark depends on outside itself: the build of ztm, the
peer tools it is compared with, and a description of the machine, so a report
says what was measured where."""

import os
import platform
import re
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class EnvError(Exception):
    """Something the run needs is missing; the message says what to do."""


def rel(path):
    """PATH relative to the repository when it is inside it (for reports)."""
    path = os.path.abspath(path)
    return os.path.relpath(path, ROOT) if path.startswith(ROOT + os.sep) else path


def _cache_value(build_dir, key):
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            for line in f:
                m = re.match(rf"{re.escape(key)}:[A-Z]+=(.*)$", line.rstrip("\n"))
                if m:
                    return m.group(1)
    except OSError:
        pass
    return None


def build(build_dir, targets, log_path, do_build=True):
    """Configures BUILD_DIR as a Release build when it has no cache yet, then
    builds TARGETS (incremental: quick when up to date). Refuses a build dir
    configured as anything but a plain Release build: its figures would not
    be comparable. Returns a description for the report."""
    cache = os.path.join(build_dir, "CMakeCache.txt")
    if do_build:
        with open(log_path, "ab") as log:
            if not os.path.exists(cache):
                cmd = ["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release"]
                if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                    raise EnvError(f"configuring {rel(build_dir)} failed; see {log_path}")
    build_type = _cache_value(build_dir, "CMAKE_BUILD_TYPE")
    sanitize = _cache_value(build_dir, "ZTM_SANITIZE") or ""
    if build_type is None:
        raise EnvError(f"{rel(build_dir)} is not a CMake build directory; "
                       "run without --no-build, or name another with --build-dir")
    if build_type != "Release" or sanitize:
        raise EnvError(f"{rel(build_dir)} is configured with CMAKE_BUILD_TYPE={build_type}"
                       f"{' ZTM_SANITIZE=' + sanitize if sanitize else ''}; benchmarks need a plain "
                       "Release build: name another directory with --build-dir (it is configured "
                       "as Release when new)")
    if do_build:
        cmd = ["cmake", "--build", build_dir, "-j", str(os.cpu_count() or 1), "--target", *targets]
        with open(log_path, "ab") as log:
            if subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
                tail = _tail(log_path, 15)
                raise EnvError(f"building {' '.join(targets)} in {rel(build_dir)} failed:\n{tail}\n"
                               f"(full log: {log_path}; --no-build runs the binaries already there)")
    missing = [t for t in targets if not os.access(os.path.join(build_dir, t), os.X_OK)]
    if missing:
        raise EnvError(f"{', '.join(missing)} not found in {rel(build_dir)}; run without --no-build")
    return {"dir": rel(build_dir), "type": build_type,
            "compiler": _cache_value(build_dir, "CMAKE_C_COMPILER")}


def _tail(path, n):
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().splitlines()[-n:])
    except OSError:
        return ""


def which(cmd):
    """Like shutil.which, but also looks in the sbin directories (haproxy
    lives in /usr/sbin, which is not on every user's PATH)."""
    path = os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(cmd, path=path)


def ensure_tools(tools, say):
    """TOOLS maps a command to its Debian package. Installs the missing ones
    with apt-get (as root, or through sudo when it needs no password) and
    returns {command: path}; raises EnvError when that is not possible."""
    missing = {cmd: pkg for cmd, pkg in tools.items() if not which(cmd)}
    if missing:
        pkgs = sorted(set(missing.values()))
        if os.geteuid() == 0:
            sudo = []
        elif which("sudo") and subprocess.run(["sudo", "-n", "true"],
                                              capture_output=True).returncode == 0:
            sudo = ["sudo", "-n"]
        else:
            raise EnvError(f"missing {', '.join(sorted(missing))}; install them with: "
                           f"sudo apt-get install {' '.join(pkgs)}   (or: sudo deploy/install-deps)")
        say(f"installing {' '.join(pkgs)} with apt-get …")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *pkgs]):
            r = subprocess.run(sudo + cmd, env=env, capture_output=True, text=True)
            if r.returncode != 0:
                raise EnvError(f"'{' '.join(cmd)}' failed: {r.stderr.strip()[-500:]}\n"
                               f"install {' '.join(pkgs)} by hand and run again")
        still = [cmd for cmd in missing if not which(cmd)]
        if still:
            raise EnvError(f"{', '.join(still)} still missing after installing {' '.join(pkgs)}")
    return {cmd: which(cmd) for cmd in tools}


def version(argv, pattern=None):
    """First line of ARGV's output (or the first line matching PATTERN)."""
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unknown ({e})"
    lines = (r.stdout + r.stderr).splitlines()
    for line in lines:
        if not pattern or re.search(pattern, line):
            return line.strip()
    return "unknown"


def _meminfo_gib():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1048576, 1)
    except OSError:
        pass
    return None


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _read_first(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def load_average():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine():
    """CPU, cores, memory, kernel and OS of this machine."""
    return {
        "cpu_model": _cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "cpus_online": os.cpu_count(),
        "memory_gib": _meminfo_gib(),
        "kernel": platform.release(),
        "debian": _read_first("/etc/debian_version"),
        "arch": platform.machine(),
        "cpu_governor": _read_first("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "python": sys.version.split()[0],
    }


def git_state():
    """Commit of the tree and whether it has local changes (read-only: no
    index refresh is written)."""
    def git(*args):
        r = subprocess.run(["git", "--no-optional-locks", "-C", ROOT, *args],
                           capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}
