// Building the page: elements from data, text always as text (never parsed as HTML), and formats.

// h("td", {class: "x", onclick: fn}, "text", child, [more], null) -> element; null/false children are skipped.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    // Not el.append: a form's controls shadow its methods by name (an input named "append").
    else Element.prototype.append.call(el, child instanceof Node ? child : String(child));
  }
}

export function table(headings, rows, empty = "none") {
  return h("table", {},
    h("thead", {}, h("tr", {}, headings.map((t) => h("th", {}, t)))),
    h("tbody", {}, rows.length ? rows : h("tr", {}, h("td", { colspan: String(headings.length), class: "muted" }, empty))));
}

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  let i = 0;
  while (n >= 1024 && i < UNITS.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : n} ${UNITS[i]}`;
}

// The API's datetimes are UTC, some without an offset.
export const parseTime = (iso) => new Date(/[zZ]|[+-]\d\d:\d\d$/.test(iso) ? iso : `${iso}Z`);

export function age(iso) {
  if (!iso) return "never";
  const seconds = Math.max(0, (Date.now() - parseTime(iso)) / 1000);
  const [n, unit] = seconds < 90 ? [seconds, "s"] : seconds < 5400 ? [seconds / 60, "min"]
    : seconds < 129600 ? [seconds / 3600, "h"] : [seconds / 86400, "d"];
  return `${Math.round(n)} ${unit} ago`;
}

export const when = (iso) => (iso ? parseTime(iso).toLocaleString() : "–");

// Replace el's children, with h()'s rules for them.
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}
