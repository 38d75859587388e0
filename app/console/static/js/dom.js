// DOM building without innerHTML: every string from the server or the user becomes a text node or an
// attribute value set through the DOM, never markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function setProps(el, props) {
  for (const [key, value] of Object.entries(props || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = String(value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key.startsWith("on")) throw new Error(`event handler ${key} must be a function`);
    else if (key === "value" && "value" in el) el.value = value;
    else if (key === "checked" || key === "selected" || key === "disabled" || key === "multiple") el[key] = true;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** h("p", {class: "x"}, "text", h("b", {}, "bold")) */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  setProps(el, props);
  return append(el, children);
}

/** The same for SVG elements. */
export function s(tag, props = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (value !== null && value !== undefined) el.setAttribute(key, String(value));
  }
  return append(el, children);
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export function replace(el, ...children) {
  return append(clear(el), children);
}

let fieldCount = 0;
/** A labelled control: {label, hint, control} -> div.field with label[for] pointing at the control. */
export function field(label, control, hint) {
  if (!control.id) control.id = `f${++fieldCount}`;
  const hintEl = hint ? h("span", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintEl) control.setAttribute("aria-describedby", hintEl.id);
  return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hintEl);
}

/** A definition list from [term, value] pairs (values: strings, numbers or nodes; null ones skipped). */
export function keyValues(pairs) {
  const dl = h("dl", { class: "kv" });
  for (const [term, value] of pairs) {
    if (value === null || value === undefined) continue;
    dl.append(h("dt", {}, term), h("dd", {}, value));
  }
  return dl;
}

export function table(headers, rows, { caption, numeric = [] } = {}) {
  const head = h("tr", {}, headers.map((title, i) => h("th", { scope: "col", class: numeric.includes(i) ? "num" : null }, title)));
  const body = rows.map((cells) => h("tr", {}, cells.map((cell, i) => h("td", { class: numeric.includes(i) ? "num" : null }, cell))));
  return h("div", { class: "table-wrap" },
    h("table", {}, caption ? h("caption", { class: "muted small" }, caption) : null, h("thead", {}, head), h("tbody", {}, body)));
}

export function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  if (typeof x !== "number") return String(x);
  if (!Number.isFinite(x)) return String(x);
  return Number.isInteger(x) ? String(x) : x.toFixed(digits);
}

export function percent(x, digits = 1) {
  return typeof x === "number" && Number.isFinite(x) ? `${(100 * x).toFixed(digits)} %` : "–";
}

export function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error && error.message ? error.message : String(error));
}

export function notAvailable(what) {
  return h("p", { class: "unavailable" }, `${what}: not available on this server.`);
}

export function toast(message) {
  const el = document.getElementById("toast");
  el.textContent = message;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.textContent = ""; }, 5000);
}

/** Split a textarea of labels: one per line, or comma-separated on one line. */
export function parseLabels(text) {
  const lines = text.split("\n").map((x) => x.trim()).filter(Boolean);
  const parts = lines.length === 1 ? lines[0].split(",") : lines;
  return parts.map((x) => x.trim()).filter(Boolean);
}
