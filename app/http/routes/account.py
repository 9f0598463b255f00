"""The customer API under /api/v1: an account's owners sign in, then manage their own keys, redeem
codes, read their balance and ledger, and set low-balance alerts.

A session is sent as ``Authorization: Bearer zs-...`` or as the ``zowy_session`` cookie; with the
cookie, every state-changing call must also send ``X-CSRF-Token``.
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import replace
from datetime import datetime, timezone

import orjson
from sanic import Blueprint, Request
from sanic.response import HTTPResponse

from ...accounts import owners, provisioning, signin
from ...billing import grants, packages
from ...core.errors import InvalidRequest
from ...gateway.services import Services
from ...store.contracts.ledger import LedgerQuery
from ...wire import paging
from ...wire.bodies import parse_body
from .. import auth

bp = Blueprint("account")

API = "/api/v1"
CSV_PAGE = 1000
CSV_MAX_ROWS = 1_000_000
LEDGER_FIELDS = (
    "request_id", "created_at", "key_id", "model", "prompt_tokens", "completion_tokens", "total_tokens",
    "estimated", "stream", "outcome", "status", "latency_ms", "user", "api",
)


def _json(value, status: int = 200) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(value), status=status, content_type="application/json")


# sign-in


async def accept_invite(request: Request) -> HTTPResponse:
    services = auth.services(request)
    body = parse_body("accept_invite", request.body)
    owner = await owners.accept_invite(services.store, services.settings, body["token"], body["password"], auth.client_ip(request))
    return _json({"owner": owners.owner_view(owner)}, 201)


async def sign_in(request: Request) -> HTTPResponse:
    services = auth.services(request)
    body = parse_body("sign_in", request.body)
    done = await owners.sign_in(services.store, services.settings, body["email"], body["password"], auth.client_ip(request))
    response = _json({
        "token": done.token,
        "csrf_token": done.csrf,
        "expires_at": done.session.expires_at,
        "owner": owners.owner_view(done.owner),
    }, 201)
    auth.set_session_cookies(request, response, owners.SESSION_COOKIE, done.token, owners.CSRF_COOKIE, done.csrf,
                             services.settings.self_service.session_ttl)
    return response


async def sign_out(request: Request) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    await owners.sign_out(services.store, services.settings, caller.token)
    response = _json({"signed_out": True})
    auth.clear_session_cookies(request, response, owners.SESSION_COOKIE, owners.CSRF_COOKIE)
    return response


# balance and keys


async def account(request: Request) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    found = await provisioning.find_account(services.store, caller.session.account_id)
    return _json(await packages.balance(services.store, found))


async def _key_views(services: Services, records) -> list[dict]:
    now = time.time()
    views = []
    for record in records:
        view = provisioning.key_view(record, now)
        if record.token_cap is not None:
            view["used_tokens"] = await services.store.key_tokens(record.id)
        views.append(view)
    return views


async def list_keys(request: Request) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    return _json({"data": await _key_views(services, await services.store.keys(caller.session.account_id))})


async def create_key(request: Request) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    body = parse_body("key", request.body)
    store = services.store
    live = [k for k in await store.keys(caller.session.account_id) if k.active]
    if len(live) >= services.settings.self_service.max_keys:
        raise InvalidRequest(
            f"This account already has {len(live)} active keys, the most allowed; revoke one first.",
            code="too_many_keys",
        )
    found = await provisioning.find_account(store, caller.session.account_id)
    controls = {k: v for k, v in body.items() if k not in ("per_minute", "per_hour")}
    record, key = await provisioning.create_key(
        store, services.settings, found, body.get("per_minute"), body.get("per_hour"),
        controls=controls, actor=caller.actor, owner=True,
    )
    return _json({**provisioning.key_view(record), "key": key}, 201)


async def update_key(request: Request, key_id: str) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    body = parse_body("key_controls", request.body)
    record = await provisioning.set_key_controls(
        services.store, services.settings, key_id, body,
        actor=caller.actor, account_id=caller.session.account_id, owner=True,
    )
    return _json(provisioning.key_view(record))


async def revoke_key(request: Request, key_id: str) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    await provisioning.revoke_key(services.store, key_id, caller.actor, account_id=caller.session.account_id)
    return _json(provisioning.key_view(await services.store.key(key_id)))


# money in


async def redeem(request: Request) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    body = parse_body("redeem", request.body)
    limits = services.settings.self_service
    now = time.time()
    await signin.throttle(services.store, services.settings, f"redeem:acct:{caller.session.account_id}",
                            limits.redeem_per_minute, limits.redeem_per_hour, now, "redemption attempts")
    found = await provisioning.find_account(services.store, caller.session.account_id)
    package = await grants.redeem(services.store, services.settings, found, body["code"], caller.actor)
    return _json({"package": packages.package_view(package, now), **await packages.balance(services.store, found)}, 201)


# the ledger


def _ledger_query(request: Request, limit: int) -> LedgerQuery:
    args = request.args
    return LedgerQuery(
        limit=limit,
        after=paging.after(args.get("cursor")),
        since=provisioning.parse_time(args.get("since"), "since"),
        until=provisioning.parse_time(args.get("until"), "until"),
        model=args.get("model") or None,
        key_id=args.get("key") or None,
        outcome=args.get("outcome") or None,
        api=args.get("api") or None,
    )


def ledger_view(entry) -> dict:
    return {name: getattr(entry, name) for name in LEDGER_FIELDS}


async def ledger(request: Request) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    query = _ledger_query(request, paging.limit(request.args.get("limit")))
    entries = await services.store.ledger_page(caller.session.account_id, query)
    next_cursor = paging.cursor(entries[-1].created_at, entries[-1].request_id) if len(entries) == query.limit else None
    return _json({"data": [ledger_view(e) for e in entries], "next_cursor": next_cursor})


def _cell(value) -> object:
    # A spreadsheet runs a cell that starts with = + - @ as a formula: such text goes out quoted.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_rows(rows: list[list]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    return out.getvalue().encode()


async def ledger_csv(request: Request) -> None:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    query = _ledger_query(request, CSV_PAGE)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    response = await request.respond(
        content_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="zowy-ledger-{stamp}.csv"'},
    )
    await response.send(_csv_rows([list(LEDGER_FIELDS)]))
    sent = CSV_MAX_ROWS if request.method == "HEAD" else 0  # HEAD: the GET's headers, no rows read
    while sent < CSV_MAX_ROWS:
        entries = await services.store.ledger_page(caller.session.account_id, query)
        if not entries:
            break
        rows = []
        for entry in entries:
            row = ledger_view(entry)
            row["created_at"] = datetime.fromtimestamp(entry.created_at, tz=timezone.utc).isoformat()
            rows.append([_cell(row[name]) for name in LEDGER_FIELDS])
        await response.send(_csv_rows(rows))
        sent += len(entries)
        if len(entries) < query.limit:
            break
        query = replace(query, after=(entries[-1].created_at, entries[-1].request_id))
    await response.eof()


# low-balance alerts


async def get_alerts(request: Request) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    return _json(await services.alerts.describe(caller.session.account_id))


async def put_alerts(request: Request) -> HTTPResponse:
    services = auth.services(request)
    caller = await auth.signed_in(request)
    body = parse_body("alerts", request.body)
    return _json(await services.alerts.configure(caller.session.account_id, body["url"], body.get("thresholds"), caller.actor))


bp.add_route(accept_invite, f"{API}/auth/invite/accept", methods=["POST"], name="accept_invite")
bp.add_route(sign_in, f"{API}/auth/sessions", methods=["POST"], name="sign_in")
bp.add_route(sign_out, f"{API}/auth/sessions/current", methods=["DELETE"], name="sign_out")
bp.add_route(account, f"{API}/account", methods=["GET"], name="account")
bp.add_route(get_alerts, f"{API}/account/alerts", methods=["GET"], name="get_alerts")
bp.add_route(put_alerts, f"{API}/account/alerts", methods=["PUT"], name="put_alerts")
bp.add_route(list_keys, f"{API}/keys", methods=["GET"], name="list_keys")
bp.add_route(create_key, f"{API}/keys", methods=["POST"], name="create_key")
bp.add_route(update_key, f"{API}/keys/<key_id>", methods=["PATCH"], name="update_key")
bp.add_route(revoke_key, f"{API}/keys/<key_id>/revoke", methods=["POST"], name="revoke_key")
bp.add_route(redeem, f"{API}/redeem", methods=["POST"], name="redeem")
bp.add_route(ledger, f"{API}/ledger", methods=["GET"], name="ledger")
bp.add_route(ledger_csv, f"{API}/ledger.csv", methods=["GET"], name="ledger_csv")
