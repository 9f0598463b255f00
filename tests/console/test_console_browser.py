"""The console in a real browser (headless Chromium): a customer signs in by keyboard, creates a key,
calls the gateway with it through the OpenAI SDK, finds the request in the usage log, the CSV and the
charts, limits and revokes the key and sees it refused, redeems a code; an operator grants a package
the customer then sees, makes codes, reads the audit log and watches live traffic. Every page is
screenshotted; no page may log a script error or a CSP refusal."""
from __future__ import annotations

import re
import threading
import time
import uuid

import openai
import pytest

from app.store.contracts.ledger import LedgerEntry
from tests import accounts_kit as kit
from tests import support
from tests.conftest import http, sdk_client
from tests.console.browser import VIEWPORT, Problems, off_loop

expect = pytest.importorskip("playwright.sync_api", reason="the console's browser tests need Playwright").expect

ADMIN = {"Authorization": "Bearer admin-secret-token"}
DAY = 86400
# The console's own 401 for a wrong password, logged by Chromium as a failed load.
WRONG_PASSWORD_LOAD = "status of 401"


def seed_history(gateway, customer: support.Customer, days: int = 14) -> int:
    """Two weeks of earlier requests on the customer's key, so the charts have a history to show."""
    now = time.time()
    entries = []
    for day in range(days, 0, -1):
        for i in range((day * 7) % 5 + 2):
            model = ("zowy-1", "zowy-1", "zowy-1-pro", "zowy-2")[(day + i) % 4]
            failed = (day + i) % 9 == 0
            prompt, completion = 300 + 40 * ((day * 3 + i) % 7), 0 if failed else 150 + 60 * ((day + 2 * i) % 5)
            entries.append(LedgerEntry(
                request_id=uuid.uuid4().hex[:24], account_id=customer.account_id, key_id=customer.key_id, model=model,
                target="", prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                estimated=False, stream=bool(i % 2), outcome="upstream_error" if failed else "ok", status=502 if failed else 200,
                latency_ms=180.0 + 37 * i, user=None, created_at=now - day * DAY + 600 * i,
            ))
    off_loop(support.run_store, gateway, lambda store: store.record(entries))
    return len(entries)


def new_account(gateway, name: str, tokens: int | None, key_name: str | None = None) -> tuple[support.Customer, str]:
    """An account (with a package unless tokens is None), its first key, and an owner's email."""
    name = f"{name}-{uuid.uuid4().hex[:4]}"
    customer = off_loop(support.new_customer, gateway, tokens=tokens, name=name)
    if key_name:
        with http(gateway) as h:
            assert h.patch(f"/admin/v1/keys/{customer.key_id}", json={"name": key_name}, headers=ADMIN).status_code == 200
    email = f"owner@{name}.example"
    kit.invite_and_accept(gateway, customer.account_id, email)
    return customer, email


def page_of(chromium, problems_expected: tuple[str, ...] = ()):
    """A page in a browser of its own, with a client address of its own (sign-ins are throttled per address)."""
    context = chromium.new_context(viewport=VIEWPORT, accept_downloads=True, extra_http_headers={"X-Forwarded-For": kit.fresh_ip()})
    page = context.new_page()
    return context, page, Problems(page, problems_expected)


def heading(page):
    return page.get_by_role("heading", level=1)


def sign_in(page, gateway, email: str) -> None:
    page.goto(f"{gateway.url}/console")
    form = page.get_by_role("form", name="Customer sign-in")
    form.get_by_label("Email").fill(email)
    form.get_by_label("Password").fill(kit.PASSWORD)
    form.get_by_role("button", name="Sign in").click()
    expect(heading(page)).to_contain_text("Dashboard")


def operator_sign_in(page, gateway) -> None:
    page.goto(f"{gateway.url}/console")
    form = page.get_by_role("form", name="Operator sign-in")
    form.get_by_label("Admin token").fill("admin-secret-token")
    form.get_by_role("button", name="Sign in as operator").click()
    expect(heading(page)).to_have_text("Accounts")


def card(page, label: str):
    """The value shown on the dashboard card with this label."""
    return page.locator(".card", has=page.locator(".card-label", has_text=label)).locator(".card-value")


def nav(page, name: str) -> None:
    page.get_by_role("navigation", name="Console pages").get_by_role("link", name=name, exact=True).click()


