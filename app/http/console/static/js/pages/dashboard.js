// The customer's dashboard: what is left, the active package, and requests, tokens and errors per day
// and per model over the last 30 days.

import { lastDays, requestsAndErrors, stackedDays } from "../charts.js";
import { badge, card, date, h, int, percent, planName, section, table } from "../dom.js";

export function perDay(days, cells, models, field) {
  const index = new Map(days.map((d, i) => [d, i]));
  return models.map((model) => {
    const values = days.map(() => 0);
    for (const c of cells) {
      if (c.model === model && index.has(c.day)) values[index.get(c.day)] += c[field];
    }
    return { label: model, values };
  });
}

export function packagesTable(packages) {
  return table("Packages, newest last", [
    { label: "Plan", value: (p) => planName(p.plan) },
    { label: "Tokens", numeric: true, value: (p) => int(p.tokens) },
    { label: "Used", numeric: true, value: (p) => int(p.used) },
    { label: "Left", numeric: true, value: (p) => int(p.remaining) },
    { label: "Granted", value: (p) => date(p.granted_at) },
    { label: "Expires", value: (p) => date(p.expires_at) },
    { label: "Status", value: (p) => (p.active ? badge("active", "ok") : badge(p.remaining ? "expired" : "used up", "neutral")) },
  ], packages, { empty: "No packages yet." });
}

// What is left is what the active packages hold once the ledger debited every finished request. The
// tokens workers have leased from the balance (for requests in flight, and the unused rest of a slice
// until it goes back) are not the customer's to manage: operators see them.
export function balanceCards(balance, usage, { operator = false } = {}) {
  const active = balance.active_package;
  const total = usage.total;
  const count = balance.packages.filter((p) => p.active).length;
  return h("div", { class: "cards" },
    card("Tokens left", int(balance.remaining_tokens),
      count ? `in ${count} active package${count === 1 ? "" : "s"}` : "no active package"),
    h("div", { class: "card" },
      h("p", { class: "card-label" }, "Active package"),
      h("p", { class: "card-value" }, active ? planName(active.plan) : "None"),
      active
        ? [h("progress", { max: active.tokens, value: active.remaining, "aria-label": "Tokens left in the active package" }),
          h("p", { class: "card-detail" }, `${int(active.remaining)} of ${int(active.tokens)} tokens left · expires ${date(active.expires_at)}`)]
        : h("p", { class: "card-detail" }, "Redeem a code or ask your operator for a package.")),
    operator ? card("Leased by workers", int(balance.reserved_tokens),
      "for requests in flight, and unused slices until they go back") : null,
    card("Requests, 30 days", int(total.requests), `${int(total.total_tokens)} tokens`),
    card("Error rate, 30 days", percent(total.errors, total.requests), `${int(total.errors)} failed`));
}

// The days the charts show: from the first day with requests in the last 30 (a week at least) to today.
export function chartDays(usage) {
  const days = lastDays(30);
  const busy = new Set(usage.by_day.filter((r) => r.requests).map((r) => r.day));
  const first = days.findIndex((d) => busy.has(d));
  return days.slice(Math.min(first < 0 ? 0 : first, days.length - 7));
}

export function usageCharts(usage) {
  const days = chartDays(usage);
  const models = usage.by_model.map((m) => m.model);
  const cells = usage.by_day_model;
  const requests = days.map((d) => (usage.by_day.find((r) => r.day === d) || { requests: 0 }).requests);
  const errors = days.map((d) => (usage.by_day.find((r) => r.day === d) || { errors: 0 }).errors);
  return h("div", { class: "charts" },
    stackedDays("Tokens per day, by model", days, perDay(days, cells, models, "total_tokens"), "tokens"),
    stackedDays("Requests per day, by model", days, perDay(days, cells, models, "requests"), "requests"),
    requestsAndErrors("Failed requests and error rate", days, requests, errors));
}

export function byModelTable(usage) {
  return table("Usage by model, last 30 days", [
    { label: "Model", value: (m) => m.model },
    { label: "Requests", numeric: true, value: (m) => int(m.requests) },
    { label: "Prompt tokens", numeric: true, value: (m) => int(m.prompt_tokens) },
    { label: "Completion tokens", numeric: true, value: (m) => int(m.completion_tokens) },
    { label: "Total tokens", numeric: true, value: (m) => int(m.total_tokens) },
    { label: "Failed", numeric: true, value: (m) => int(m.errors) },
    { label: "Error rate", numeric: true, value: (m) => percent(m.errors, m.requests) },
  ], usage.by_model, { empty: "No requests in the last 30 days." });
}

export async function render(main, ctx) {
  const body = await ctx.api.get("/api/v1/usage");
  if (!ctx.current()) return;
  main.append(
    h("div", { class: "page-head" },
      h("h1", null, `Dashboard — ${body.account.name}`),
      h("button", { type: "button", on: { click: () => ctx.navigate("dashboard") } }, "Refresh")),
    balanceCards(body, body.usage),
    section("Requests and tokens", usageCharts(body.usage)),
    section("By model", byModelTable(body.usage)),
    section("Packages", packagesTable(body.packages)));
}
