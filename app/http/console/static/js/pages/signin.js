// Sign in: an account owner with email and password, an operator with the admin token, or a new
// owner with an invite. Sessions come back as HttpOnly cookies; the page keeps no token.

import { h, section } from "../dom.js";
import { form } from "../forms.js";

export async function render(main, ctx) {
  const { api, state } = ctx;
  main.append(h("h1", null, "Sign in to the Zowy console"));
  if (state.config.demo) {
    main.append(h("p", { class: "note" }, "Demo mode: the demo owner's email and password were printed by ",
      h("code", null, "make run"), " in the terminal."));
  }
  const panels = h("div", { class: "columns" });
  main.append(panels);

  if (!state.customer) {
    const customer = form({
      label: "Customer sign-in",
      submit: "Sign in",
      fields: [
        { name: "email", label: "Email", type: "email", required: true, autocomplete: "username" },
        { name: "password", label: "Password", type: "password", required: true, autocomplete: "current-password" },
      ],
      onSubmit: async (values) => {
        // The answer also holds the session token; the page drops it and relies on the HttpOnly cookie.
        const done = await api.post("/api/v1/auth/sessions", { email: values.email, password: values.password });
        const balance = await api.get("/api/v1/account");
        sessionStorage.setItem("zowy.email", done.owner.email);
        ctx.notify(`Signed in as ${done.owner.email}.`);
        await ctx.signedIn("customer", { account: balance.account, email: done.owner.email });
      },
    });
    panels.append(section("Account owners", h("p", null, "Sign in with the email and password of your account."), customer.el));
  }

  if (!state.operator) {
    let body;
    if (state.config.operators) {
      body = form({
        label: "Operator sign-in",
        submit: "Sign in as operator",
        fields: [{
          name: "token", label: "Admin token", type: "password", required: true, autocomplete: "off",
          hint: "ZOWY_ADMIN_TOKEN. It is traded for a short-lived session cookie; the page does not keep it.",
        }],
        onSubmit: async (values, el) => {
          await api.post("/console/api/operator/session", { token: values.token });
          el.reset();
          ctx.notify("Signed in as operator.");
          await ctx.signedIn("operator", { signed_in: true });
        },
      }).el;
    } else {
      body = h("p", null, "Operator sign-in is off: the gateway has no admin token (set ZOWY_ADMIN_TOKEN).");
    }
    panels.append(section("Operators", body));
  }

  if (!state.customer) {
    const invite = form({
      label: "Accept an invite",
      submit: "Accept invite",
      fields: [
        { name: "token", label: "Invite token", type: "password", required: true, autocomplete: "off", hint: "The zi-… token your operator sent you." },
        { name: "password", label: "Choose a password", type: "password", required: true, autocomplete: "new-password", hint: "At least 10 characters." },
      ],
      onSubmit: async (values, el) => {
        const done = await api.post("/api/v1/auth/invite/accept", { token: values.token, password: values.password });
        el.reset();
        ctx.notify(`Invite accepted for ${done.owner.email}: sign in with your new password.`);
      },
    });
    main.append(h("details", { class: "panel invite" }, h("summary", null, "Have an invite? Become an account owner"), invite.el));
  }
}
