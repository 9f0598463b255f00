"""Command line: ``python -m app serve | accounts | keys | packages | usage | reconcile | db``.

One-shot commands open the configured store, do one thing, print JSON (a new key is printed
alone on the last line), and exit non-zero on failure.
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

from . import logs, operations
from .config import ConfigError, Settings
from .errors import GatewayError
from .keys import key_hash
from .metrics import MULTIPROC_ENV
from .store import Store, open_store

log = logging.getLogger("zowy")


def main(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.worker_of is not None:
        from .worker import main as worker

        return worker()
    try:
        settings = Settings.from_env(environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve(settings, args)
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
    p.set_defaults(handler=_keys_create)
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

    p = sub.add_parser("usage", help="usage totals of an account")
    p.add_argument("--account", required=True)
    p.add_argument("--since", help="ISO date or datetime (UTC), default 30 days ago")
    p.add_argument("--until", help="ISO date or datetime (UTC), default now")
    p.set_defaults(handler=_usage)

    p = sub.add_parser("reconcile", help="bill what crashed workers left, then check every package against the ledger")
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
    account = await operations.create_account(store, args.name)
    _print({"id": account.id, "name": account.name})
    return 0


async def _accounts_list(store: Store, settings: Settings, args) -> int:
    _print([{"id": a.id, "name": a.name, "created_at": a.created_at} for a in await store.accounts()])
    return 0


async def _keys_create(store: Store, settings: Settings, args) -> int:
    account = await operations.find_account(store, args.account)
    record, key = await operations.create_key(store, settings, account, args.per_minute, args.per_hour)
    print(f"key id: {record.id}  account: {account.name} ({account.id})")
    print("This is the only time the key is shown:")
    print(key)
    return 0


async def _keys_revoke(store: Store, settings: Settings, args) -> int:
    await operations.revoke_key(store, args.key_id)
    print(f"revoked {args.key_id}")
    return 0


async def _keys_list(store: Store, settings: Settings, args) -> int:
    account = await operations.find_account(store, args.account)
    _print([operations.key_view(k) for k in await store.keys(account.id)])
    return 0


async def _keys_limits(store: Store, settings: Settings, args) -> int:
    await operations.set_limits(store, args.key_id, args.per_minute, args.per_hour)
    _print({"id": args.key_id, "per_minute": args.per_minute, "per_hour": args.per_hour})
    return 0


async def _packages_grant(store: Store, settings: Settings, args) -> int:
    account = await operations.find_account(store, args.account)
    package = await operations.grant_package(store, settings, account, args.plan, args.tokens, args.days)
    _print(operations.package_view(package, time.time()))
    return 0


async def _packages_list(store: Store, settings: Settings, args) -> int:
    account = await operations.find_account(store, args.account)
    _print(await operations.balance(store, account))
    return 0


async def _usage(store: Store, settings: Settings, args) -> int:
    account = await operations.find_account(store, args.account)
    report = await operations.usage_report(
        store, account, operations.parse_time(args.since, "since"), operations.parse_time(args.until, "until")
    )
    _print(report)
    return 0


async def _reconcile(store: Store, settings: Settings, args) -> int:
    report = await operations.reconcile(store, settings)
    _print(report)
    return 0 if report["ok"] else 1


async def _db_init(store: Store, settings: Settings, args) -> int:
    print(f"initialised {settings.store_url.split('@')[-1]}")
    return 0


def serve(settings: Settings, args) -> int:
    """Run the gateway with its workers; in demo mode, with the built-in demo model answering."""
    from .supervisor import Supervisor, bind

    changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None}
    settings = settings.with_(**changes)
    logs.configure(settings.log_level, settings.log_format)
    _metrics_dir(settings)
    if settings.demo:
        _announce_demo(settings)
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
    os.environ[MULTIPROC_ENV] = str(directory)


def _announce_demo(settings: Settings) -> None:
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
    print("=" * 72, flush=True)


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
        account = await store.account("demo") or await operations.create_account(store, "demo")
        if not [p for p in await store.packages(account.id) if p.active_at(time.time())]:
            await operations.grant_package(store, settings, account, "pro")
        _, key = await operations.create_key(store, settings, account)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key + "\n")
        return key
    finally:
        await store.close()
