"""Command line: ``python -m app serve | accounts | keys | packages | owners | codes | alerts | audit |
usage | reconcile | db``.

One-shot commands open the configured store, do one thing, print JSON (a new key or invite token is
printed alone on the last line; new codes one a line after the batch), and exit non-zero on failure.
Every change is written to the audit log with actor ``cli``.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

from .accounts import audit, owners, provisioning
from .accounts.audit import CLI
from .alerts.rules import Alerts
from .billing import grants, packages, reconciliation
from .core import config, logs
from .core.config import ConfigError, Settings
from .core.digests import key_hash
from .core.errors import GatewayError, InvalidRequest, NotFound
from .core.metrics import MULTIPROC_ENV
from .process import stop_signals
from .store import Store, open_store
from .store.contracts.audit import AuditQuery

_UNSET = object()

log = logging.getLogger("zowy")


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.worker_of is not None:
        from .process.worker import main as worker

        return worker()
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings, args)
    stop_signals.release()  # a one-shot command stops as any command does: at once
    return asyncio.run(_one_shot(settings, args.handler, args))


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description="Zowy Gateway")
    sub = parser.add_subparsers(dest="command", required=True)

    serve_p = sub.add_parser("serve", help="run the gateway")
    serve_p.add_argument("--host")
    serve_p.add_argument("--port", type=int)
    serve_p.add_argument("--workers", type=int)
    serve_p.add_argument("--worker-of", type=int, help=argparse.SUPPRESS)

    accounts = sub.add_parser("accounts", help="manage accounts").add_subparsers(dest="action", required=True)
    p = accounts.add_parser("create")
    p.add_argument("name")
    p.set_defaults(handler=_accounts_create)
    p = accounts.add_parser("list")
    p.set_defaults(handler=_accounts_list)

    keys = sub.add_parser("keys", help="manage API keys").add_subparsers(dest="action", required=True)
    p = keys.add_parser("create")
    p.add_argument("--account", required=True, help="account name or id (create it first with 'accounts create')")
    p.add_argument("--per-minute", type=int)
    p.add_argument("--per-hour", type=int)
    _control_flags(p)
    p.set_defaults(handler=_keys_create)
    p = keys.add_parser("set", help="change a key's controls (only the flags given)")
    p.add_argument("key_id")
    _control_flags(p)
    p.add_argument("--per-minute", default=_UNSET, help="a number, or 'default'")
    p.add_argument("--per-hour", default=_UNSET, help="a number, or 'default'")
    p.set_defaults(handler=_keys_set)
    p = keys.add_parser("revoke")
    p.add_argument("key_id")
    p.set_defaults(handler=_keys_revoke)
    p = keys.add_parser("list")
    p.add_argument("--account", required=True)
    p.set_defaults(handler=_keys_list)
    p = keys.add_parser("limits", help="override a key's rate limits (omit a flag for the default)")
    p.add_argument("key_id")
    p.add_argument("--per-minute", type=int)
    p.add_argument("--per-hour", type=int)
    p.set_defaults(handler=_keys_limits)

    packages = sub.add_parser("packages", help="manage token packages").add_subparsers(dest="action", required=True)
    p = packages.add_parser("grant")
    p.add_argument("--account", required=True)
    p.add_argument("--plan", required=True)
    p.add_argument("--tokens", type=int, help="override the plan's token count")
    p.add_argument("--days", type=int, help="override the plan's validity")
    p.set_defaults(handler=_packages_grant)
    p = packages.add_parser("list")
    p.add_argument("--account", required=True)
    p.set_defaults(handler=_packages_list)

    owners = sub.add_parser("owners", help="people who sign in to run an account").add_subparsers(dest="action", required=True)
    p = owners.add_parser("invite", help="a one-time invite token (the last line) for a new owner")
    p.add_argument("--account", required=True)
    p.add_argument("--email", required=True)
    p.set_defaults(handler=_owners_invite)
    p = owners.add_parser("create", help="an owner with a password read from stdin")
    p.add_argument("--account", required=True)
    p.add_argument("--email", required=True)
    p.set_defaults(handler=_owners_create)
    p = owners.add_parser("list")
    p.add_argument("--account", required=True)
    p.set_defaults(handler=_owners_list)

    codes = sub.add_parser("codes", help="redemption codes").add_subparsers(dest="action", required=True)
    p = codes.add_parser("create", help="a batch of codes, printed one a line after the batch (shown once)")
    p.add_argument("--plan", help="pro or business")
    p.add_argument("--tokens", type=int, help="a token amount (instead of, or overriding, the plan's)")
    p.add_argument("--days", type=int, help="validity of the granted package")
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--expires-in-days", type=int, help="how long the codes can be redeemed")
    p.set_defaults(handler=_codes_create)
    p = codes.add_parser("list", help="a batch's codes and who redeemed them")
    p.add_argument("batch_id")
    p.set_defaults(handler=_codes_list)

    alerts = sub.add_parser("alerts", help="low-balance alerts of an account").add_subparsers(dest="action", required=True)
    p = alerts.add_parser("show")
    p.add_argument("--account", required=True)
    p.set_defaults(handler=_alerts_show)
    p = alerts.add_parser("set")
    p.add_argument("--account", required=True)
    p.add_argument("--url", required=True, help="the receiver, or 'none' to stop alerts")
    p.add_argument("--thresholds", help="percent of the balance left, e.g. 10,0 (the default)")
    p.set_defaults(handler=_alerts_set)

    p = sub.add_parser("audit", help="changes to money and access, newest first")
    p.add_argument("--account")
    p.add_argument("--action", help="e.g. package.grant, key.revoke, signin.failed")
    p.add_argument("--since")
    p.add_argument("--until")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(handler=_audit)

    p = sub.add_parser("usage", help="usage totals of an account")
    p.add_argument("--account", required=True)
    p.add_argument("--since", help="ISO date or datetime (UTC), default 30 days ago")
    p.add_argument("--until", help="ISO date or datetime (UTC), default now")
    p.set_defaults(handler=_usage)

    p = sub.add_parser("reconcile", help="bill what crashed workers left, then check every package against the ledger and that no reservation outlived its expiry")
    p.set_defaults(handler=_reconcile)

    db = sub.add_parser("db", help="database administration").add_subparsers(dest="action", required=True)
    p = db.add_parser("init", help="create tables/collections and indexes (idempotent)")
    p.set_defaults(handler=_db_init)
    return parser


async def _one_shot(settings: Settings, handler: Callable[..., Awaitable[int]], args) -> int:
    store = open_store(settings)
    try:
        await store.init()
        return await handler(store, settings, args)
    except GatewayError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await store.close()


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, ensure_ascii=False, default=str))


async def _accounts_create(store: Store, settings: Settings, args) -> int:
    account = await provisioning.create_account(store, args.name, CLI)
    _print({"id": account.id, "name": account.name})
    return 0


async def _accounts_list(store: Store, settings: Settings, args) -> int:
    _print([{"id": a.id, "name": a.name, "created_at": a.created_at} for a in await store.accounts()])
    return 0


def _control_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=_UNSET, help="a label ('' clears it)")
    p.add_argument("--expires", default=_UNSET, help="ISO datetime (UTC) or epoch seconds, or 'never'")
    p.add_argument("--models", default=_UNSET, help="comma-separated public models the key may use, or 'all'")
    p.add_argument("--token-cap", default=_UNSET, help="most tokens the key may spend, or 'none'")
    p.add_argument("--ips", default=_UNSET, help="comma-separated addresses or CIDRs the key may be used from, or 'any'")


def _controls(args, limits: bool = False) -> dict:
    """The key controls the flags name, as the API takes them."""
    def listed(text: str, clear: str):
        return None if text.strip().lower() == clear else [part.strip() for part in text.split(",") if part.strip()]

    def number(text, clear: str, param: str):
        if isinstance(text, int) or text is None:
            return text
        if text.strip().lower() == clear:
            return None
        try:
            return int(text)
        except ValueError:
            raise InvalidRequest(f"--{param.replace('_', '-')} must be an integer or '{clear}'.", param=param) from None

    given = {k: v for k, v in vars(args).items() if v is not _UNSET}
    out: dict[str, Any] = {}
    if "name" in given:
        out["name"] = given["name"] or None
    if "expires" in given:
        out["expires_at"] = None if given["expires"].strip().lower() == "never" else given["expires"]
    if "models" in given:
        out["models"] = listed(given["models"], "all")
    if "ips" in given:
        out["ips"] = listed(given["ips"], "any")
    if "token_cap" in given:
        out["token_cap"] = number(given["token_cap"], "none", "token_cap")
    for name in ("per_minute", "per_hour"):
        if limits and name in given:
            out[name] = number(given[name], "default", name)
    return out


async def _keys_create(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    record, key = await provisioning.create_key(
        store, settings, account, args.per_minute, args.per_hour, controls=_controls(args), actor=CLI
    )
    print(f"key id: {record.id}  account: {account.name} ({account.id})")
    print("This is the only time the key is shown:")
    print(key)
    return 0


async def _keys_revoke(store: Store, settings: Settings, args) -> int:
    await provisioning.revoke_key(store, args.key_id, CLI)
    print(f"revoked {args.key_id}")
    return 0


async def _keys_list(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    _print([provisioning.key_view(k) for k in await store.keys(account.id)])
    return 0


async def _keys_limits(store: Store, settings: Settings, args) -> int:
    await provisioning.set_limits(store, args.key_id, args.per_minute, args.per_hour, CLI)
    _print({"id": args.key_id, "per_minute": args.per_minute, "per_hour": args.per_hour})
    return 0


async def _packages_grant(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    package = await packages.grant_package(store, settings, account, args.plan, args.tokens, args.days, CLI)
    _print(packages.package_view(package, time.time()))
    return 0


async def _packages_list(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    _print(await packages.balance(store, account))
    return 0


async def _keys_set(store: Store, settings: Settings, args) -> int:
    record = await provisioning.set_key_controls(store, settings, args.key_id, _controls(args, limits=True), actor=CLI)
    _print(provisioning.key_view(record))
    return 0


async def _owners_invite(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    made, token = await owners.invite(store, settings, account, args.email, CLI)
    print(f"invite {made.id} for {made.email} to {account.name} ({account.id}), valid until "
          f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(made.expires_at))}")
    print("Accept with POST /api/v1/auth/invite/accept {\"token\", \"password\"}. The token, shown once:")
    print(token)
    return 0


async def _owners_create(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("password: ")
    else:
        password = sys.stdin.readline().rstrip("\n")
    owner = await owners.create_owner(store, settings, account, args.email, password, CLI)
    _print(owners.owner_view(owner))
    return 0


async def _owners_list(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    _print([owners.owner_view(o) for o in await store.owners(account.id)])
    return 0


async def _codes_create(store: Store, settings: Settings, args) -> int:
    batch = await grants.create_batch(
        store, settings, plan=args.plan, tokens=args.tokens, days=args.days, count=args.count,
        expires_in_days=args.expires_in_days, actor=CLI,
    )
    codes = batch.pop("codes")
    _print(batch)
    print(f"The {len(codes)} codes, shown once:")
    print("\n".join(codes))
    return 0


async def _codes_list(store: Store, settings: Settings, args) -> int:
    codes = await store.codes(args.batch_id)
    if not codes:
        raise NotFound(f"No code batch '{args.batch_id}'.")
    _print([grants.code_view(c) for c in codes])
    return 0


async def _alerts_show(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    _print(await Alerts(settings, store).describe(account.id))
    return 0


async def _alerts_set(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    url = None if args.url.strip().lower() == "none" else args.url
    thresholds = None
    if args.thresholds:
        try:
            thresholds = [int(t) for t in args.thresholds.split(",")]
        except ValueError:
            raise InvalidRequest("--thresholds must be comma-separated integers, e.g. 10,0.") from None
    _print(await Alerts(settings, store).configure(account.id, url, thresholds, CLI))
    return 0


async def _audit(store: Store, settings: Settings, args) -> int:
    account_id = (await provisioning.find_account(store, args.account)).id if args.account else None
    query = AuditQuery(
        limit=max(1, min(args.limit, 10_000)), account_id=account_id, action=args.action,
        since=provisioning.parse_time(args.since, "since"), until=provisioning.parse_time(args.until, "until"),
    )
    _print((await audit.page(store, query))["data"])
    return 0


async def _usage(store: Store, settings: Settings, args) -> int:
    account = await provisioning.find_account(store, args.account)
    report = await packages.usage_report(
        store, account, provisioning.parse_time(args.since, "since"), provisioning.parse_time(args.until, "until")
    )
    _print(report)
    return 0


async def _reconcile(store: Store, settings: Settings, args) -> int:
    report = await reconciliation.reconcile(store, settings)
    _print(report)
    return 0 if report["ok"] else 1


async def _db_init(store: Store, settings: Settings, args) -> int:
    print(f"initialised {settings.store_url.split('@')[-1]}")
    return 0


def serve(settings: Settings, args) -> int:
    """Run the gateway with its workers; in demo mode, with the built-in demo model answering."""
    from .process.supervisor import Supervisor, bind

    changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None}
    settings = settings.with_(**changes)
    logs.configure(settings.log_level, settings.log_format)
    _metrics_dir(settings)
    if settings.demo:
        settings = _announce_demo(settings)
    try:
        sock = bind(settings)
    except OSError as exc:
        print(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"Zowy Gateway listening on http://{settings.host}:{sock.getsockname()[1]} with {settings.workers} worker(s)", flush=True)
    return Supervisor(settings, sock).run()


def _metrics_dir(settings: Settings) -> None:
    """A fresh directory where this instance's workers keep their metric values (inherited by them)."""
    directory = Path(settings.data_dir).resolve() / "metrics" / f"{socket.gethostname()}-{settings.port}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    config.export(MULTIPROC_ENV, str(directory))


