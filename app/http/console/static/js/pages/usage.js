// The usage log: one row per request, newest first, filtered by model, API, key, outcome and dates, paged,
// and exported as CSV with the same filters.

import { badge, dayStart, h, int, ms, section, table, time } from "../dom.js";
import { form } from "../forms.js";

const APIS = [
  { value: "chat", label: "Chat" },
  { value: "responses", label: "Responses" },
  { value: "messages", label: "Messages" },
];
const API_LABELS = new Map(APIS.map((a) => [a.value, a.label]));
const OUTCOMES = ["ok", "upstream_error", "upstream_timeout", "client_disconnected", "cut_by_gateway", "server_error"];

function filters(query) {
  const until = query.until ? dayStart(query.until) + 86400 : null; // the until day is included
  return {
    model: query.model, api: query.api, key: query.key, outcome: query.outcome,
    since: query.since ? dayStart(query.since) : null, until,
  };
}

export function outcome(entry) {
  const kind = entry.outcome === "ok" ? "ok" : entry.outcome === "client_disconnected" ? "neutral" : "bad";
  return badge(entry.outcome === "ok" ? `ok ${entry.status}` : `${entry.outcome} ${entry.status}`, kind);
}

export async function render(main, ctx) {
  const { api, state, query } = ctx;
  const [keys, first] = await Promise.all([
    api.get("/api/v1/keys"),
    api.get(`/api/v1/ledger${api.query({ ...filters(query), limit: 50 })}`),
  ]);
  if (!ctx.current()) return;
  const keyNames = new Map(keys.data.map((k) => [k.id, k.name ? `${k.name} (${k.prefix.slice(0, 6)}…)` : `${k.prefix}…`]));
  // In the table a key's name sits above its prefix, and a long name wraps: the request ID stays in view.
  const byId = new Map(keys.data.map((k) => [k.id, k]));
  const keyCell = (id) => {
    const k = byId.get(id);
    if (!k) return id;
    return k.name ? [k.name, h("span", { class: "mono muted key-prefix" }, `${k.prefix.slice(0, 6)}…`)] : h("span", { class: "mono" }, `${k.prefix}…`);
  };
  const columns = [
    { label: "Time (UTC)", value: (e) => time(e.created_at) },
    { label: "Key", class: "key", value: (e) => keyCell(e.key_id) },
    { label: "Model", value: (e) => e.model },
    { label: "API", value: (e) => API_LABELS.get(e.api) || e.api },
    { label: "Prompt", numeric: true, value: (e) => int(e.prompt_tokens) },
    { label: "Completion", numeric: true, value: (e) => int(e.completion_tokens) },
    { label: "Total tokens", numeric: true, value: (e) => (e.estimated ? `≈${int(e.total_tokens)}` : int(e.total_tokens)) },
    { label: "Latency", numeric: true, value: (e) => ms(e.latency_ms) },
    { label: "Outcome", value: outcome },
    { label: "Request ID", class: "mono", value: (e) => e.request_id },
  ];

  const filterForm = form({
    label: "Filter the usage log",
    submit: "Apply filters",
    inline: true,
    fields: [
      { name: "model", label: "Model", type: "select", value: query.model || "", options: [{ value: "", label: "Any model" }, ...state.config.models.map((m) => ({ value: m, label: m }))] },
      { name: "api", label: "API", type: "select", value: query.api || "", options: [{ value: "", label: "Any API" }, ...APIS] },
      { name: "key", label: "Key", type: "select", value: query.key || "", options: [{ value: "", label: "Any key" }, ...keys.data.map((k) => ({ value: k.id, label: keyNames.get(k.id) }))] },
      { name: "outcome", label: "Outcome", type: "select", value: query.outcome || "", options: [{ value: "", label: "Any outcome" }, ...OUTCOMES.map((o) => ({ value: o, label: o }))] },
      { name: "since", label: "From (UTC date)", type: "date", value: query.since },
      { name: "until", label: "To (UTC date)", type: "date", value: query.until },
    ],
    onSubmit: async (values) => {
      ctx.navigate("usage", values);
    },
  });

  const rows = [...first.data];
  let cursor = first.next_cursor;
  const holder = h("div", null, table("Requests, newest first", columns, rows, { empty: "No requests match.", rowId: (e) => e.request_id }));
  const more = h("button", { type: "button", hidden: !cursor }, "Load more");
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const next = await api.get(`/api/v1/ledger${api.query({ ...filters(query), limit: 50, cursor })}`);
      rows.push(...next.data);
      cursor = next.next_cursor;
      holder.replaceChildren(table("Requests, newest first", columns, rows, { empty: "No requests match.", rowId: (e) => e.request_id }));
      more.hidden = !cursor;
    } finally {
      more.disabled = false;
    }
  });
  const { model, api: apiName, key, outcome: oc, since, until } = filters(query);
  const csv = `/api/v1/ledger.csv${api.query({ model, api: apiName, key, outcome: oc, since, until })}`;
  main.append(
    h("div", { class: "page-head" },
      h("h1", null, "Usage log"),
      h("div", { class: "head-actions" },
        h("button", { type: "button", on: { click: () => ctx.navigate("usage", query) } }, "Refresh"),
        h("a", { class: "button", href: csv, download: "zowy-usage.csv" }, "Download CSV"))),
    section("Filters", filterForm.el),
    section("Requests", holder, h("div", { class: "actions" }, more)));
}
