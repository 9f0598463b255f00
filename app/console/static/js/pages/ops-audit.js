// Operator: the audit log of changes to money and access, newest first, filtered and paged.

import { dayStart, h, section, table, time } from "../dom.js";
import { form } from "../forms.js";

function change(value) {
  return value === null || value === undefined ? "—" : h("code", { class: "json" }, JSON.stringify(value));
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
    { label: "Before", class: "wrap", value: (e) => change(e.before) },
    { label: "After", class: "wrap", value: (e) => change(e.after) },
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