def _announce_demo(settings: Settings) -> Settings:
    """Print the demo key and the console's demo sign-in; the settings to serve with (an admin token
    is made for the demo when none is set)."""
    log.warning(
        "DEMO MODE: no provider API keys are configured; every model is answered by the built-in "
        "demo model. Set GEMINI_API_KEY / OPENAI_API_KEY for real answers."
    )
    key = asyncio.run(_demo_key(settings))
    print("=" * 72)
    print("DEMO MODE - answers come from a built-in demo model, not a real one.")
    print(f"Demo API key: {key}")
    print("Try:")
    print(f"  curl http://{settings.host}:{settings.port}/api/v1/chat/completions \\")
    print(f"    -H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' \\")
    print("    -d '{\"model\": \"zowy-1\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}]}'")
    if settings.console.enabled:
        from .accounts import demo as console_demo

        settings, access = console_demo.prepare(settings)
        print(*access.lines(), sep="\n")
    print("=" * 72, flush=True)
    return settings


async def _demo_key(settings: Settings) -> str:
    """The demo account's key: created once, kept in the data directory so every run can show it."""
    path = Path(settings.data_dir) / "demo-key"
    store = open_store(settings)
    try:
        await store.init()
        if path.exists():
            key = path.read_text().strip()
            record = await store.key_by_hash(key_hash(key, settings.key_pepper))
            if record is not None and record.active:
                return key
        account = await store.account("demo") or await provisioning.create_account(store, "demo")
        if not [p for p in await store.packages(account.id) if p.active_at(time.time())]:
            await packages.grant_package(store, settings, account, "pro")
        _, key = await provisioning.create_key(store, settings, account)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
    finally:
        await store.close()