def nothing_secret_kept(page, *secrets: str) -> None:
    """No session or admin token in the page's storage, readable cookies or address."""
    kept = page.evaluate("() => JSON.stringify([{...localStorage}, {...sessionStorage}, document.cookie, location.href])")
    for secret in secrets:
        assert secret not in kept
    assert "zs-" not in kept and "zo-" not in kept


def test_customer_console(console_gateway, chromium, shots):
    gw = console_gateway
    customer, email = new_account(gw, "acme", tokens=2_000_000, key_name="production")
    seeded = seed_history(gw, customer)
    context, page, problems = page_of(chromium, (WRONG_PASSWORD_LOAD,))
    try:
        page.goto(f"{gw.url}/console")
        expect(heading(page)).to_have_text("Sign in to the Zowy console")
        shots.take(page, "sign-in")
        form = page.get_by_role("form", name="Customer sign-in")
        form.get_by_label("Email").fill(email)
        form.get_by_label("Password").fill("not the password")
        form.get_by_role("button", name="Sign in").click()
        expect(form.get_by_role("alert")).to_have_text("Incorrect email or password.")

        # By keyboard alone: Tab from the top of a fresh page to the email field, type, Tab, type, Enter.
        page.goto(f"{gw.url}/console#/signin")
        page.reload()
        expect(heading(page)).to_have_text("Sign in to the Zowy console")
        for _ in range(12):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.type") == "email":
                break
        else:
            pytest.fail("the email field cannot be reached with Tab")
        assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") == "solid"  # focus is visible
        page.keyboard.type(email)
        page.keyboard.press("Tab")
        page.keyboard.type(kit.PASSWORD)
        page.keyboard.press("Enter")
        expect(heading(page)).to_have_text(f"Dashboard — {off_loop(support.run_store, gw, lambda s: s.account(customer.account_id)).name}")
        expect(card(page, "Active package")).to_have_text("Pro")

        # a key, made in the browser and shown once
        nav(page, "API keys")
        expect(heading(page)).to_have_text("API keys")
        create = page.get_by_role("form", name="Create a key")
        create.get_by_label("Name").fill("browser")
        create.get_by_label("zowy-1", exact=True).check()
        create.get_by_label("zowy-1-pro").check()
        create.get_by_role("button", name="Create key").click()
        secret = page.get_by_role("region", name="New key browser")
        key = secret.get_by_role("textbox").input_value()
        assert key.startswith("zk-")
        row = page.locator("tr", has_text="browser")
        expect(row).to_contain_text("zowy-1, zowy-1-pro")
        expect(row).to_contain_text("active")
        shots.take(page, "keys")

        # the key works with the OpenAI SDK, within its model allow-list
        with sdk_client(gw, key) as client:
            answer = client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "Hello from the console"}], max_tokens=16)
            request_id = answer.id.removeprefix("chatcmpl-")
            streamed = list(client.chat.completions.create(model="zowy-1-pro", messages=[{"role": "user", "content": "Stream, please"}],
                                                           max_tokens=16, stream=True))
            pro_request_id = streamed[0].id.removeprefix("chatcmpl-")
            with pytest.raises(openai.NotFoundError):
                client.chat.completions.create(model="zowy-2", messages=[{"role": "user", "content": "hi"}])

        # ... and its requests show in the usage log, filtered, and in the CSV
        nav(page, "Usage log")
        expect(heading(page)).to_have_text("Usage log")

        def listed():
            page.get_by_role("button", name="Refresh").click()
            page.wait_for_timeout(200)
            return page.locator(f'tr[data-id="{pro_request_id}"]').count() and page.locator(f'tr[data-id="{request_id}"]').count()

        support.wait_until(listed, timeout=15, interval=0.3)
        row = page.locator(f'tr[data-id="{request_id}"]')
        expect(row.get_by_role("cell").nth(1)).to_have_text(re.compile(r"^browser\s*zk-"))  # the key's name and prefix
        expect(row).to_contain_text("zowy-1")
        expect(row).to_contain_text("ok 200")
        expect(row).to_contain_text(str(answer.usage.total_tokens))
        shots.take(page, "usage-log", full_page=False)

        filters = page.get_by_role("form", name="Filter the usage log")
        filters.get_by_label("Model").select_option("zowy-1-pro")
        filters.get_by_role("button", name="Apply filters").click()
        expect(page.locator(f'tr[data-id="{request_id}"]')).to_have_count(0)
        expect(page.locator(f'tr[data-id="{pro_request_id}"]')).to_have_count(1)
        assert "model=zowy-1-pro" in page.url
        filters = page.get_by_role("form", name="Filter the usage log")
        filters.get_by_label("Model").select_option("")
        filters.get_by_label("Outcome").select_option("upstream_error")
        filters.get_by_role("button", name="Apply filters").click()
        expect(page.locator("tbody tr").first).to_contain_text("upstream_error 502")
        expect(page.locator(f'tr[data-id="{pro_request_id}"]')).to_have_count(0)
        nav(page, "Usage log")
        expect(page.locator(f'tr[data-id="{request_id}"]')).to_have_count(1)
        with page.expect_download() as download:
            page.get_by_role("link", name="Download CSV").click()
        csv = open(download.value.path(), encoding="utf-8").read()
        assert csv.startswith("request_id,created_at,key_id,model") and request_id in csv and pro_request_id in csv

        # ... and in the dashboard's charts and their numbers
        nav(page, "Dashboard")
        requests_chart = page.get_by_role("figure", name="Requests per day, by model")
        expect(requests_chart).to_have_attribute("data-total", str(seeded + 2))
        requests_chart.get_by_text("Show the numbers").click()
        today = time.strftime("%Y-%m-%d", time.gmtime())
        today_row = requests_chart.locator("tr", has_text=today)
        expect(today_row).to_have_count(1)
        expect(page.get_by_role("figure", name="Tokens per day, by model").locator("canvas")).to_have_count(1)
        expect(card(page, "Requests, 30 days")).to_have_text(str(seeded + 2))
        requests_chart.get_by_text("Show the numbers").click()
        shots.take(page, "dashboard")

        # per-key controls, then revocation: the key is refused from then on
        nav(page, "API keys")
        page.get_by_role("button", name="Edit controls of browser").click()
        editor = page.get_by_role("form", name="Controls of key browser")
        editor.get_by_label("Token cap").fill("500000")
        editor.get_by_role("button", name="Save controls").click()
        expect(page.locator("tr", has_text="browser")).to_contain_text("/ 500,000")
        page.locator("tr", has_text="browser").get_by_role("button", name="Revoke").click()
        page.get_by_role("button", name="Revoke browser").click()
        expect(page.locator("tr", has_text="browser").get_by_text("revoked")).to_be_visible()

        def refused():
            with sdk_client(gw, key) as client:
                try:
                    client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "still there?"}])
                except openai.AuthenticationError:
                    return True
            return False

        support.wait_until(refused, timeout=10, interval=0.2)

        # a code, redeemed in the console
        with http(gw) as h:
            code = h.post("/admin/v1/codes", json={"tokens": 250_000, "count": 1}, headers=ADMIN).json()["codes"][0]
        nav(page, "Redeem a code")
        redeem = page.get_by_role("form", name="Redeem a code")
        redeem.get_by_label("Code").fill(code.lower())
        redeem.get_by_role("button", name="Redeem").click()
        expect(page.get_by_role("heading", name="Code redeemed")).to_be_visible()
        expect(page.get_by_text("250,000 tokens")).to_be_visible()
        shots.take(page, "redeem")

        nothing_secret_kept(page, key)
        page.get_by_role("button", name="Sign out").click()
        expect(heading(page)).to_have_text("Sign in to the Zowy console")
        assert page.request.get(f"{gw.url}/api/v1/account").status == 401
        problems.check()
    finally:
        context.close()


