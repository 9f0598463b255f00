"""The command line, run as a real process against a fresh embedded store."""
from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess
import sys
import time

import pytest

from tests import support
from tests.support import ROOT


@pytest.fixture
def cli(tmp_path):
    env = {"ZOWY_DATA_DIR": str(tmp_path), "ZOWY_DEMO": "off", "PATH": "/usr/bin:/bin"}

    def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        if ok:
            assert done.returncode == 0, done.stderr
        return done

    return run


def test_key_lifecycle_and_money_commands(cli, tmp_path):
    missing = cli("keys", "create", "--account", "acme", ok=False)
    assert missing.returncode == 1 and "acme" in missing.stderr  # never creates an account by accident
    cli("accounts", "create", "acme")
    done = cli("keys", "create", "--account", "acme")
    key = done.stdout.strip().splitlines()[-1]
    assert key.startswith("zk-") and len(key) > 30
    assert key not in (tmp_path / "zowy.db").read_bytes().decode("latin-1")

    keys = json.loads(cli("keys", "list", "--account", "acme").stdout)
    assert len(keys) == 1 and keys[0]["revoked_at"] is None
    cli("keys", "limits", keys[0]["id"], "--per-minute", "5")
    assert json.loads(cli("keys", "list", "--account", "acme").stdout)[0]["per_minute"] == 5
    cli("keys", "revoke", keys[0]["id"])
    assert json.loads(cli("keys", "list", "--account", "acme").stdout)[0]["revoked_at"] is not None
    assert cli("keys", "revoke", "key_nope", ok=False).returncode == 1

    assert json.loads(cli("accounts", "create", "globex").stdout)["name"] == "globex"
    assert cli("accounts", "create", "globex", ok=False).returncode == 1
    package = json.loads(cli("packages", "grant", "--account", "globex", "--plan", "pro").stdout)
    assert package["tokens"] == 2_000_000 and package["active"]
    assert cli("packages", "grant", "--account", "globex", "--plan", "gold", ok=False).returncode == 1
    balance = json.loads(cli("packages", "list", "--account", "globex").stdout)
    assert balance["remaining_tokens"] == balance["available_tokens"] == 2_000_000
    assert balance["reserved_tokens"] == balance["settled_tokens"] == 0
    usage = json.loads(cli("usage", "--account", "globex", "--since", "2020-01-01").stdout)
    assert usage["total"]["requests"] == 0
    assert json.loads(cli("reconcile").stdout)["mismatches"] == []
    assert "initialised" in cli("db", "init").stdout


def test_reconcile_exits_non_zero_on_mismatch(cli, tmp_path):
    import sqlite3

    cli("accounts", "create", "acme")
    cli("packages", "grant", "--account", "acme", "--plan", "pro")
    with sqlite3.connect(tmp_path / "zowy.db") as db:
        db.execute("UPDATE packages SET used = 5")
    done = cli("reconcile", ok=False)
    assert done.returncode == 1
    assert json.loads(done.stdout)["mismatches"][0]["recorded"] == 5


def test_reconcile_reports_reservations_left_past_their_expiry(cli, tmp_path):
    import sqlite3
    import time

    account = json.loads(cli("accounts", "create", "acme").stdout)["id"]
    assert json.loads(cli("reconcile").stdout)["ok"]
    with sqlite3.connect(tmp_path / "zowy.db") as db:
        db.execute("INSERT INTO leases (id, account_id, tokens, expires_at) VALUES ('w:x', ?, 500, ?)",
                   (account, time.time() - 3600))
    done = cli("reconcile", ok=False)
    report = json.loads(done.stdout)
    assert done.returncode == 1 and not report["ok"] and report["mismatches"] == []
    assert [(r["id"], r["tokens"]) for r in report["expired_reservations"]] == [("w:x", 500)]


def test_bad_configuration_is_reported(cli, tmp_path):
    done = subprocess.run([sys.executable, "-m", "app", "reconcile"], cwd=ROOT, capture_output=True, text=True,
                          env={"ZOWY_DATA_DIR": str(tmp_path), "ZOWY_PORT": "eighty"})
    assert done.returncode == 2 and "ZOWY_PORT" in done.stderr


