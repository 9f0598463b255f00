// Operator: generate redemption codes (shown once), and look up a batch.

import { date, h, int, planName, section, table } from "../dom.js";
import { form, secret } from "../forms.js";

export async function render(main, ctx) {
  const { api, state } = ctx;
  const shown = h("div");
  const batch = h("div");
  const plans = Object.entries(state.config.plans);

  const lookup = async (batchId) => {
    const found = await api.get(`/admin/v1/codes/${encodeURIComponent(batchId)}`);
    batch.replaceChildren(table(`Batch ${found.batch_id}: ${int(found.redeemed)} of ${int(found.count)} redeemed`, [
      { label: "Code ID", class: "mono", value: (c) => c.id },
      { label: "Grants", value: (c) => `${planName(c.plan)}: ${int(c.tokens)} tokens` },
      { label: "Redeemable until", value: (c) => date(c.expires_at) },
      { label: "Redeemed by", class: "mono", value: (c) => c.redeemed_by || "—" },
      { label: "Redeemed", value: (c) => date(c.redeemed_at) },
    ], found.data));
  };

  const generate = form({
    label: "Generate redemption codes",
    submit: "Generate codes",
    fields: [
      { name: "plan", label: "Plan", type: "select", value: plans[0][0], options: [...plans.map(([p, n]) => ({ value: p, label: `${p} — ${int(n)} tokens` })), { value: "", label: "No plan: tokens only" }] },
      { name: "tokens", label: "Tokens", type: "number", min: 1, inputmode: "numeric", hint: "Empty: the plan's tokens." },
      { name: "days", label: "Package valid for (days)", type: "number", min: 1, inputmode: "numeric", hint: "Empty: the default validity." },
      { name: "count", label: "How many codes", type: "number", min: 1, max: 10000, value: 10, required: true, inputmode: "numeric" },
      { name: "expires_in_days", label: "Redeemable for (days)", type: "number", min: 1, inputmode: "numeric", hint: "Empty: the default." },
    ],
    onSubmit: async (values) => {
      const made = await api.post("/admin/v1/codes", values);
      shown.replaceChildren(secret(`Batch ${made.batch_id}: ${made.codes.length} codes`, made.codes.join("\n"),
        "Shown only this once: the gateway keeps only their hashes. Copy them now."));
      shown.querySelector(".secret-value").focus();
      await lookup(made.batch_id);
      ctx.notify(`Generated ${made.codes.length} codes.`);
    },
  });
  const find = form({
    label: "Look up a batch",
    submit: "Look up",
    inline: true,
    fields: [{ name: "batch_id", label: "Batch ID", required: true, placeholder: "batch_…" }],
    onSubmit: async (values) => lookup(values.batch_id),
  });
  main.append(h("h1", null, "Redemption codes"), section("Generate codes", generate.el), shown,
    section("Batches", find.el, batch));
}
