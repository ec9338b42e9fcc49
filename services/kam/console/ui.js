// The console's small toolkit: building elements, tables, notices, formats, a bar chart, and a
// form built from a JSON Schema (template parameters, job payloads). Text always goes in as
// text nodes, never as HTML, so nothing the platform returns can become markup.

/** An element: `h("a", { href: "#/" }, "Home")`. `on*` attributes add listeners. */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "class") {
      element.className = value;
    } else if (key === "dataset") {
      Object.assign(element.dataset, value);
    } else if (value === true) {
      element.setAttribute(key, "");
    } else {
      element.setAttribute(key, String(value));
    }
  }
  append(element, children);
  return element;
}

function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace the children of `element`. */
export function replace(element, ...children) {
  element.replaceChildren();
  append(element, children);
  return element;
}

/** A page heading and an optional line under it. */
export function heading(title, subtitle) {
  return h("div", { class: "heading" }, h("h1", {}, title), subtitle ? h("p", { class: "muted" }, subtitle) : null);
}

/**
 * A table: `columns` are `{ title, value: (row) => Node|string, class? }`; `rows` an array.
 * `empty` is shown when there are no rows.
 */
export function table(columns, rows, { empty = "Nothing yet.", caption } = {}) {
  if (!rows.length) return h("p", { class: "empty muted" }, empty);
  return h(
    "div",
    { class: "table-wrap" },
    h(
      "table",
      {},
      caption ? h("caption", {}, caption) : null,
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col", class: c.class }, c.title)))),
      h(
        "tbody",
        {},
        rows.map((row) => h("tr", {}, columns.map((c) => h("td", { class: c.class, "data-label": c.title }, c.value(row))))),
      ),
    ),
  );
}

/** A status badge (`status` also becomes its class: badge-completed, badge-failed, ...). */
export function badge(status) {
  return h("span", { class: `badge badge-${String(status).replace(/[^a-z_]/gi, "")}` }, String(status));
}

/** Show a message in the page's live region (role=status), for `seconds`. */
export function notify(message, kind = "info", seconds = 6) {
  const region = document.getElementById("notice");
  const line = h("p", { class: `notice notice-${kind}` }, message);
  region.append(line);
  setTimeout(() => line.remove(), seconds * 1000);
}

/** An inline error for a failed call, in place of content. */
export function errorBox(error) {
  const status = error && error.status ? `${error.status}: ` : "";
  return h("p", { class: "error", role: "alert" }, `${status}${error && error.message ? error.message : error}`);
}

/** The page for a resource that does not exist or is not the caller's (the platform said 404). */
export function notFound(what = "page") {
  return h(
    "section",
    { class: "not-found" },
    h("h1", {}, "Not found"),
    h("p", {}, `There is no such ${what}, or it is not yours.`),
    h("p", {}, h("a", { href: "#/" }, "Back to the start")),
  );
}

/** A date-time as the reader's locale shows it ("" for nothing). */
export function when(value) {
  if (value === undefined || value === null || value === "") return "";
  const date = typeof value === "number" ? new Date(value < 1e12 ? value * 1000 : value) : new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
}

/** An amount of money with its currency. */
export function money(amount, currency = "USD") {
  const value = Number(amount || 0);
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency, maximumFractionDigits: 6 }).format(value);
  } catch {
    return `${value.toFixed(6)} ${currency}`;
  }
}

/** A button that runs `action` once at a time, showing `busy` while it runs. */
export function button(label, action, { kind = "primary", busy = "Working…", type = "button" } = {}) {
  const element = h("button", { type, class: `btn btn-${kind}` }, label);
  element.addEventListener("click", async (event) => {
    if (type === "submit") return;
    event.preventDefault();
    if (element.disabled) return;
    element.disabled = true;
    element.textContent = busy;
    try {
      await action(event);
    } finally {
      element.disabled = false;
      element.textContent = label;
    }
  });
  return element;
}

/**
 * A bar chart in SVG: `bars` are `{ label, value }`; the title and a table-like text
 * alternative make it readable without sight.
 */
