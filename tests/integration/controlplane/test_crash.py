#!/usr/bin/python3
"""cp.crash: `ztm controller` killed with SIGKILL in a loop (10 rounds)
while two clients keep inviting and joining (and publishing) over their own
connections. After every restart, on the same state directory:

  - the controller starts (the store loads: not torn, not refused) with the
    same CA pin, and the admin credentials still work
  - every acknowledged record is there: each endpoint whose Join returned OK
    is listed by ListEndpoints with the ID, name and certificate serial the
    Join returned; each service whose Publish returned OK is listed
  - each invite acknowledged but not joined (the kill may fall between)
    still works once: its Join succeeds, or says "already used" and then
    its endpoint is listed (the Join was committed, its answer lost)
  - the versions never go back: ListEndpoints' version after a restart is
    at least the highest version any acknowledged call reported
  - no temporary file is left in the state directory; store.db is mode 0600
"""
import os
import random
import sys
import threading
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cpcommon as cp  # noqa: E402

zt = cp.zt
grpc = cp.grpc
SC = grpc.StatusCode
ROUNDS = 10


class Writer(threading.Thread):
    """Invites and joins NAME-N in a loop until told to stop; records what
    the server acknowledged."""

    def __init__(self, ctl, tag, acked, lock, errors):
        super().__init__(daemon=True)
        self.ctl, self.tag, self.acked, self.lock, self.errors = ctl, tag, acked, lock, errors
        self.stop = threading.Event()
        self.n = 0

    def run(self):
        pb = cp.protos()
        admin = self.ctl.client(self.ctl.admin_creds())
        try:
            while not self.stop.is_set():
                name = f"{self.tag}-{self.n}"
                self.n += 1
                code, inv, details = admin.call("Mesh/Invite", pb.mesh.InviteRequest(name=name),
                                                timeout=10)
                if code != SC.OK:
                    self._failed("Invite", name, code, details)
                    return
                with self.lock:
                    self.acked["invites"][name] = inv.token
                code, j, details = cp.join(self.ctl, inv.token, name, timeout=10)
                if code != SC.OK:
                    self._failed("Join", name, code, details)
                    return
                with self.lock:
                    self.acked["joins"][name] = (j.id, j.resp.endpoint.cert_serial)
                if self.n % 3 == 0:  # some services too, published by the new agent
                    c = self.ctl.client(j.creds)
                    code, r, details = c.call("Services/Publish", pb.services.PublishRequest(
                        name=f"s-{name}"), timeout=10)
                    c.close()
                    if code != SC.OK:
                        self._failed("Publish", name, code, details)
                        return
                    with self.lock:
                        self.acked["services"][f"s-{name}"] = j.id
                        self.acked["version"] = max(self.acked["version"], r.version)
        finally:
            admin.close()

    def _failed(self, what, name, code, details):
        if not self.stop.is_set():  # a failure before the kill is a real one
            with self.lock:
                self.errors.append(f"{what} {name}: {code.name} ({details!r}) while the "
                                   "controller was up")


def run():
    pb = cp.protos()
    F = cp.Findings()
    base = cp.subdir("crash")
    state, config = os.path.join(base, "state"), os.path.join(base, "config")
    acked = {"invites": {}, "joins": {}, "services": {}, "version": 0}
    lock = threading.Lock()
    errors = []
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    ctl = cp.Controller(state, config, "--log-level", "warn")
    pin = ctl.pin
    files0 = sorted(os.listdir(state))
    zt.log(f"state dir files: {files0}")
    pending_checked = set()
    total_kills = 0
    for rnd in range(ROUNDS + 1):
        # ---- verify everything acknowledged so far -------------------------------------
        F.check(ctl.pin == pin, f"round {rnd}: CA pin changed after restart: {ctl.pin} != {pin}")
        admin = ctl.client(ctl.admin_creds())
        eps, version = admin.list_endpoints()
        by_name = {e.name: e for e in eps}
        with lock:
            joins = dict(acked["joins"])
            invites = dict(acked["invites"])
            services = dict(acked["services"])
            max_v = acked["version"]
        lost = [n for n, (i, s) in joins.items()
                if n not in by_name or by_name[n].id != i or by_name[n].cert_serial != s]
        F.check(not lost, f"round {rnd}: {len(lost)} acknowledged joins lost or changed after "
                f"kill -9: {lost[:5]}")
        F.check(version >= max_v, f"round {rnd}: ListEndpoints version {version} after restart "
                f"is below {max_v}, the version an acknowledged Publish reported")
        svcs = admin.ok("Services/List", pb.services.ListServicesRequest(page_size=1000))
        have = {s.name: {x.endpoint_id for x in s.exporters} for s in svcs.services}
        lost_s = [n for n, eid in services.items() if eid not in have.get(n, set())]
        F.check(not lost_s, f"round {rnd}: acknowledged services lost: {lost_s[:5]}")
        # invites acknowledged, join not acknowledged: still good once
        for name, token in invites.items():
            if name in joins or name in pending_checked:
                continue
            pending_checked.add(name)
            code, j, details = cp.join(ctl, token, name)
            if code == SC.OK:
                with lock:
                    acked["joins"][name] = (j.id, j.resp.endpoint.cert_serial)
            else:
                F.check(code == SC.UNAUTHENTICATED and "used" in details and name in by_name,
                        f"round {rnd}: acknowledged invite {name} (its Join not acknowledged) "
                        f"answers {code.name} ({details!r}); listed: {name in by_name}")
        leftovers = [f for f in os.listdir(state) if f not in files0]
        F.check(not leftovers, f"round {rnd}: files left in the state dir after kill -9: "
                f"{leftovers}")
        mode = os.stat(os.path.join(state, "store.db")).st_mode & 0o777
        F.check(mode == 0o600, f"round {rnd}: store.db mode {mode:o}, expected 600")
        zt.log(f"round {rnd}: {len(joins)} joins, {len(services)} services acknowledged, all "
               f"present; {len(eps)} endpoints listed, version {version}")
        admin.close()
        with lock:
            zt.check(not errors, "calls failed while the controller was up:\n  "
                     + "\n  ".join(errors[:10]))
        if rnd == ROUNDS:
            break
        # ---- write, then kill -9 in the middle ---------------------------------------------
        writers = [Writer(ctl, f"r{rnd}w{i}", acked, lock, errors) for i in range(2)]
        for w in writers:
            w.start()
        time.sleep(rng.uniform(0.3, 1.5))
        for w in writers:
            w.stop.set()
        rc = ctl.kill9()
        total_kills += 1
        F.check(rc == -9, f"round {rnd}: controller {zt.describe_rc(rc)}, expected SIGKILL")
        for w in writers:
            w.join(30)
            zt.check(not w.is_alive(), f"round {rnd}: a writer is stuck after the kill")
        zt.log(f"round {rnd}: killed after {sum(w.n for w in writers)} invites")
        ctl = cp.Controller(state, config, "--log-level", "warn", name=f"ztm-controller-{rnd + 1}")
        F.check(not ctl.logs("ca.created") and not ctl.logs("controller.ca_created"),
                f"round {rnd}: the restarted controller made a new CA")
    with lock:
        n = len(acked["joins"])
        ns = len(acked["services"])
    F.check(n >= ROUNDS, f"only {n} joins were acknowledged in {ROUNDS} rounds")
    ctl.stop()
    return F.done(f"{total_kills} kill -9 rounds: {n} acknowledged joins and {ns} services all "
                  "present after every restart; no temp files")


if __name__ == "__main__":
    zt.main(run, deadline=280)
