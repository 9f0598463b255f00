// The account's API keys: create one (shown once), change its controls, revoke it.

import { badge, date, h, int, section, table } from "../dom.js";
import { confirmButton, form, secret } from "../forms.js";

export function keyStatus(k) {
  return badge(k.status, k.status === "active" ? "ok" : k.status === "revoked" ? "bad" : "neutral");
}

function list(value) {
  return value && value.length ? value.join(", ") : "any";
}

function splitList(text) {
  return text ? text.split(/[\s,]+/).filter(Boolean) : null;
}

// The expiry from a date input: the key works until the end of that UTC day.
function expiry(text) {
  return text ? `${text}T23:59:59Z` : null;
}

export function controlFields(models, k = {}) {
  return [
    { name: "name", label: "Name", value: k.name, hint: "For you to tell keys apart, e.g. “ci” or “mobile app”." },
    { name: "expires", label: "Expires after (UTC date)", type: "date", value: k.expires_at ? date(k.expires_at) : null, hint: "Empty: never." },
    { name: "models", label: "Models it may use", type: "checkboxes", options: models.map((m) => ({ value: m, label: m })), value: k.models || [], hint: "None checked: every model." },
    { name: "token_cap", label: "Token cap", type: "number", min: 1, value: k.token_cap, inputmode: "numeric", hint: "Most tokens this key may spend in all. Empty: no cap." },
    { name: "ips", label: "Allowed addresses", value: k.ips ? k.ips.join(", ") : null, hint: "IP addresses or CIDRs, comma-separated. Empty: any." },
    { name: "per_minute", label: "Requests per minute", type: "number", min: 1, value: k.per_minute, inputmode: "numeric", hint: "Empty: the gateway's default." },
    { name: "per_hour", label: "Requests per hour", type: "number", min: 1, value: k.per_hour, inputmode: "numeric", hint: "Empty: the gateway's default." },
  ];
}

export function controlsBody(values) {
  return {
    name: values.name,
    expires_at: expiry(values.expires),
    models: values.models.length ? values.models : null,
    token_cap: values.token_cap,
    ips: splitList(values.ips),
    per_minute: values.per_minute,
    per_hour: values.per_hour,
  };
}

export function keysTable(keys, actions) {
  return table("API keys", [
    { label: "Name", value: (k) => k.name || "—" },
    { label: "Key", class: "mono", value: (k) => `${k.prefix}…` },
    { label: "Status", value: keyStatus },
    { label: "Models", value: (k) => list(k.models) },
    { label: "Token cap", numeric: true, value: (k) => (k.token_cap ? `${int(k.used_tokens || 0)} / ${int(k.token_cap)}` : "none") },
    { label: "Addresses", value: (k) => list(k.ips) },
    { label: "Limits (min / hour)", value: (k) => `${k.per_minute || "default"} / ${k.per_hour || "default"}` },
    { label: "Expires", value: (k) => date(k.expires_at) },
    { label: "Created", value: (k) => date(k.created_at) },
    { label: "Actions", value: actions },
  ], keys, { empty: "No keys yet: create one below.", rowId: (k) => k.id });
}

export async function render(main, ctx) {
  const { api, state } = ctx;
  const models = state.config.models;
  const keys = (await api.get("/api/v1/keys")).data;
  if (!ctx.current()) return;
  const editor = h("div", { class: "editor" });
  const created = h("div", { class: "created" });

  const edit = (k) => {
    const f = form({
      label: `Controls of key ${k.name || k.prefix}`,
      submit: "Save controls",
      fields: controlFields(models, k),
      onSubmit: async (values) => {
        await api.patch(`/api/v1/keys/${encodeURIComponent(k.id)}`, controlsBody(values));
        ctx.notify(`Saved the controls of ${k.name || k.prefix}.`);
        ctx.navigate("keys");
      },
    });
    const cancel = h("button", { type: "button", on: { click: () => editor.replaceChildren() } }, "Cancel");
    f.el.querySelector(".actions").append(cancel);
    editor.replaceChildren(section(`Edit key ${k.name || k.prefix}`, f.el));
    editor.querySelector("input").focus();
  };

  const actions = (k) => (k.status === "revoked" ? "—" : h("span", { class: "row-actions" },
    h("button", { type: "button", on: { click: () => edit(k) }, "aria-label": `Edit controls of ${k.name || k.prefix}` }, "Edit"),
    " ",
    confirmButton("Revoke", `Revoke ${k.name || k.prefix}`, async () => {
      await api.post(`/api/v1/keys/${encodeURIComponent(k.id)}/revoke`);
      ctx.notify(`Revoked ${k.name || k.prefix}: it is refused from now on.`);
      ctx.navigate("keys");
    })));

  const create = form({
    label: "Create a key",
    submit: "Create key",
    fields: controlFields(models),
    onSubmit: async (values, el) => {
      const made = await api.post("/api/v1/keys", controlsBody(values));
      el.reset();
      const fresh = (await api.get("/api/v1/keys")).data;
      tableHolder.replaceChildren(keysTable(fresh, actions));
      created.replaceChildren(secret(`New key ${made.name || made.prefix}`, made.key,
        `Copy it now: it is shown only this once. Use it as the API key of the OpenAI SDK, with base_url set to ${api.baseUrl()}.`));
      created.querySelector(".secret-value").focus();
      ctx.notify("Key created.");
    },
  });
  const tableHolder = h("div", null, keysTable(keys, actions));
  main.append(
    h("h1", null, "API keys"),
    section("Your keys", tableHolder, editor),
    created,
    section("Create a key", create.el));
}