export function barChart(bars, { title = "", format = (v) => String(v) } = {}) {
  const width = 640;
  const rowHeight = 28;
  const labelWidth = 200;
  const max = Math.max(...bars.map((b) => b.value), 0) || 1;
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${Math.max(bars.length, 1) * rowHeight}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${bars.map((b) => `${b.label} ${format(b.value)}`).join(", ")}`);
  svg.classList.add("chart");
  bars.forEach((bar, index) => {
    const y = index * rowHeight;
    const label = document.createElementNS(svgNS, "text");
    label.setAttribute("x", "0");
    label.setAttribute("y", String(y + 18));
    label.textContent = bar.label;
    const rect = document.createElementNS(svgNS, "rect");
    rect.setAttribute("x", String(labelWidth));
    rect.setAttribute("y", String(y + 5));
    rect.setAttribute("height", "18");
    rect.setAttribute("width", String(Math.max(1, ((width - labelWidth - 110) * bar.value) / max)));
    const value = document.createElementNS(svgNS, "text");
    value.setAttribute("x", String(labelWidth + ((width - labelWidth - 110) * bar.value) / max + 6));
    value.setAttribute("y", String(y + 18));
    value.textContent = format(bar.value);
    svg.append(label, rect, value);
  });
  return h("figure", { class: "chart-figure" }, title ? h("figcaption", {}, title) : null, svg);
}

let fieldCounter = 0;

/**
 * A form for the JSON Schema `schema` (an object schema): answers `{ element, value }` where
 * `value()` gives the object the fields describe (and throws an Error naming the first field
 * that is wrong). Handles string (enum, format, length, pattern), number, integer, boolean,
 * arrays of scalars, nested objects and, for anything else, a JSON text field.
 * `options.widget(name, schema, path)` may answer `{ element, value }` for a field it draws
 * itself (a file upload in the job form); `options.values` gives the initial values.
 */
export function schemaForm(schema, options = {}) {
  const root = objectFields(schema || { type: "object", properties: {} }, [], options, options.values || {});
  return { element: root.element, value: () => root.value() };
}

function objectFields(schema, path, options, values) {
  const required = new Set(schema.required || []);
  const properties = Object.entries(schema.properties || {});
  const fields = properties.map(([name, propertySchema]) =>
    field(name, propertySchema || {}, [...path, name], required.has(name), options, values ? values[name] : undefined),
  );
  const element = h(path.length ? "fieldset" : "div", { class: "schema-form" }, path.length ? h("legend", {}, title(path.at(-1), schema)) : null, fields.map((f) => f.element));
  if (!properties.length && !path.length) element.append(h("p", { class: "muted" }, "No parameters."));
  return {
    element,
    value() {
      const result = {};
      for (const f of fields) {
        const v = f.value();
        if (v !== undefined) result[f.name] = v;
      }
      return result;
    },
  };
}

function title(name, schema) {
  return schema.title || name.replace(/[_-]+/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function field(name, schema, path, isRequired, options, initial) {
  const custom = options.widget ? options.widget(name, schema, path, isRequired) : undefined;
  if (custom) return { name, ...custom };
  const type = Array.isArray(schema.type) ? schema.type.find((t) => t !== "null") : schema.type;
  if (type === "object" && schema.properties) {
    const nested = objectFields(schema, path, options, initial || {});
    return { name, element: nested.element, value: nested.value };
  }
  const id = `f${++fieldCounter}-${path.join("-").replace(/[^a-z0-9_-]/gi, "")}`;
  const label = h("label", { for: id }, title(name, schema), isRequired ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null);
  const help = schema.description ? h("small", { class: "help", id: `${id}-help` }, schema.description) : null;
  const common = { id, name: path.join("."), "aria-describedby": help ? `${id}-help` : undefined, required: isRequired };
  const start = initial !== undefined ? initial : schema.default;
  let input;
  let read;
  const where = path.join(".");
  if (Array.isArray(schema.enum)) {
    input = h("select", common, isRequired ? null : h("option", { value: "" }, "—"), schema.enum.map((v) => h("option", { value: JSON.stringify(v), selected: JSON.stringify(v) === JSON.stringify(start) }, String(v))));
    read = () => (input.value === "" ? undefined : JSON.parse(input.value));
  } else if (type === "boolean") {
    input = h("input", { ...common, type: "checkbox", required: false, checked: Boolean(start) });
    read = () => input.checked;
    return { name, element: h("div", { class: "field field-check" }, input, label, help), value: read };
  } else if (type === "integer" || type === "number") {
    input = h("input", { ...common, type: "number", step: type === "integer" ? "1" : "any", min: schema.minimum, max: schema.maximum, value: start ?? "" });
    read = () => {
      if (input.value === "") return undefined;
      const n = Number(input.value);
      if (!Number.isFinite(n) || (type === "integer" && !Number.isInteger(n))) throw new Error(`${where}: give ${type === "integer" ? "a whole number" : "a number"}`);
      return n;
    };
  } else if (type === "array" && schema.items && ["string", "number", "integer"].includes(schema.items.type)) {
    input = h("textarea", { ...common, rows: 3, placeholder: "one per line" });
    input.value = Array.isArray(start) ? start.join("\n") : "";
    read = () => {
      const items = input.value.split("\n").map((s) => s.trim()).filter(Boolean);
      if (!items.length) return undefined;
      return schema.items.type === "string" ? items : items.map((s) => {
        const n = Number(s);
        if (!Number.isFinite(n)) throw new Error(`${where}: ${JSON.stringify(s)} is not a number`);
        return n;
      });
    };
  } else if (type === "string") {
    const long = (schema.maxLength || 0) > 200 || schema.format === "textarea" || /text|content|body|description|prompt/i.test(name);
    const inputType = { email: "email", uri: "url", date: "date", "date-time": "datetime-local" }[schema.format] || "text";
    input = long
      ? h("textarea", { ...common, rows: 4, minlength: schema.minLength, maxlength: schema.maxLength })
      : h("input", { ...common, type: inputType, minlength: schema.minLength, maxlength: schema.maxLength, pattern: schema.pattern });
    input.value = start ?? "";
    read = () => (input.value === "" ? undefined : input.value);
  } else {
    input = h("textarea", { ...common, rows: 4, class: "mono", placeholder: "JSON" });
    input.value = start !== undefined ? JSON.stringify(start, null, 2) : "";
    read = () => {
      if (input.value.trim() === "") return undefined;
      try {
        return JSON.parse(input.value);
      } catch {
        throw new Error(`${where}: not valid JSON`);
      }
    };
  }
  const value = () => {
    const v = read();
    if (v === undefined && isRequired) throw new Error(`${where} is required`);
    return v;
  };
  return { name, element: h("div", { class: "field" }, label, input, help), value };
}
