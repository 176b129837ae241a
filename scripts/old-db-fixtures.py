#!/usr/bin/env python3
"""Makes the old-database fixtures of tests/it/faults_old_db.rs.

Runs an old release's `otpdial serve` (built from its commit, see
tests/fixtures/db/README.md) against SIPp callees on loopback, drives it through its
HTTP API until the database holds verifications in every state, registered numbers,
webhook outbox rows and audit rows, kills it with SIGKILL while one call is dialling
and one is queued, and dumps the database:

  tests/fixtures/db/<release>/sqlite.sql    (sqlite3 .dump)
  tests/fixtures/db/<release>/postgres.sql  (pg_dump --inserts)
  tests/fixtures/db/<release>/meta.json     (when it was dumped, the codes, what each
                                             verification is expected to be)

Usage (as root or a user that may create PostgreSQL databases on 127.0.0.1:5432):

  git worktree add /tmp/otpdial-0.1 64e9917 && (cd /tmp/otpdial-0.1 && cargo build)
  scripts/old-db-fixtures.py --bin /tmp/otpdial-0.1/target/debug/otpdial --release 0.1

Needs sipp, sqlite3, psql and pg_dump on PATH. Standard library only.
"""

import argparse
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "fixture-verify-token"
ADMIN_TOKEN = "fixture-admin-token"
WEBHOOK_SECRET = "fixture-webhook-secret"
PG_SERVER = os.environ.get("OTPDIAL_TEST_PG", "postgres://postgres@127.0.0.1:5432")

# Keys a release needs beyond the common config ([webhooks] section): 0.2 refuses
# http:// and loopback callback URLs unless told.
WEBHOOK_KEYS = {"0.1": "", "0.2": "allow_http = true\nallow_private_targets = true\n"}

# Number plan: the trunk a number goes to is chosen by prefix.
ANSWER_PREFIX = "+3161"  # SIPp answers, the code is read
BUSY_PREFIX = "+3162"  # SIPp answers 486 Busy Here
HOLE_PREFIX = "+3163"  # a UDP socket that never answers: the call stays dialling


def sha256_token(token):
    import hashlib

    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def free_port(kind=socket.SOCK_DGRAM):
    s = socket.socket(socket.AF_INET, kind)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def free_sip_port():
    while True:
        p = free_port()
        try:
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            t.bind(("127.0.0.1", p))
            t.close()
            return p
        except OSError:
            continue


