// Redeem a code into a token package.

import { date, h, int, planName, section } from "../dom.js";
import { form } from "../forms.js";

export async function render(main, ctx) {
  const result = h("div", { class: "result", "aria-live": "polite" });
  const f = form({
    label: "Redeem a code",
    submit: "Redeem",
    fields: [{
      name: "code", label: "Code", required: true, autocomplete: "off", placeholder: "ZOWY-XXXXX-XXXXX-XXXXX-XXXXX",
      hint: "Any case, with or without dashes.",
    }],
    onSubmit: async (values, el) => {
      result.replaceChildren();
      const done = await ctx.api.post("/api/v1/redeem", { code: values.code });
      el.reset();
      const p = done.package;
      result.replaceChildren(h("div", { class: "success" },
        h("h2", null, "Code redeemed"),
        h("p", null, `A ${planName(p.plan)} package of ${int(p.tokens)} tokens, valid until ${date(p.expires_at)}.`),
        h("p", null, `You now have ${int(done.remaining_tokens)} tokens left.`),
        h("p", null, h("a", { href: "#/dashboard" }, "See the dashboard"))));
      ctx.notify("Code redeemed.");
    },
  });
  main.append(h("h1", null, "Redeem a code"), section("Your code", f.el), result);
}