def test_operator_console(console_gateway, chromium, shots):
    gw = console_gateway
    customer, email = new_account(gw, "globex", tokens=None)
    account_name = off_loop(support.run_store, gw, lambda s: s.account(customer.account_id)).name
    operator_context, operator, operator_problems = page_of(chromium)
    customer_context, owner, owner_problems = page_of(chromium)
    try:
        sign_in(owner, gw, email)
        expect(owner.get_by_text("Redeem a code or ask your operator for a package.")).to_be_visible()

        operator_sign_in(operator, gw)
        nothing_secret_kept(operator, "admin-secret-token")
        operator.get_by_label("Find an account").fill(account_name)
        expect(operator.locator("tbody tr")).to_have_count(1)
        shots.take(operator, "operator-accounts")

        # grant a package; the customer sees it
        operator.get_by_role("link", name=account_name).click()
        expect(heading(operator)).to_have_text(f"Account {account_name}")
        grant = operator.get_by_role("form", name=f"Grant a package to {account_name}")
        grant.get_by_label("Plan").select_option("business")
        grant.get_by_label("Valid for (days)").fill("10")
        grant.get_by_role("button", name="Grant package").click()
        expect(operator.locator("#status")).to_contain_text("Granted a business package of 10,000,000 tokens")
        expect(operator.locator("tr", has_text="business")).to_have_count(1)
        shots.take(operator, "operator-account")

        owner.get_by_role("button", name="Refresh").click()
        expect(card(owner, "Active package")).to_have_text("Business")
        expect(card(owner, "Tokens left")).to_have_text("10,000,000")

        # codes: made by the operator, one redeemed by the customer
        nav(operator, "Codes")
        codes_form = operator.get_by_role("form", name="Generate redemption codes")
        codes_form.get_by_label("How many codes").fill("2")
        codes_form.get_by_role("button", name="Generate codes").click()
        codes = operator.locator("textarea.secret-value").input_value().split("\n")
        assert len(codes) == 2 and all(c.startswith("ZOWY-") for c in codes)
        expect(operator.get_by_text("0 of 2 redeemed")).to_be_visible()
        nav(owner, "Redeem a code")
        owner.get_by_role("textbox", name="Code").fill(codes[0])
        owner.get_by_role("button", name="Redeem").click()
        expect(owner.get_by_role("heading", name="Code redeemed")).to_be_visible()
        batch = operator.get_by_text("Batch batch_").first.text_content().split()[1].rstrip(":")
        lookup = operator.get_by_role("form", name="Look up a batch")
        lookup.get_by_label("Batch ID").fill(batch)
        lookup.get_by_role("button", name="Look up").click()
        expect(operator.get_by_text("1 of 2 redeemed")).to_be_visible()
        shots.take(operator, "operator-codes")

        # the audit log names who did what
        nav(operator, "Audit log")
        audit = operator.get_by_role("form", name="Filter the audit log")
        audit.get_by_label("Account (name or ID)").fill(account_name)
        audit.get_by_role("button", name="Apply filters").click()
        # the filtered list replaces the whole log shown first: only this account's events remain
        expect(operator.locator("main tbody tr").filter(has_not_text=customer.account_id)).to_have_count(0)
        # the grant made here, by the admin (the customer's first package was granted by the system)
        expect(operator.locator("tr", has_text="package.grant").filter(has_text="admin")).to_have_count(1)
        expect(operator.locator("tr", has_text="code.redeem")).to_contain_text("owner:")
        shots.take(operator, "operator-audit")

        # live traffic while a key is busy
        with http(gw) as h:
            key = h.post(f"/admin/v1/accounts/{customer.account_id}/keys", json={"per_minute": 1000}, headers=ADMIN).json()["key"]
        nav(operator, "Live traffic")
        expect(heading(operator)).to_have_text("Live traffic")
        stop = threading.Event()

        def busy():
            with sdk_client(gw, key) as client:
                while not stop.is_set():
                    client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "busy"}], max_tokens=8)
                    stop.wait(0.1)

        worker = threading.Thread(target=busy)
        worker.start()
        try:
            support.wait_until(lambda: int(operator.get_by_role("figure", name="Requests per second").get_attribute("data-samples") or 0) >= 4,
                               timeout=20, interval=0.5)
        finally:
            stop.set()
            worker.join(30)
        breakers = operator.get_by_role("table", name="Upstream breakers (the worst state over this instance's workers)")
        expect(breakers.locator("tbody tr")).to_have_count(4)
        expect(breakers.get_by_text("closed")).to_have_count(4)
        assert int(card(operator, "Requests since start").text_content().replace(",", "")) >= 4
        shots.take(operator, "operator-traffic")

        operator.get_by_role("button", name="Sign out operator").click()
        expect(heading(operator)).to_have_text("Sign in to the Zowy console")
        assert operator.request.get(f"{gw.url}/admin/v1/accounts").status == 401
        operator_problems.check()
        owner_problems.check()
    finally:
        operator_context.close()
        customer_context.close()


