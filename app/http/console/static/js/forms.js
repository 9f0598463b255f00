// Forms: every control has a label, hints are tied to their control, and an error is announced and
// marks the field it names.

import { h, uid } from "./dom.js";
import { dismiss } from "./status.js";

function control(spec, id, hintId) {
  const common = {
    id, name: spec.name, required: spec.required, "aria-describedby": hintId,
    autocomplete: spec.autocomplete || "off", placeholder: spec.placeholder,
  };
  if (spec.type === "select") {
    return h("select", common, spec.options.map((o) => h("option", { value: o.value, selected: o.value === spec.value }, o.label)));
  }
  if (spec.type === "textarea") {
    return h("textarea", { ...common, rows: spec.rows || 4, readOnly: spec.readOnly, value: spec.value || "" });
  }
  return h("input", {
    ...common, type: spec.type || "text", value: spec.value === null || spec.value === undefined ? "" : String(spec.value),
    min: spec.min, max: spec.max, step: spec.step, inputmode: spec.inputmode, spellcheck: spec.type === "password" ? "false" : null,
  });
}

function choices(spec, hintId) {
  const chosen = new Set(spec.value || []);
  const boxes = spec.options.map((o) => {
    const id = uid("c");
    return h("span", { class: "choice" },
      h("input", { type: "checkbox", id, name: spec.name, value: o.value, checked: chosen.has(o.value) }),
      h("label", { for: id }, o.label));
  });
  return h("fieldset", { class: "field choices", "aria-describedby": hintId, dataset: { field: spec.name } },
    h("legend", null, spec.label), boxes, spec.hint ? h("p", { class: "hint", id: hintId }, spec.hint) : null);
}

export function field(spec) {
  const id = uid("f");
  const hintId = spec.hint ? `${id}-hint` : null;
  if (spec.type === "checkboxes") return choices(spec, hintId);
  return h("div", { class: "field", dataset: { field: spec.name } },
    h("label", { for: id, class: spec.required ? "required" : null }, spec.label),
    control(spec, id, hintId),
    spec.hint ? h("p", { class: "hint", id: hintId }, spec.hint) : null);
}

function read(formEl, spec) {
  if (spec.type === "checkboxes") {
    return [...formEl.querySelectorAll(`input[type=checkbox][name="${spec.name}"]`)].filter((b) => b.checked).map((b) => b.value);
  }
  const el = formEl.elements.namedItem(spec.name);
  const raw = el.value.trim();
  if (raw === "") return null;
  if (spec.type === "number") return Number(raw);
  return raw;
}

// A form of fields; onSubmit(values) may throw an ApiError, shown under the form.
export function form({ label, fields, submit, onSubmit, inline = false }) {
  const error = h("p", { class: "form-error", role: "alert", hidden: true });
  const button = h("button", { type: "submit", class: "primary" }, submit);
  const el = h("form", { class: inline ? "form inline" : "form", "aria-label": label, novalidate: true },
    fields.map(field), h("div", { class: "actions" }, button), error);
  const values = () => Object.fromEntries(fields.map((f) => [f.name, read(el, f)]));
  const clearError = () => {
    error.hidden = true;
    error.textContent = "";
    for (const bad of el.querySelectorAll("[aria-invalid]")) bad.removeAttribute("aria-invalid");
  };
  const showError = (err) => {
    error.textContent = err.message || String(err);
    error.hidden = false;
    const name = (err.param || "").replace(/\[.*$/, "");
    const target = name && el.querySelector(`[data-field="${CSS.escape(name)}"] input, [data-field="${CSS.escape(name)}"] select, [data-field="${CSS.escape(name)}"] textarea`);
    if (target) {
      target.setAttribute("aria-invalid", "true");
      target.focus();
    }
  };
  el.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearError();
    dismiss();
    for (const f of fields) {
      if (f.required && f.type !== "checkboxes" && read(el, f) === null) {
        showError({ message: `${f.label} is required.`, param: f.name });
        return;
      }
    }
    button.disabled = true;
    el.setAttribute("aria-busy", "true");
    try {
      await onSubmit(values(), el);
    } catch (err) {
      showError(err);
    } finally {
      button.disabled = false;
      el.removeAttribute("aria-busy");
    }
  });
  return { el, values, showError, clearError };
}

// A secret shown once (a new key, codes, an invite token), with a button to copy it.
export function secret(title, text, note) {
  const id = uid("secret");
  const box = text.includes("\n")
    ? h("textarea", { id, readOnly: true, rows: Math.min(12, text.split("\n").length + 1), class: "secret-value", value: text })
    : h("input", { id, type: "text", readOnly: true, class: "secret-value", value: text, spellcheck: "false" });
  const copied = h("span", { class: "copied", role: "status" });
  const copy = h("button", {
    type: "button",
    on: {
      click: async () => {
        box.select();
        try {
          await navigator.clipboard.writeText(text);
          copied.textContent = "Copied.";
        } catch {
          copied.textContent = "Selected: press Ctrl+C to copy.";
        }
      },
    },
  }, "Copy");
  return h("div", { class: "secret", role: "region", "aria-label": title },
    h("h3", null, title),
    h("p", { class: "warning" }, note),
    h("label", { for: id, class: "sr-only" }, title),
    h("div", { class: "secret-row" }, box, copy, copied));
}

// A button that asks again, in place, before it does something that cannot be undone.
export function confirmButton(label, confirmLabel, action) {
  const wrap = h("span", { class: "confirm" });
  const start = h("button", { type: "button", class: "danger-outline" }, label);
  const showStart = () => {
    wrap.replaceChildren(start);
  };
  start.addEventListener("click", () => {
    const yes = h("button", { type: "button", class: "danger" }, confirmLabel);
    const no = h("button", { type: "button" }, "Cancel");
    yes.addEventListener("click", async () => {
      yes.disabled = true;
      no.disabled = true;
      try {
        await action();
      } finally {
        if (yes.isConnected) showStart();
      }
    });
    no.addEventListener("click", () => {
      showStart();
      start.focus();
    });
    wrap.replaceChildren(yes, " ", no);
    yes.focus();
  });
  showStart();
  return wrap;
}