def test_key_controls_owners_codes_alerts_and_audit(cli, tmp_path):
    import subprocess as sp

    cli("accounts", "create", "acme")
    done = cli("keys", "create", "--account", "acme", "--name", "ci", "--models", "zowy-1,zowy-2",
               "--token-cap", "5000", "--ips", "10.0.0.0/8", "--expires", "2099-01-01")
    key_id = done.stdout.split()[2]
    [key] = json.loads(cli("keys", "list", "--account", "acme").stdout)
    assert (key["id"], key["name"], key["models"], key["token_cap"], key["ips"]) == (key_id, "ci", ["zowy-1", "zowy-2"], 5000, ["10.0.0.0/8"])
    assert key["expires_at"] == 4070908800.0 and key["status"] == "active"
    changed = json.loads(cli("keys", "set", key_id, "--models", "all", "--token-cap", "none", "--per-minute", "7").stdout)
    assert changed["models"] is None and changed["token_cap"] is None and changed["per_minute"] == 7 and changed["name"] == "ci"
    bad = cli("keys", "set", key_id, "--models", "zowy-9", ok=False)
    assert bad.returncode == 1 and "zowy-9" in bad.stderr
    assert cli("keys", "set", "key_nope", "--name", "x", ok=False).returncode == 1

    invite = cli("owners", "invite", "--account", "acme", "--email", "ann@example.com")
    assert invite.stdout.strip().splitlines()[-1].startswith("zi-")
    made = sp.run([sys.executable, "-m", "app", "owners", "create", "--account", "acme", "--email", "bob@example.com"],
                  cwd=ROOT, env={"ZOWY_DATA_DIR": str(tmp_path), "ZOWY_DEMO": "off", "ZOWY_SCRYPT_COST": "10", "PATH": "/usr/bin:/bin"},
                  input="a long enough password\n", capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    assert [o["email"] for o in json.loads(cli("owners", "list", "--account", "acme").stdout)] == ["bob@example.com"]
    assert cli("owners", "invite", "--account", "nobody", "--email", "x@example.com", ok=False).returncode == 1

    out = cli("codes", "create", "--plan", "pro", "--count", "3", "--days", "5").stdout
    codes = [line for line in out.splitlines() if line.startswith("ZOWY-")]
    batch = json.loads(out[: out.index("The 3 codes")])
    assert len(codes) == 3 and batch["tokens"] == 2_000_000 and batch["days"] == 5
    listed = json.loads(cli("codes", "list", batch["batch_id"]).stdout)
    assert len(listed) == 3 and all(c["redeemed_by"] is None for c in listed)
    assert not any(code in (tmp_path / "zowy.db").read_bytes().decode("latin-1") for code in codes)
    assert cli("codes", "create", "--count", "3", ok=False).returncode == 1

    off = cli("alerts", "set", "--account", "acme", "--url", "https://hooks.example.com/x", ok=False)
    assert off.returncode == 1 and "ZOWY_ALERT_SECRET" in off.stderr
    shown = json.loads(cli("alerts", "show", "--account", "acme").stdout)
    assert shown["url"] is None and shown["thresholds"] == [10, 0]

    events = json.loads(cli("audit", "--account", "acme").stdout)
    actions = [e["action"] for e in events]
    assert {"account.create", "key.create", "key.controls", "invite.create", "owner.create"} <= set(actions)
    assert all(e["actor"] == "cli" for e in events)
    controls = next(e for e in events if e["action"] == "key.controls")
    assert controls["before"]["models"] == ["zowy-1", "zowy-2"] and controls["after"]["models"] is None
    assert json.loads(cli("audit", "--action", "codes.create").stdout)[0]["target"] == batch["batch_id"]


def test_a_stop_signal_held_while_a_one_shot_command_starts_stops_it_once_it_runs():
    """``python -m app`` holds SIGTERM from its first line (for ``serve``); a one-shot command gets the
    default action back, and a SIGTERM that came meanwhile ends it then."""
    code = (
        "import os, signal, sys, time\n"
        "from app.process import stop_signals\n"
        "stop_signals.hold()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(0.2)\n"
        "print('held', flush=True)\n"
        "stop_signals.release()\n"
        "print('not stopped', flush=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGTERM and done.stdout == "held\n", (done.returncode, done.stdout, done.stderr)


def test_serve_on_a_terminal_prints_no_framework_warning(tmp_path, models_path):
    """On a terminal each worker goes through Sanic's create_server, which warns (in colour) that it
    runs in production mode; the gateway's own lines are all there is."""
    master, terminal = pty.openpty()
    port = support.free_port()
    env = support.gateway_env(tmp_path, models_path)
    popen = subprocess.Popen([sys.executable, "-m", "app", "serve", "--port", str(port), "--workers", "2"], cwd=ROOT, env=env,
                             stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal, start_new_session=True)
    os.close(terminal)
    shown = b""

    def read(until: bytes, timeout: float) -> None:
        nonlocal shown
        deadline = time.monotonic() + timeout
        while until not in shown and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    shown += os.read(master, 65536)
                except OSError:
                    return
    try:
        read(b"Worker ready", 60)
        while shown.count(b"Worker ready") < 2 and popen.poll() is None:
            read(b"never", 0.2)
        popen.send_signal(signal.SIGTERM)
        read(b'"stopped"', 30)
        assert popen.wait(30) == 0
    finally:
        if popen.poll() is None:
            popen.kill()
            popen.wait()
        os.close(master)
    assert shown.count(b"Worker ready") == 2, shown.decode(errors="replace")
    assert b"PRODUCTION" not in shown, shown.decode(errors="replace")