# What a customer reads: every figure honest, nothing cut at 1280 px, charts on axes that fit their data.

CHART = """(figure) => {
  const u = figure.querySelector(".plot > div").uplot;
  const drawn = u.series.map((s, i) => ({ label: s.label, scale: s.scale, show: s.show, values: u.data[i] })).slice(1);
  return {
    x: [u.scales.x.min, u.scales.x.max],
    width: u.bbox.width / devicePixelRatio,
    yAxes: u.axes.filter((a) => a.scale !== "x" && a.show !== false).map((a) => ({ scale: a.scale, labels: a._values || [] })),
    xLabels: (u.axes[0]._values || []).map(String),
    scales: Object.fromEntries(Object.entries(u.scales).map(([k, s]) => [k, [s.min, s.max]])),
    series: drawn.map((s) => ({ ...s, max: Math.max(0, ...s.values.filter((v) => v !== null && v !== undefined)) })),
  };
}"""

# Where the left and right edges of every cell of a table column fall, and whether its scroller is cut.
COLUMN = """([wrap, label]) => {
  const el = document.querySelector(wrap);
  const heads = [...el.querySelectorAll("thead th")].map((th) => th.textContent);
  const at = heads.indexOf(label);
  const cells = [...el.querySelectorAll("tbody tr")].map((tr) => tr.children[at]).filter(Boolean);
  const box = el.getBoundingClientRect();
  return {
    found: at,
    viewport: document.documentElement.clientWidth,
    wrap: [box.left, box.right],
    overflow: el.scrollWidth - el.clientWidth,
    cells: cells.map((c) => { const r = c.getBoundingClientRect(); return [r.left, r.right, c.textContent]; }),
  };
}"""


