// Operator: the audit log of changes to money and access, newest first, filtered and paged.

import { dayStart, h, int, section, table, time } from "../dom.js";
import { form } from "../forms.js";

// A recorded value as text: times as UTC times, counts with separators, lists and objects spelled out.
function text(name, value) {
  if (value === null || value === undefined || value === "") return "—";
  if (Array.isArray(value)) return value.length ? value.map((v) => text("", v)).join(", ") : "—";
  if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}: ${text(k, v)}`).join("; ");
  if (typeof value === "number") return name.endsWith("_at") ? time(value) : Number.isInteger(value) ? int(value) : String(+value.toFixed(3));
  if (typeof value === "boolean") return value ? "yes" : "no";
  return String(value);
}

// What an event changed, one field a line: "field: before → after" where both were recorded, else
// the value recorded. The row's own account and target are not repeated.
function change(e) {
  const before = e.before ?? null;
  const after = e.after ?? null;
  const object = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (!object(before) && !object(after)) {
    if (before === null && after === null) return "—";
    return before === null ? text("", after) : `${text("", before)} → ${text("", after)}`;
  }
  const names = [...new Set([...Object.keys(object(before) ? before : {}), ...Object.keys(object(after) ? after : {})])]
    .filter((k) => !(k === "id" && (after || before)[k] === e.target) && !(k === "account_id" && (after || before)[k] === e.account_id));
  const line = (k) => {
    const was = object(before) && k in before ? before[k] : undefined;
    const now = object(after) && k in after ? after[k] : undefined;
    if (was !== undefined && now !== undefined) return `${text(k, was)} → ${text(k, now)}`;
    return now !== undefined ? text(k, now) : `was ${text(k, was)}`;
  };
  return h("ul", { class: "fields" }, names.map((k) => h("li", null, h("span", { class: "field-name" }, `${k}: `), line(k))));
}

export async function render(main, ctx) {
  const { api, query } = ctx;
  const filters = {
    account: query.account, action: query.action,
    since: query.since ? dayStart(query.since) : null, until: query.until ? dayStart(query.until) + 86400 : null,
  };
  const first = await api.get(`/admin/v1/audit${api.query({ ...filters, limit: 50 })}`);
  if (!ctx.current()) return;
  const columns = [
    { label: "Time (UTC)", value: (e) => time(e.at) },
    { label: "Actor", value: (e) => e.actor },
    { label: "Address", class: "mono", value: (e) => e.ip || "—" },
    { label: "Action", value: (e) => e.action },
    { label: "Account", class: "mono", value: (e) => (e.account_id ? h("a", { href: `#/ops/account/${encodeURIComponent(e.account_id)}` }, e.account_id) : "—") },
    { label: "Target", class: "mono", value: (e) => e.target || "—" },
    { label: "Change", class: "wrap", value: change },
  ];
  const rows = [...first.data];
  let cursor = first.next_cursor;
  const holder = h("div", null, table("Audit events, newest first", columns, rows, { empty: "No events match." }));
  const more = h("button", { type: "button", hidden: !cursor }, "Load more");
  more.addEventListener("click", async () => {
    more.disabled = true;
    try {
      const next = await api.get(`/admin/v1/audit${api.query({ ...filters, limit: 50, cursor })}`);
      rows.push(...next.data);
      cursor = next.next_cursor;
      holder.replaceChildren(table("Audit events, newest first", columns, rows, { empty: "No events match." }));
      more.hidden = !cursor;
    } finally {
      more.disabled = false;
    }
  });
  const filterForm = form({
    label: "Filter the audit log",
    submit: "Apply filters",
    inline: true,
    fields: [
      { name: "account", label: "Account (name or ID)", value: query.account },
      { name: "action", label: "Action", value: query.action, placeholder: "e.g. package.grant" },
      { name: "since", label: "From (UTC date)", type: "date", value: query.since },
      { name: "until", label: "To (UTC date)", type: "date", value: query.until },
    ],
    onSubmit: async (values) => ctx.navigate("ops/audit", values),
  });
  main.append(h("h1", null, "Audit log"), section("Filters", filterForm.el),
    section("Events", holder, h("div", { class: "actions" }, more)));
}
