#!/usr/bin/env python3
"""The admin CLI against a real controller, as a user runs it: the first
admin's credentials written at first start make `ztm invite`, `ztm get`,
`ztm revoke`, `ztm watch` and `ztm ca show` work at once; output formats;
`ztm watch` sees changes live and resumes with --from; clear errors (exit 1
or 2, one line) for a revoked admin, no credentials, a controller that is
not there and bad arguments."""
import json
import os
import signal
import subprocess
import time

import cpcommon as cp
from cpcommon import zt


def ztm(ctl, *args, env_extra=None, timeout=30):
    env = dict(os.environ)
    env["ZTM_CONFIG_DIR"] = ctl.config_dir
    env.pop("ZTM_CONTROLLER", None)
    if env_extra:
        env.update(env_extra)
    return subprocess.run([zt.ztm_bin(), *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def scenario():
    ctl = cp.start("cli")
    # The credentials the controller wrote: keys 0600, the address in cli.conf.
    st = os.stat(os.path.join(ctl.config_dir, "admin.key"))
    zt.check(st.st_mode & 0o077 == 0, f"admin.key mode {oct(st.st_mode & 0o777)}, expected 0600")
    conf = open(os.path.join(ctl.config_dir, "cli.conf")).read()
    zt.check(f":{ctl.port}" in conf, f"cli.conf does not name the controller's port:\n{conf}")

    r = ztm(ctl, "ca", "show")
    zt.check(r.returncode == 0 and ctl.pin in r.stdout, f"ca show: rc {r.returncode}\n{r.stdout}{r.stderr}")

    # A live watch in JSON lines, started before the changes.
    env = dict(os.environ, ZTM_CONFIG_DIR=ctl.config_dir)
    watch = subprocess.Popen([zt.ztm_bin(), "watch", "-o", "json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(0.5)

    r = ztm(ctl, "invite", "laptop", "--ttl", "30m")
    token = r.stdout.strip()
    zt.check(r.returncode == 0 and token.startswith("ztm1.") and "\n" not in token,
             f"invite: rc {r.returncode} stdout {r.stdout!r} stderr {r.stderr!r}")
    zt.check("ztm join" in r.stderr, f"invite does not say what to do next: {r.stderr!r}")

    r = ztm(ctl, "get", "endpoints")
    zt.check(r.returncode == 0 and r.stdout.splitlines()[0].split()[:3] == ["NAME", "ROLE", "ONLINE"],
             f"get endpoints: rc {r.returncode}\n{r.stdout}{r.stderr}")
    names = {line.split()[0] for line in r.stdout.splitlines()[1:]}
    zt.check({"admin", "controller"} <= names, f"get endpoints lists {names}")
    r = ztm(ctl, "get", "endpoints", "-o", "json")
    eps = json.loads(r.stdout)
    zt.check({e["name"] for e in eps} == names and all(len(e["id"]) == 32 for e in eps),
             f"get endpoints -o json: {r.stdout}")
    r = ztm(ctl, "get", "services", "-o", "json")
    zt.check(r.returncode == 0 and json.loads(r.stdout) == [], f"get services -o json: {r.stdout!r}")

    # A second admin (invite --role admin is tested by cp.methods): revoke the
    # controller's own endpoint by name and see it in the watch.
    r = ztm(ctl, "revoke", "controller", "--reason", "test")
    zt.check(r.returncode == 0 and r.stdout.startswith("revoked controller serial="),
             f"revoke: rc {r.returncode} {r.stdout!r} {r.stderr!r}")
    time.sleep(0.5)
    watch.send_signal(signal.SIGTERM)
    out, err = watch.communicate(timeout=10)
    zt.check(watch.returncode == 0, f"watch exit {watch.returncode} after SIGTERM: {err}")
    events = [json.loads(line) for line in out.splitlines()]
    types = [e["type"] for e in events]
    zt.check(types[:1] == ["RESET"] and "SYNCED" in types, f"watch did not start with a snapshot: {types}")
    after = types.index("SYNCED")
    live = events[after + 1:]
    zt.check(any(e["kind"] == "revocation" and e["name"] == "controller" for e in live),
             f"watch did not show the revocation live: {live}")
    versions = [e["version"] for e in live]
    zt.check(versions == sorted(versions), f"live versions out of order: {versions}")

    # Resume: --from the snapshot's version gives exactly the live events again.
    snap = events[after]["version"]
    p = subprocess.Popen([zt.ztm_bin(), "watch", "-o", "json", "--from", str(snap)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(1.0)
    p.send_signal(signal.SIGTERM)
    out2, _ = p.communicate(timeout=10)
    again = [json.loads(line) for line in out2.splitlines()]
    zt.check(again == live, f"watch --from {snap} gave {again}, expected {live}")

    # Errors a user can cause.
    r = ztm(ctl, "invite", "bad name")
    zt.check(r.returncode == 2 and r.stderr.count("\n") == 1 and "bad name" in r.stderr,
             f"invite 'bad name': rc {r.returncode} {r.stderr!r}")
    r = ztm(ctl, "get", "things")
    zt.check(r.returncode == 2 and "things" in r.stderr, f"get things: rc {r.returncode} {r.stderr!r}")
    r = ztm(ctl, "get", "endpoints", env_extra={"ZTM_CONFIG_DIR": cp.subdir("empty")})
    zt.check(r.returncode == 2 and "no admin credentials" in r.stderr, f"no credentials: {r.returncode} {r.stderr!r}")
    r = ztm(ctl, "get", "endpoints", "--controller", "127.0.0.1:1")
    zt.check(r.returncode == 1 and "UNAVAILABLE" in r.stderr and "is 'ztm controller' running" in r.stderr,
             f"no controller: rc {r.returncode} {r.stderr!r}")
    r = ztm(ctl, "revoke", "admin")
    zt.check(r.returncode == 0, f"revoking our own admin: rc {r.returncode} {r.stderr!r}")
    r = ztm(ctl, "get", "endpoints")
    zt.check(r.returncode == 1 and r.stdout == "" and ("revoked" in r.stderr or "UNAVAILABLE" in r.stderr),
             f"a revoked admin: rc {r.returncode} stdout {r.stdout!r} stderr {r.stderr!r}")
    ctl.stop()
    return ("invite/get/revoke/watch/ca show with the first admin's credentials; watch live + --from "
            "resume exact; bad name, unknown kind, no credentials, no controller, revoked admin: clear errors")


if __name__ == "__main__":
    zt.main(scenario, deadline=200)
