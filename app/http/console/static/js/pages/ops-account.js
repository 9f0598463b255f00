// Operator: one account — its balance and usage, packages (grant one), keys (create, revoke), owners
// (invite one).

import { date, h, int, section, table } from "../dom.js";
import { confirmButton, form, secret } from "../forms.js";
import { balanceCards, byModelTable, packagesTable, usageCharts } from "./dashboard.js";
import { keyStatus } from "./keys.js";

export async function render(main, ctx) {
  const { api, state } = ctx;
  const id = ctx.params[0];
  if (!id) {
    ctx.navigate("ops/accounts");
    return;
  }
  const base = `/admin/v1/accounts/${encodeURIComponent(id)}`;
  const [balance, usage, keys, owners] = await Promise.all([
    api.get(base), api.get(`${base}/usage`), api.get(`${base}/keys`), api.get(`${base}/owners`),
  ]);
  if (!ctx.current()) return;
  const name = balance.account.name;
  const reload = () => ctx.navigate(`ops/account/${encodeURIComponent(id)}`);
  const shown = h("div");

  const plans = Object.entries(state.config.plans);
  const grant = form({
    label: `Grant a package to ${name}`,
    submit: "Grant package",
    fields: [
      { name: "plan", label: "Plan", type: "select", value: plans[0][0], options: plans.map(([p, n]) => ({ value: p, label: `${p} — ${int(n)} tokens` })) },
      { name: "tokens", label: "Tokens", type: "number", min: 1, inputmode: "numeric", hint: "Empty: the plan's tokens." },
      { name: "days", label: "Valid for (days)", type: "number", min: 1, inputmode: "numeric", hint: "Empty: the default validity." },
    ],
    onSubmit: async (values) => {
      const p = await api.post(`${base}/packages`, values);
      ctx.notify(`Granted a ${p.plan} package of ${int(p.tokens)} tokens to ${name}.`);
      reload();
    },
  });

  const keyRows = keys.data.map((k) => ({ ...k }));
  const keyTable = table(`Keys of ${name}`, [
    { label: "Name", value: (k) => k.name || "—" },
    { label: "Key", class: "mono", value: (k) => `${k.prefix}…` },
    { label: "Status", value: keyStatus },
    { label: "Limits (min / hour)", value: (k) => `${k.per_minute || "default"} / ${k.per_hour || "default"}` },
    { label: "Token cap", numeric: true, value: (k) => (k.token_cap ? int(k.token_cap) : "none") },
    { label: "Created", value: (k) => date(k.created_at) },
    { label: "Actions", value: (k) => (k.status === "revoked" ? "—" : confirmButton("Revoke", `Revoke ${k.name || k.prefix}`, async () => {
      await api.post(`/admin/v1/keys/${encodeURIComponent(k.id)}/revoke`);
      ctx.notify(`Revoked ${k.name || k.prefix}.`);
      reload();
    })) },
  ], keyRows, { empty: "No keys.", rowId: (k) => k.id });
  const newKey = form({
    label: `Create a key for ${name}`,
    submit: "Create key",
    inline: true,
    fields: [
      { name: "name", label: "Key name" },
      { name: "per_minute", label: "Requests per minute", type: "number", min: 1, inputmode: "numeric" },
      { name: "per_hour", label: "Requests per hour", type: "number", min: 1, inputmode: "numeric" },
    ],
    onSubmit: async (values, el) => {
      const made = await api.post(`${base}/keys`, values);
      el.reset();
      shown.replaceChildren(secret(`New key for ${name}`, made.key,
        `Shown only this once: hand it to the customer over a safe channel, with the base URL ${api.baseUrl()}.`));
      shown.querySelector(".secret-value").focus();
    },
  });

  const invite = form({
    label: `Invite an owner of ${name}`,
    submit: "Create invite",
    inline: true,
    fields: [{ name: "email", label: "Owner's email", type: "email", required: true }],
    onSubmit: async (values, el) => {
      const made = await api.post(`${base}/invites`, { email: values.email });
      el.reset();
      shown.replaceChildren(secret(`Invite for ${made.email}`, made.token,
        `Shown only this once. The owner accepts it on the console's sign-in page before ${date(made.expires_at)}.`));
      shown.querySelector(".secret-value").focus();
    },
  });

  main.append(
    h("div", { class: "page-head" },
      h("h1", null, `Account ${name}`),
      h("div", { class: "head-actions" },
        h("a", { class: "button", href: `#/ops/audit?account=${encodeURIComponent(id)}` }, "Audit log"),
        h("button", { type: "button", on: { click: reload } }, "Refresh"))),
    h("p", { class: "mono muted" }, id),
    balanceCards(balance, usage, { operator: true }),
    shown,
    section("Grant a package", grant.el),
    section("Packages", packagesTable(balance.packages)),
    section("Usage, last 30 days", usageCharts(usage), byModelTable(usage)),
    section("Keys", keyTable, newKey.el),
    section("Owners",
      table(`Owners of ${name}`, [
        { label: "Email", value: (o) => o.email },
        { label: "Since", value: (o) => date(o.created_at) },
      ], owners.data, { empty: "No owners yet: invite one." }),
      invite.el));
}