def chart(page, name: str) -> dict:
    figure = page.get_by_role("figure", name=name)
    expect(figure.locator("canvas")).to_have_count(1)
    return figure.evaluate(CHART)


def fits(page, wrap: str, label: str) -> dict:
    """The column's cells lie wholly inside the viewport and inside their table's scroller, which scrolls nothing."""
    seen = page.evaluate(COLUMN, [wrap, label])
    assert seen["found"] >= 0, f"no column {label!r}"
    assert seen["overflow"] <= 0, f"the table is {seen['overflow']} px wider than its box: {label!r} is cut"
    right = min(seen["viewport"], seen["wrap"][1])
    for left, cell_right, text in seen["cells"]:
        assert left >= seen["wrap"][0] and cell_right <= right + 0.5, f"{label} cell {text!r} at {left}..{cell_right}, visible up to {right}"
    return seen


def snap(page, directory, name: str) -> None:
    """A full-page picture of what the test saw, kept with the test run's files."""
    page.wait_for_timeout(250)
    page.screenshot(path=str(directory / f"{name}.png"), full_page=True, animations="disabled")


def balance(page) -> dict:
    """The account's figures as /api/v1/usage reports them, read with the page's own session."""
    response = page.request.get(page.url.split("/console")[0] + "/api/v1/usage")
    assert response.status == 200
    return response.json()


