// Operator: every account with its balance, and a new account.

import { date, h, int, planName, section, table } from "../dom.js";
import { form } from "../forms.js";

const SHOWN = 200;

async function balances(api, accounts) {
  const out = new Map();
  const queue = [...accounts];
  const worker = async () => {
    while (queue.length) {
      const a = queue.shift();
      try {
        out.set(a.id, await api.get(`/admin/v1/accounts/${encodeURIComponent(a.id)}`));
      } catch (err) {
        if (err.status === 401) throw err;
      }
    }
  };
  await Promise.all(Array.from({ length: 6 }, worker));
  return out;
}

export async function render(main, ctx) {
  const { api } = ctx;
  const accounts = (await api.get("/admin/v1/accounts")).data;
  const shown = accounts.slice(-SHOWN).reverse();
  const money = await balances(api, shown);
  if (!ctx.current()) return;
  const columns = [
    { label: "Account", value: (a) => h("a", { href: `#/ops/account/${encodeURIComponent(a.id)}` }, a.name) },
    { label: "ID", class: "mono", value: (a) => a.id },
    { label: "Created", value: (a) => date(a.created_at) },
    { label: "Tokens left", numeric: true, value: (a) => int(money.get(a.id)?.remaining_tokens) },
    { label: "Leased by workers", numeric: true, value: (a) => int(money.get(a.id)?.reserved_tokens) },
    { label: "Active package", value: (a) => {
      const p = money.get(a.id)?.active_package;
      return p ? `${planName(p.plan)}, expires ${date(p.expires_at)}` : "none";
    } },
  ];
  const holder = h("div");
  const draw = (needle) => {
    const rows = needle ? shown.filter((a) => a.name.toLowerCase().includes(needle) || a.id.includes(needle)) : shown;
    holder.replaceChildren(table(`Accounts, newest first${accounts.length > SHOWN ? ` (the newest ${SHOWN} of ${accounts.length})` : ""}`,
      columns, rows, { empty: "No accounts.", rowId: (a) => a.id }));
  };
  draw("");
  const search = h("input", { type: "search", id: "account-search", autocomplete: "off" });
  search.addEventListener("input", () => draw(search.value.trim().toLowerCase()));
  const create = form({
    label: "Create an account",
    submit: "Create account",
    inline: true,
    fields: [{ name: "name", label: "Account name", required: true }],
    onSubmit: async (values) => {
      const made = await api.post("/admin/v1/accounts", { name: values.name });
      ctx.notify(`Created account ${made.name}.`);
      ctx.navigate(`ops/account/${encodeURIComponent(made.id)}`);
    },
  });
  main.append(
    h("h1", null, "Accounts"),
    section("All accounts",
      h("div", { class: "field search" }, h("label", { for: "account-search" }, "Find an account"), search),
      holder),
    section("New account", create.el));
}