class Hooks(http.server.BaseHTTPRequestHandler):
    """Webhook receiver: /ok answers 204, /fail answers 500."""

    received = []

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        Hooks.received.append((self.path, body))
        self.send_response(204 if self.path.startswith("/ok") else 500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


class Hole:
    """A UDP socket that reads and drops everything (a trunk that never answers)."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.invites = 0
        threading.Thread(target=self.run, daemon=True).start()

    def run(self):
        while True:
            try:
                data, _ = self.sock.recvfrom(65535)
            except OSError:
                return
            if data.startswith(b"INVITE "):
                self.invites += 1


def sipp(scenario, port, workdir, extra_vars=()):
    rtp = Hole()
    args = [
        "sipp", "-sf", os.path.join(REPO, "tests/sipp", scenario),
        "-i", "127.0.0.1", "-mi", "127.0.0.1", "-p", str(port),
        "-timeout", "600s", "-nostdin", "-aa",
    ]
    if "answer" in scenario:
        args += ["-set", "rtp_port", str(rtp.port)]
    for k, v in extra_vars:
        args += ["-set", k, v]
    log = open(os.path.join(workdir, f"sipp-{port}.log"), "w")
    proc = subprocess.Popen(args, cwd=workdir, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=log)
    proc.rtp_sink = rtp
    return proc


class Gateway:
    def __init__(self, binary, workdir, db_url, release):
        self.release = release
        self.binary = binary
        self.workdir = workdir
        self.db_url = db_url
        self.http_port = free_port(socket.SOCK_STREAM)
        self.sip_port = free_sip_port()
        self.proc = None

    def config(self, ttl, trunks):
        keys = f"""
[[api.keys]]
name = "auth-service"
hash = "{sha256_token(TOKEN)}"
scopes = ["verify"]
[[api.keys]]
name = "ops"
hash = "{sha256_token(ADMIN_TOKEN)}"
scopes = ["admin"]
"""
        text = f"""
[http]
listen = "127.0.0.1:{self.http_port}"
[database]
url = "{self.db_url}"
[sip]
listen = "127.0.0.1:{self.sip_port}"
rtp_ports = "20000-29999"
[verification]
default_locale = "en"
repeat = 1
ttl = "{ttl}"
allow_unregistered_numbers = false
[webhooks]
secret_env = "FIXTURE_WEBHOOK_SECRET"
backoff = "1s"
{WEBHOOK_KEYS.get(self.release, WEBHOOK_KEYS["0.2"])}[limits]
per_number = "100/10m"
per_user = "100/1h"
per_api_key = "1000/1m"
global_calls_per_second = 1
{keys}
"""
        for name, port, prefix in trunks:
            text += f"""
[[trunks]]
name = "{name}"
proxy = "sip:127.0.0.1:{port}"
from = "sip:+31508200000@otpdial.test"
codecs = ["PCMA", "PCMU"]
prefixes = ["{prefix}"]
max_concurrent_calls = 10
ring_timeout = "30s"
"""
        path = os.path.join(self.workdir, "otpdial.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    def start(self, ttl, trunks):
        path = self.config(ttl, trunks)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTPDIAL_")}
        env["FIXTURE_WEBHOOK_SECRET"] = WEBHOOK_SECRET
        env["RUST_LOG"] = "info"
        env["NO_COLOR"] = "1"
        log = open(os.path.join(self.workdir, "serve.log"), "a")
        self.proc = subprocess.Popen([self.binary, "serve", "--config", path], env=env,
                                     cwd=self.workdir, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=log)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                sys.exit(f"serve exited: see {self.workdir}/serve.log")
            try:
                if self.request("GET", "/healthz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        sys.exit("serve did not answer /healthz")

    def stop(self, sig=signal.SIGTERM):
        self.proc.send_signal(sig)
        self.proc.wait(timeout=60)

    def request(self, method, path, body=None, token=TOKEN, headers=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.http_port}{path}",
                                     data=data, method=method)
        req.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                text = r.read()
                return r.status, parse(text)
        except urllib.error.HTTPError as e:
            text = e.read()
            return e.code, parse(text)

    def start_verification(self, body, headers=None):
        status, v = self.request("POST", "/v1/verifications", body, headers=headers)
        if status != 201:
            sys.exit(f"start {body}: {status} {v}")
        return v

    def view(self, vid):
        return self.request("GET", f"/v1/verifications/{vid}")[1]

    def wait(self, vid, done, what, within=90):
        deadline = time.time() + within
        while time.time() < deadline:
            v = self.view(vid)
            if done(v):
                return v
            time.sleep(0.2)
        sys.exit(f"{vid} not {what} after {within}s: {v}")

    def check(self, vid, code):
        return self.request("POST", f"/v1/verifications/{vid}/check", {"code": code})[1]


def parse(text):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text.decode(errors="replace")


def call_final(v):
    return v["call"]["status"] in ("completed", "busy", "no_answer", "rejected", "failed",
                                   "canceled")


def drive(gw, hooks_port, answer_port, busy_port, hole_port):
    """Puts verifications in every state into the gateway's database; returns their
    codes and expected states. Ends with the gateway killed (SIGKILL)."""
    trunks = [("answer", answer_port, ANSWER_PREFIX), ("busy", busy_port, BUSY_PREFIX),
              ("hole", hole_port, HOLE_PREFIX)]
    ok_hook = f"http://127.0.0.1:{hooks_port}/ok"
    fail_hook = f"http://127.0.0.1:{hooks_port}/fail"
    out = {}

    def record(name, v, code, expect):
        out[name] = {"id": v["id"], "code": code, "expect": expect}


    # Phase 1: a 30 s TTL, so that two verifications expire while we wait.
    gw.start("30s", trunks)
    for user, phones in (("u-alice", [("+31610000001", True, "werk"),
                                      ("+31610000002", False, None)]),
                         ("u-bob", [("+31610000003", True, None)]),
                         ("u-carol", [("+31620000001", True, "thuis"),
                                      ("+31630000001", False, None)]),
                         ("u-dave", [("+31630000002", True, None)])):
        body = {"phones": [dict({"number": n, "primary": p},
                                **({"label": l} if l else {})) for n, p, l in phones]}
        status, reply = gw.request("PUT", f"/v1/users/{user}/phones", body)
        if status != 200:
            sys.exit(f"phones {user}: {status} {reply}")
    expired = gw.start_verification({"user_id": "u-bob", "code": "730914",
                                     "callback_url": ok_hook})
    expired_unread = gw.start_verification({"to": "+31610000001", "code": "5510"})
    for v in (expired, expired_unread):
        gw.wait(v["id"], call_final, "final")
    gw.wait(expired["id"], lambda v: v["status"] == "expired", "expired", within=60)
    gw.wait(expired_unread["id"], lambda v: v["status"] == "expired", "expired", within=60)
    record("expired", expired, "730914", {"status": "expired", "call": "completed"})
    record("expired_2", expired_unread, "5510", {"status": "expired", "call": "completed"})
    gw.stop()

    # Phase 2: a long TTL for the rest (a test shifts the clock to "just after the
    # dump", so pending ones are still pending then).
    gw.start("24h", trunks)
    approved = gw.start_verification({"user_id": "u-alice", "code": "2468",
                                      "callback_url": ok_hook},
                                     headers={"Idempotency-Key": "fixture-approved"})
    gw.wait(approved["id"], call_final, "final")
    assert gw.check(approved["id"], "2468")["valid"] is True
    record("approved", approved, "2468", {"status": "approved", "call": "completed"})

    failed_checks = gw.start_verification({"to": "+31610000002", "code": "97531",
                                           "callback_url": fail_hook})
    gw.wait(failed_checks["id"], call_final, "final")
    for _ in range(5):
        gw.check(failed_checks["id"], "00000")
    record("failed_checks", failed_checks, "97531", {"status": "failed", "call": "completed"})

    busy = gw.start_verification({"user_id": "u-carol", "code": "8642",
                                  "callback_url": ok_hook})
    gw.wait(busy["id"], call_final, "final")
    record("busy", busy, "8642", {"status": "failed", "call": "busy"})

    canceled = gw.start_verification({"to": "+31610000001", "code": "1357"})
    status, reply = gw.request("POST", f"/v1/verifications/{canceled['id']}/cancel")
    if status != 200:
        sys.exit(f"cancel: {status} {reply}")
    gw.wait(canceled["id"], call_final, "final")
    record("canceled", canceled, "1357", {"status": "canceled"})

    pending = gw.start_verification({"user_id": "u-alice", "to": "+31610000002",
                                     "code": "481526", "callback_url": fail_hook})
    gw.wait(pending["id"], call_final, "final")
    record("pending", pending, "481526", {"status": "pending", "call": "completed"})

    pending_wrong = gw.start_verification({"to": "+31610000003", "code": "60606"})
    gw.wait(pending_wrong["id"], call_final, "final")
    assert gw.check(pending_wrong["id"], "11111")["valid"] is False
    record("pending_wrong_once", pending_wrong, "60606",
           {"status": "pending", "call": "completed", "attempts_left": 4})

    # Webhooks: the ok ones delivered, the failing ones tried at least once.
    deadline = time.time() + 20
    while time.time() < deadline and not any(p.startswith("/fail") for p, _ in Hooks.received):
        time.sleep(0.2)
    # Last: one call dialling into the hole and one queued behind it (the dialer
    # places at most global_calls_per_second = 1); killed with both in flight.
    dialling = gw.start_verification({"to": "+31630000001", "code": "3141"})
    gw.wait(dialling["id"], lambda v: v["call"]["status"] in ("dialing", "ringing"),
            "dialling", within=20)
    queued = gw.start_verification({"to": "+31630000002", "code": "2718"})
    gw.stop(signal.SIGKILL)
    record("dialling_at_kill", dialling, "3141", {"status": "pending", "call": "dialing"})
    record("queued_at_kill", queued, "2718", {"status": "pending", "call": "queued"})
    return out


def counts(query):
    tables = ["verifications", "calls", "call_attempts", "call_events", "phones",
              "audit_log", "webhook_outbox", "server_secrets", "daily_budget",
              "_sqlx_migrations"]
    return {t: int(query(f"SELECT COUNT(*) FROM {t}")) for t in tables}


def make(backend, binary, release, outdir):
    work = tempfile.mkdtemp(prefix=f"otpdial-fixture-{release}-{backend}-")
    if backend == "sqlite":
        db_path = os.path.join(work, "otpdial.db")
        db_url = f"sqlite://{db_path}"
    else:
        name = f"otpdial_fixture_{release.replace('.', '_')}_{int(time.time())}"
        subprocess.run(["psql", f"{PG_SERVER}/test", "-qc", f"CREATE DATABASE {name}"],
                       check=True)
        db_url = f"{PG_SERVER}/{name}"
    hooks = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    answer_port, busy_port = free_sip_port(), free_sip_port()
    callees = [sipp("uas_answer_many.xml", answer_port, work, [("ring_ms", "100")]),
               sipp("uas_busy.xml", busy_port, work)]
    hole = Hole()
    gw = Gateway(binary, work, db_url, release)
    try:
        cases = drive(gw, hooks.server_address[1], answer_port, busy_port, hole.port)
    finally:
        for c in callees:
            c.terminate()
        hooks.shutdown()
    dumped_at_ms = int(time.time() * 1000)
    if backend == "sqlite":
        dump = subprocess.run(["sqlite3", db_path, ".dump"], check=True,
                              capture_output=True, text=True).stdout

        def query(sql):
            return subprocess.run(["sqlite3", db_path, sql], check=True,
                                  capture_output=True, text=True).stdout.strip()
    else:
        dump = subprocess.run(["pg_dump", "--inserts", "--no-owner", "--no-privileges",
                               "--no-comments", db_url],
                              check=True, capture_output=True, text=True).stdout
        # psql meta-commands (\restrict, \unrestrict: pg_dump's guard against a
        # hostile server) are not SQL; the test loads the file through sqlx.
        dump = "".join(l for l in dump.splitlines(keepends=True) if not l.startswith("\\"))

        def query(sql):
            return subprocess.run(["psql", db_url, "-qtAc", sql], check=True,
                                  capture_output=True, text=True).stdout.strip()
    rows = counts(query)
    for name, case in cases.items():
        # What the old release left in its database for each one (the gateway is
        # dead by now), as the test compares after migrating.
        got = query("SELECT v.status || '|' || c.status || '|' || v.attempts_left "
                    "FROM verifications v JOIN calls c ON c.verification_id = v.id "
                    f"WHERE v.id = '{case['id']}'").split("|")
        case["seen"] = {"status": got[0], "call": got[1], "attempts_left": int(got[2])}
        if any(case["expect"][k] != case["seen"][k] for k in case["expect"]):
            sys.exit(f"{name}: expected {case['expect']}, the database has {case['seen']}")
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, f"{backend}.sql"), "w") as f:
        f.write(dump)
    meta_path = os.path.join(outdir, "meta.json")
    meta = {}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            meta = json.load(f)
    meta.setdefault("release", release)
    meta[backend] = {"dumped_at_ms": dumped_at_ms, "rows": rows, "cases": cases}
    with open(meta_path, "w") as f:
        json.dump(meta, f, indent=2, sort_keys=True)
        f.write("\n")
    print(f"{backend}: {rows} -> {outdir}")
    if backend == "postgres":
        subprocess.run(["psql", f"{PG_SERVER}/test", "-qc",
                        f"DROP DATABASE {db_url.rsplit('/', 1)[1]}"], check=False)
    shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the old release's otpdial binary")
    ap.add_argument("--release", required=True, help="e.g. 0.1")
    ap.add_argument("--only", choices=["sqlite", "postgres"])
    args = ap.parse_args()
    outdir = os.path.join(REPO, "tests/fixtures/db", args.release)
    for backend in ("sqlite", "postgres"):
        if args.only in (None, backend):
            make(backend, os.path.abspath(args.bin), args.release, outdir)


if __name__ == "__main__":
    main()