def test_dashboard_after_the_first_requests(console_gateway, chromium, tmp_path):
    """Right after a new customer's first requests: what is left is what the packages hold (a worker's
    idle slice is not the customer's concern), the error rate reads zero, and today's bars are not squeezed."""
    gw = console_gateway
    customer, email = new_account(gw, "initech", tokens=2_000_000)
    context, page, problems = page_of(chromium)
    try:
        sign_in(page, gw, email)
        nav(page, "API keys")
        create = page.get_by_role("form", name="Create a key")
        create.get_by_label("Name").fill("first")
        create.get_by_role("button", name="Create key").click()
        made = page.get_by_role("region", name="New key first")
        key = made.get_by_role("textbox").input_value()
        # the base URL to give the SDK, in full: this page's origin
        expect(made).to_contain_text(f"{gw.url}/api/v1")

        with sdk_client(gw, key) as client:
            for i in range(3):
                client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": f"hello {i}"}], max_tokens=16)
        support.wait_until(lambda: balance(page)["usage"]["total"]["requests"] == 3, timeout=15, interval=0.2)
        before = balance(page)
        # a worker still holds the unused rest of its slice: reserved, though nothing is in flight
        assert before["reserved_tokens"] > 0 and before["available_tokens"] < before["remaining_tokens"]

        nav(page, "Dashboard")
        expect(card(page, "Requests, 30 days")).to_have_text("3")
        snap(page, tmp_path, "dashboard-first-requests")
        shown = [text.strip() for text in page.locator(".card-value").all_text_contents()]
        after = balance(page)
        assert after["reserved_tokens"] > 0, "the idle slice was given back before the dashboard was read"
        assert f"{after['remaining_tokens']:,}" in shown, shown
        assert f"{after['available_tokens']:,}" not in shown, shown
        expect(page.get_by_text("in flight")).to_have_count(0)
        expect(page.locator("main")).not_to_contain_text("reserved")

        # nothing failed: nothing rises in the error chart, read on one axis, in percent
        errors = chart(page, "Failed requests and error rate")
        assert len(errors["yAxes"]) == 1 and all(label.endswith("%") for label in errors["yAxes"][0]["labels"]), errors["yAxes"]
        assert errors["series"] and all(s["max"] == 0 for s in errors["series"] if s["show"]), errors["series"]
        assert errors["scales"][errors["yAxes"][0]["scale"]][1] <= 100

        # today's only bar: wide enough to see, on an axis that names today
        today = time.gmtime()
        today_start = time.time() // DAY * DAY
        for name in ("Requests per day, by model", "Tokens per day, by model"):
            seen = chart(page, name)
            assert seen["x"][1] >= today_start + DAY / 2
            slot = seen["width"] * DAY / (seen["x"][1] - seen["x"][0])
            assert min(0.7 * slot, 48) >= 24, f"{name}: today's bar is {0.7 * slot:.0f} px wide"
            assert any(label.split("\n")[0] == f"{today.tm_mon}/{today.tm_mday}" for label in seen["xLabels"]), seen["xLabels"]
        problems.check()
    finally:
        context.close()


def test_redeem_reads_like_the_dashboard(console_gateway, chromium, tmp_path):
    """A code's package is named as a package, the balance after it exactly as the dashboard shows it,
    and a later error is not shown beside the earlier success."""
    gw = console_gateway
    customer, email = new_account(gw, "umbrella", tokens=2_000_000)
    with sdk_client(gw, customer.key) as client:
        client.chat.completions.create(model="zowy-1", messages=[{"role": "user", "content": "hello"}], max_tokens=16)
    with http(gw) as h:
        code = h.post("/admin/v1/codes", json={"tokens": 250_000, "count": 1}, headers=ADMIN).json()["codes"][0]
    context, page, problems = page_of(chromium, ("status of 409",))
    try:
        sign_in(page, gw, email)
        support.wait_until(lambda: balance(page)["usage"]["total"]["requests"] == 1, timeout=15, interval=0.2)
        nav(page, "Redeem a code")
        redeem = page.get_by_role("form", name="Redeem a code")
        redeem.get_by_label("Code").fill(code)
        redeem.get_by_role("button", name="Redeem").click()
        done = page.locator(".success")
        expect(done.get_by_role("heading", name="Code redeemed")).to_be_visible()
        expect(page.locator("#status")).to_have_text("Code redeemed.")
        text = done.text_content()
        assert "tokens package" not in text.lower() and "250,000 tokens" in text, text
        left = balance(page)["remaining_tokens"]
        assert f"{left:,} tokens" in text, text

        # the same code again: the error alone, no success left beside it
        redeem.get_by_label("Code").fill(code)
        redeem.get_by_role("button", name="Redeem").click()
        expect(redeem.get_by_role("alert")).to_contain_text("already been redeemed")
        snap(page, tmp_path, "redeem-again")
        expect(page.locator("#status")).not_to_have_class(re.compile(r"\bshown\b"))
        expect(page.locator("#status")).to_have_text("")
        expect(page.get_by_role("heading", name="Code redeemed")).to_have_count(0)

        nav(page, "Dashboard")
        expect(card(page, "Tokens left")).to_have_text(f"{left:,}")
        row = page.locator("tr", has_text="250,000")
        expect(row).to_have_count(1)
        assert "tokens" not in row.locator("td").first.text_content().lower()
        problems.check()
    finally:
        context.close()


