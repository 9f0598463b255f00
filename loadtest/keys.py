"""Create the API keys a load test needs and write them to a JSON file the locustfile reads.

    python -m loadtest.keys --out keys.json [--count 50] [--limits-count 2] [--per-minute 1000000]
        [--admin-url https://host --admin-token TOKEN]

Throughput keys get high per-key limits and share one account with a large package, so neither the
limits nor the balance dominate a throughput profile; the few ``limits`` keys keep the default
limits (60/min, 1000/h) for the profile that hammers them. Without ``--admin-url`` the keys are made
with the gateway's CLI (``python -m app``) against the store its ``ZOWY_*`` environment names; with
it, through the admin API (``/admin/v1``, token from ``--admin-token`` or ``ZOWY_ADMIN_TOKEN``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class Cli:
    """Keys through ``python -m app`` (the environment names the store)."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        self.env = env

    def _run(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=self.env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"python -m app {' '.join(args)}: {out.stderr.strip() or out.stdout.strip()}")
        return out.stdout

    def key(self, account: str, per_minute: int | None, per_hour: int | None) -> str:
        try:
            self._run("accounts", "create", account)
        except RuntimeError as exc:
            if "already exists" not in str(exc):
                raise
        args = ["keys", "create", "--account", account]
        if per_minute:
            args += ["--per-minute", str(per_minute)]
        if per_hour:
            args += ["--per-hour", str(per_hour)]
        return self._run(*args).strip().splitlines()[-1].strip()

    def package(self, account: str, tokens: int) -> None:
        self._run("packages", "grant", "--account", account, "--plan", "business", "--tokens", str(tokens))


class Admin:
    """Keys through the admin API."""

    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url.rstrip("/"), token
        self.accounts: set[str] = set()

    def _post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Authorization": f"Bearer {self.token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    def _account(self, name: str) -> None:
        if name not in self.accounts:
            status, body = self._post("/admin/v1/accounts", {"name": name})
            if status not in (200, 201, 409):
                raise RuntimeError(f"create account {name}: {status} {body}")
            self.accounts.add(name)

    def key(self, account: str, per_minute: int | None, per_hour: int | None) -> str:
        self._account(account)
        body = {k: v for k, v in (("per_minute", per_minute), ("per_hour", per_hour)) if v}
        status, doc = self._post(f"/admin/v1/accounts/{account}/keys", body)
        if status not in (200, 201):
            raise RuntimeError(f"create key: {status} {doc}")
        return doc["key"]

    def package(self, account: str, tokens: int) -> None:
        self._account(account)
        status, doc = self._post(f"/admin/v1/accounts/{account}/packages", {"plan": "business", "tokens": tokens})
        if status not in (200, 201):
            raise RuntimeError(f"grant package: {status} {doc}")


def create(maker, count: int, limits_count: int, per_minute: int, per_hour: int, tokens: int,
           prefix: str = "loadtest") -> dict:
    account = f"{prefix}-{int(time.time())}"
    keys = [maker.key(account, per_minute, per_hour) for _ in range(count)]  # the first creates the account
    maker.package(account, tokens)
    limits_account = account + "-limits"
    limits_keys = []
    if limits_count:
        limits_keys = [maker.key(limits_account, None, None) for _ in range(limits_count)]
        maker.package(limits_account, tokens)
    return {"account": account, "keys": keys, "limits_account": limits_account, "limits_keys": limits_keys}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.keys", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=50, help="throughput keys (default 50)")
    p.add_argument("--limits-count", type=int, default=2, help="keys with default limits for the limits profile")
    p.add_argument("--per-minute", type=int, default=1_000_000)
    p.add_argument("--per-hour", type=int, default=100_000_000)
    p.add_argument("--tokens", type=int, default=100_000_000_000, help="package size per account")
    p.add_argument("--admin-url", help="use the admin API of this gateway instead of the CLI")
    p.add_argument("--admin-token", default=os.environ.get("ZOWY_ADMIN_TOKEN", ""))
    args = p.parse_args(argv)
    maker = Admin(args.admin_url, args.admin_token) if args.admin_url else Cli()
    doc = create(maker, args.count, args.limits_count, args.per_minute, args.per_hour, args.tokens)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {len(doc['keys'])} keys and {len(doc['limits_keys'])} limits keys to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
