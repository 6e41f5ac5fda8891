"""deploy/quickstart, as a new user runs it (on the binary under test):
a hub, two agents, a web site exported by one and imported by the other,
an 8 MiB file checked through the tunnel; then Ctrl-C stops everything
cleanly (exit 0, no process left behind, the temp dir removed)."""
import os
import re
import signal
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import ztmtest as zt  # noqa: E402


def run():
    script = os.path.join(zt.REPO, "deploy", "quickstart")
    env = dict(os.environ, ZTM_BIN=zt.ztm_bin())
    p = subprocess.Popen(["bash", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env=env, text=True, start_new_session=True)
    out = []
    deadline = time.time() + 90
    ok = False
    try:
        while time.time() < deadline:
            line = p.stdout.readline()
            if not line:
                break
            out.append(line)
            if "Press Ctrl-C to stop." in line:
                ok = True
                break
        text = "".join(out)
        zt.check(ok, "quickstart did not reach its prompt:\n" + text)
        zt.check("identical: the tunnel works" in text, "no tunnel check in:\n" + text)
        zt.check("<h1>Hello from bob, through the ztm mesh</h1>" in text, "page missing:\n" + text)
        zt.check(re.search(r"hub\s+127\.0\.0\.1:\d+ up", text), "status does not show the hub up:\n" + text)
        work = re.search(r"ZTM_CONFIG_DIR=(\S+)/admin", text).group(1)
        zt.check(os.path.isdir(work), "temp dir missing while running")
        # Ctrl-C, as a user would press it.
        os.killpg(p.pid, signal.SIGINT)
        rest, _ = p.communicate(timeout=30)
        zt.check(p.returncode == 0, f"exit {p.returncode} after Ctrl-C:\n{rest}")
        zt.check("stopped; bye" in rest, "no clean stop:\n" + rest)
        zt.check(not os.path.exists(work), "temp dir left behind")
        left = subprocess.run(["pgrep", "-f", work], capture_output=True, text=True).stdout.split()
        zt.check(not left, f"processes left behind: {left}")
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    return "quickstart: mesh up, page and 8 MiB exact through the tunnel, Ctrl-C clean"


if __name__ == "__main__":
    zt.main(run)
