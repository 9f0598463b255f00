// DOM from data: text always goes in as text nodes or properties, never as markup.

const PROPERTIES = new Set(["value", "checked", "disabled", "selected", "readOnly", "required", "hidden", "open", "tabIndex"]);

export function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "on") {
      for (const [event, handler] of Object.entries(value)) el.addEventListener(event, handler);
    } else if (name === "class") {
      el.className = value;
    } else if (name === "dataset") {
      Object.assign(el.dataset, value);
    } else if (PROPERTIES.has(name)) {
      el[name] = value;
    } else {
      if (/^on/i.test(name) || name === "style") throw new Error(`h(): attribute ${name} is not allowed`);
      if (name === "href" && !/^(#|\/(?!\/))/.test(String(value))) throw new Error("h(): only same-origin links");
      el.setAttribute(name, value === true ? "" : String(value));
    }
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

let ids = 0;
export function uid(prefix = "f") {
  ids += 1;
  return `${prefix}-${ids}`;
}

// formatting

const integer = new Intl.NumberFormat("en-US");

export function int(n) {
  return n === null || n === undefined ? "—" : integer.format(Math.round(n));
}

// A package's plan as a name: a package granted as a number of tokens has no plan of its own.
export function planName(plan) {
  if (!plan || plan === "tokens") return "Custom";
  return plan[0].toUpperCase() + plan.slice(1);
}

export function percent(part, whole) {
  if (!whole) return "0%";
  const p = (100 * part) / whole;
  return `${p < 10 && p > 0 ? p.toFixed(1) : Math.round(p)}%`;
}

export function time(epoch) {
  if (epoch === null || epoch === undefined) return "—";
  return new Date(epoch * 1000).toISOString().replace("T", " ").slice(0, 19);
}

export function date(epoch) {
  if (epoch === null || epoch === undefined) return "—";
  return new Date(epoch * 1000).toISOString().slice(0, 10);
}

export function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 10_000) return `${(value / 1000).toFixed(1)} s`;
  return value < 10 ? `${value.toFixed(1)} ms` : `${integer.format(Math.round(value))} ms`;
}

// An epoch in seconds from a date input's "YYYY-MM-DD" (start of that UTC day), or null.
export function dayStart(text) {
  if (!text) return null;
  const at = Date.parse(`${text}T00:00:00Z`);
  return Number.isNaN(at) ? null : at / 1000;
}

// building blocks

export function badge(text, kind) {
  return h("span", { class: `badge badge-${kind || "neutral"}` }, text);
}

export function card(label, value, detail) {
  return h("div", { class: "card" },
    h("p", { class: "card-label" }, label),
    h("p", { class: "card-value" }, value),
    detail ? h("p", { class: "card-detail" }, detail) : null);
}

// A table from column definitions: {label, value(row) -> text or Node, class?, numeric?}.
export function table(caption, columns, rows, { empty = "Nothing yet.", rowId } = {}) {
  const head = h("tr", null, columns.map((c) => h("th", { scope: "col", class: c.numeric ? "num" : null }, c.label)));
  const body = rows.length
    ? rows.map((row) => h("tr", { dataset: rowId ? { id: rowId(row) } : undefined },
      columns.map((c) => h("td", { class: [c.numeric ? "num" : "", c.class || ""].join(" ").trim() || null }, c.value(row)))))
    : [h("tr", null, h("td", { colspan: columns.length, class: "empty" }, empty))];
  return h("div", { class: "table-wrap" },
    h("table", null, h("caption", null, caption), h("thead", null, head), h("tbody", null, body)));
}

export function section(title, ...children) {
  const id = uid("sec");
  return h("section", { class: "panel", "aria-labelledby": id }, h("h2", { id }, title), children);
}