def seed_outcomes(gateway, customer: support.Customer) -> list[str]:
    """Today's requests with every outcome a customer can meet, the widest first."""
    now = time.time()
    outcomes = [("client_disconnected", 499), ("upstream_timeout", 504), ("cut_by_gateway", 502), ("server_error", 500),
                ("upstream_error", 502), ("ok", 200)]
    entries = [LedgerEntry(
        request_id=f"{(i + 1) * 0x5a5a5a5a5a5a5a5a5a5a5a5a:024x}"[-24:], account_id=customer.account_id, key_id=customer.key_id,
        model="zowy-1-pro", target="", prompt_tokens=123_456, completion_tokens=65_432, total_tokens=188_888, estimated=i % 2 == 0,
        stream=True, outcome=outcome, status=status, latency_ms=123_456.7, user=None, created_at=now - 60 * i,
    ) for i, (outcome, status) in enumerate(outcomes)]
    off_loop(support.run_store, gateway, lambda store: store.record(entries))
    return [e.request_id for e in entries]


def test_usage_log_fits_1280(console_gateway, chromium, tmp_path):
    gw = console_gateway
    customer, email = new_account(gw, "hooli", tokens=2_000_000, key_name="production-eu-west-batch")
    ids = seed_outcomes(gw, customer)
    context, page, problems = page_of(chromium)
    try:
        assert page.viewport_size["width"] == 1280
        sign_in(page, gw, email)
        nav(page, "Usage log")
        expect(page.locator("tbody tr")).to_have_count(len(ids))
        snap(page, tmp_path, "usage-log-outcomes")
        expect(page.locator("tbody tr", has_text="production-eu-west-batch")).to_have_count(len(ids))
        seen = fits(page, "main .table-wrap", "Request ID")
        assert sorted(text for _, _, text in seen["cells"]) == sorted(ids)
        expect(page.get_by_role("button", name="Load more")).to_be_hidden()  # one page holds them all
        problems.check()
    finally:
        context.close()


def test_audit_log_reads_as_text(console_gateway, chromium, tmp_path):
    gw = console_gateway
    customer, email = new_account(gw, "soylent", tokens=None)
    with http(gw) as h:
        assert h.post(f"/admin/v1/accounts/{customer.account_id}/packages", json={"plan": "business", "days": 10}, headers=ADMIN).status_code in (200, 201)
        assert h.patch(f"/admin/v1/keys/{customer.key_id}", json={"name": "nightly", "token_cap": 750_000}, headers=ADMIN).status_code == 200
    context, page, problems = page_of(chromium)
    try:
        operator_sign_in(page, gw)
        page.goto(f"{gw.url}/console#/ops/audit?account={customer.account_id}")
        expect(heading(page)).to_have_text("Audit log")
        grant = page.locator("tr", has_text="package.grant").filter(has_text="admin")
        expect(grant).to_have_count(1)
        snap(page, tmp_path, "audit-log")
        expect(grant).to_contain_text("10,000,000")
        controls = page.locator("tr", has_text="key.controls")
        expect(controls).to_contain_text("750,000")
        expect(controls).to_contain_text("nightly")
        assert "{" not in page.locator("main table").text_content()
        for label in [t.strip() for t in page.locator("main thead th").all_text_contents()]:
            fits(page, "main .table-wrap", label)
        problems.check()
    finally:
        context.close()


def test_live_traffic_starts_on_a_minutes_axis(console_gateway, chromium, tmp_path):
    gw = console_gateway
    context, page, problems = page_of(chromium)
    try:
        operator_sign_in(page, gw)
        nav(page, "Live traffic")
        for samples in (0, 1, 2):
            figure = page.get_by_role("figure", name="Requests per second")
            support.wait_until(lambda: int(figure.get_attribute("data-samples") or 0) >= samples, timeout=15, interval=0.1)
            if samples == 1:
                snap(page, tmp_path, "traffic-first-sample")
            for name in ("Requests per second", "Tokens per second", "Errors per second, by status"):
                seen = chart(page, name)
                assert seen["x"][0] is not None and seen["x"][1] - seen["x"][0] <= 600, f"{name} after {samples} samples: {seen['x']}"
        problems.check()
    finally:
        context.close()
