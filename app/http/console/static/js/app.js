// The console's shell: who is signed in, the navigation, and a router over "#/page" addresses.

import * as api from "./api.js";
import { disposeCharts } from "./charts.js";
import { clear, h } from "./dom.js";
import { notify } from "./status.js";
import * as signin from "./pages/signin.js";
import * as dashboard from "./pages/dashboard.js";
import * as keys from "./pages/keys.js";
import * as usage from "./pages/usage.js";
import * as redeem from "./pages/redeem.js";
import * as opsAccounts from "./pages/ops-accounts.js";
import * as opsAccount from "./pages/ops-account.js";
import * as opsCodes from "./pages/ops-codes.js";
import * as opsAudit from "./pages/ops-audit.js";
import * as opsTraffic from "./pages/ops-traffic.js";

const state = { config: null, customer: null, operator: null };

const PAGES = [
  { path: "dashboard", title: "Dashboard", module: dashboard, who: "customer" },
  { path: "keys", title: "API keys", module: keys, who: "customer" },
  { path: "usage", title: "Usage log", module: usage, who: "customer" },
  { path: "redeem", title: "Redeem a code", module: redeem, who: "customer" },
  { path: "ops/accounts", title: "Accounts", module: opsAccounts, who: "operator" },
  { path: "ops/account", title: "Account", module: opsAccount, who: "operator", hidden: true },
  { path: "ops/codes", title: "Codes", module: opsCodes, who: "operator" },
  { path: "ops/audit", title: "Audit log", module: opsAudit, who: "operator" },
  { path: "ops/traffic", title: "Live traffic", module: opsTraffic, who: "operator" },
  { path: "signin", title: "Sign in", module: signin, who: null, hidden: true },
];

let leaving = [];
let rendering = 0;

function parse(hash) {
  const text = hash.replace(/^#\/?/, "");
  const [path, search = ""] = text.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const query = Object.fromEntries(new URLSearchParams(search));
  for (const page of PAGES) {
    const own = page.path.split("/");
    if (own.every((p, i) => parts[i] === p)) return { page, params: parts.slice(own.length), query };
  }
  return { page: null, params: [], query };
}

export function navigate(path, query) {
  const next = `#/${path}${query ? api.query(query) : ""}`;
  if (window.location.hash === next) render();
  else window.location.hash = next;
}

function home() {
  if (state.customer) return "dashboard";
  if (state.operator) return "ops/accounts";
  return "signin";
}

function navLink(page, current) {
  return h("li", null, h("a", { href: `#/${page.path}`, "aria-current": page === current ? "page" : null }, page.title));
}

function drawShell(current) {
  const nav = clear(document.getElementById("nav"));
  const groups = [["customer", "Account", state.customer], ["operator", "Operator", state.operator]];
  for (const [who, label, on] of groups) {
    if (!on) continue;
    nav.append(h("div", { class: "nav-group" }, h("span", { class: "nav-label" }, label),
      h("ul", null, PAGES.filter((p) => p.who === who && !p.hidden).map((p) => navLink(p, current)))));
  }
  const who = clear(document.getElementById("who"));
  if (state.customer) {
    who.append(h("span", { class: "who-name" }, state.customer.email || state.customer.account.name),
      h("button", { type: "button", class: "link", on: { click: signOutCustomer } }, "Sign out"));
  }
  if (state.operator) {
    who.append(h("span", { class: "who-name" }, "Operator"),
      h("button", { type: "button", class: "link", on: { click: signOutOperator } }, "Sign out operator"));
  }
  if (current && current.path !== "signin") {
    if (!state.customer) who.append(h("a", { href: "#/signin", class: "link" }, "Account sign-in"));
    else if (!state.operator && state.config.operators) who.append(h("a", { href: "#/signin", class: "link" }, "Operator sign-in"));
  }
}

async function signOutCustomer() {
  try {
    await api.del("/api/v1/auth/sessions/current");
  } catch {
    // the session had already ended
  }
  state.customer = null;
  notify("Signed out.");
  navigate(home());
}

async function signOutOperator() {
  try {
    await api.del("/console/api/operator/session");
  } catch {
    // the session had already ended
  }
  state.operator = null;
  notify("Operator signed out.");
  navigate(home());
}

async function render() {
  const ticket = ++rendering;
  for (const done of leaving) done();
  leaving = [];
  disposeCharts();
  let { page, params, query } = parse(window.location.hash);
  if (!page || (page.who && !state[page.who])) {
    const target = page && page.who ? "signin" : home();
    if (window.location.hash !== `#/${target}`) {
      window.location.replace(`#/${target}`);
      return;
    }
    ({ page, params, query } = parse(`#/${target}`));
  }
  drawShell(page);
  const main = clear(document.getElementById("main"));
  main.setAttribute("aria-busy", "true");
  const ctx = {
    state, params, query, navigate, notify, api,
    onLeave: (fn) => leaving.push(fn),
    signedIn: async (who, value) => {
      state[who] = value;
      navigate(home());
    },
    current: () => ticket === rendering,
  };
  try {
    await page.module.render(main, ctx);
  } catch (err) {
    if (ticket !== rendering) return;
    if (err instanceof api.ApiError && err.status === 401) return; // the signed-out handler takes over
    main.append(h("p", { class: "form-error", role: "alert" }, `Could not load this page: ${err.message}`));
  } finally {
    if (ticket === rendering) main.removeAttribute("aria-busy");
  }
  if (ticket !== rendering) return;
  const heading = main.querySelector("h1");
  document.title = `${heading ? heading.textContent : page.title} · Zowy Console`;
  if (heading && render.moved) {
    heading.setAttribute("tabindex", "-1");
    heading.focus();
  }
  render.moved = true;
}

window.addEventListener("zowy:signed-out", (event) => {
  const who = event.detail.operator ? "operator" : "customer";
  if (!state[who]) return;
  state[who] = null;
  notify(who === "operator" ? "The operator session ended: sign in again." : "Your session ended: sign in again.");
  navigate(home());
});

async function probe() {
  state.config = await api.get("/console/api/config");
  const checks = [];
  if (api.cookie("zowy_csrf")) {
    checks.push(api.get("/api/v1/account").then((balance) => {
      state.customer = { account: balance.account, email: sessionStorage.getItem("zowy.email") };
    }, () => null));
  }
  if (state.config.operators && api.cookie("zowy_operator_csrf")) {
    checks.push(api.get("/console/api/operator/session").then((s) => {
      state.operator = s;
    }, () => null));
  }
  await Promise.all(checks);
}

document.getElementById("skip-link").addEventListener("click", (event) => {
  event.preventDefault();
  document.getElementById("main").focus();
});
window.addEventListener("hashchange", render);
probe().then(render, (err) => {
  clear(document.getElementById("main")).append(h("p", { class: "form-error", role: "alert" }, `The console could not start: ${err.message}`));
});
