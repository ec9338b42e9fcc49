// The console's admin pages (see app.js for the route contract): an overview, every client's
// requests with filters and live status, one request from recommendation to its run, clients and
// users, the cost ledger across clients, dead letters, and the platform's health.
// Everything shown comes from KAM's admin routes or, through the gateway, the workflow service;
// text is always inserted as text (ui.js's h), never as markup.

import { ApiError, get, kam, post, put, withQuery, workflow } from "./api.js";
import { REQUEST_EVENTS, REQUEST_STATUSES as STATUSES, follow } from "./live.js";
import { badge, barChart, button, errorBox, h, heading, money, notify, replace, schemaForm, table, when } from "./ui.js";

const URGENCIES = ["low", "normal", "high", "urgent"];
const TIERS = ["basic", "standard", "premium"];
const KINDS = ["run", "tokens", "stage"];
const HEALTH_SECONDS = 5;

// The requests page's filters, kept while the console is open (the overview's counts set them).
const requestFilters = { status: "", client_id: "", urgency: "", category: "", q: "" };

let idCounter = 0;
const uid = (prefix) => `${prefix}-${++idCounter}`;

/** A labelled field around `control` (its id ties the label to it). */
function field(label, control, help) {
  const id = control.id || uid("a");
  control.id = id;
  const helpId = help ? `${id}-help` : undefined;
  if (helpId) control.setAttribute("aria-describedby", helpId);
  return h("div", { class: "field" }, h("label", { for: id }, label), control, help ? h("small", { class: "help", id: helpId }, help) : null);
}

function select(name, options, value, { any = "Any" } = {}) {
  return h(
    "select",
    { name },
    any === null ? null : h("option", { value: "" }, any),
    options.map((o) => {
      const [v, label] = Array.isArray(o) ? o : [o, o.replace(/_/g, " ")];
      return h("option", { value: v, selected: v === value }, label);
    }),
  );
}

/** A live-update indicator that follows a `follow()` handle's state. */
function liveState() {
  const element = h("p", { class: "live-state a-live", role: "status" }, "Live updates: connecting…");
  const words = { connecting: "connecting…", open: "on", reconnecting: "reconnecting…", closed: "off" };
  return { element, set: (state) => (element.textContent = `Live updates: ${words[state] || state}`) };
}

/**
 * Whether the page is still the one shown: a view that awaits the platform must not draw once the
 * reader has moved on (its late answer would replace the next page's content).
 */
function current(page) {
  let shown = true;
  page.onLeave(() => (shown = false));
  return () => shown;
}

function section(title, ...children) {
  const id = uid("s");
  return h("section", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

function currencyTotals(byCurrency) {
  const entries = Object.entries(byCurrency || {});
  if (!entries.length) return money(0);
  return entries.map(([currency, amount]) => money(amount, currency)).join(" + ");
}

// -- overview ------------------------------------------------------------------------------

async function overview(main, params, page) {
  const visible = current(page);
  const [list, clients, health] = await Promise.all([
    get(withQuery(kam("/requests"), { limit: 500 })),
    get(kam("/clients")),
    get(kam("/console/health")).catch((error) => ({ error })),
  ]);
  if (!visible()) return;
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const r of list.requests) counts[r.status] = (counts[r.status] || 0) + 1;
  const cards = STATUSES.map((status) =>
    h(
      "a",
      {
        class: "card a-stat",
        href: "#/requests",
        onclick: () => Object.assign(requestFilters, { status, client_id: "", urgency: "", category: "", q: "" }),
      },
      h("span", { class: "a-stat-count" }, String(counts[status])),
      h("span", { class: "a-stat-label" }, `${status.replace(/_/g, " ")} request${counts[status] === 1 ? "" : "s"}`),
    ),
  );
  const healthLine = health.error
    ? errorBox(health.error)
    : h("p", {}, "Platform: ", badge(health.status), " · ", h("a", { href: "#/health" }, "health"));
  replace(
    main,
    heading("Overview", list.next_cursor ? "Counts of the latest 500 requests" : `${list.requests.length} requests in all`),
    h("div", { class: "grid a-stats" }, cards),
    healthLine,
    h(
      "ul",
      { class: "a-links" },
      h("li", {}, h("a", { href: "#/requests" }, "All requests")),
      h("li", {}, h("a", { href: "#/clients" }, `Clients (${clients.clients.length})`)),
      h("li", {}, h("a", { href: "#/ledger" }, "Cost ledger")),
      h("li", {}, h("a", { href: "#/dead-letters" }, "Dead letters")),
    ),
  );
}

// -- requests ------------------------------------------------------------------------------

async function requestsPage(main, params, page) {
  const visible = current(page);
  const clients = (await get(kam("/clients"))).clients;
  if (!visible()) return;
  const names = Object.fromEntries(clients.map((c) => [c.client_id, c.name]));
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter requests" },
    field("Status", select("status", STATUSES, requestFilters.status)),
    field("Client", select("client_id", clients.map((c) => [c.client_id, c.name]), requestFilters.client_id)),
    field("Urgency", select("urgency", URGENCIES, requestFilters.urgency)),
    field("Category", h("input", { name: "category", value: requestFilters.category, size: 12 })),
    field("Words", h("input", { name: "q", type: "search", value: requestFilters.q, placeholder: "title or description" })),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "btn btn-primary" }, "Apply"), h("button", { type: "reset", class: "btn" }, "Clear")),
  );
  const live = liveState();
  const results = h("div", { "aria-live": "polite" });
  const more = h("div", { class: "actions" });
  const rows = new Map();
  let cursor = null;

  const columns = [
    { title: "Request", value: (r) => h("a", { href: `#/requests/${encodeURIComponent(r.request_id)}` }, r.title) },
    { title: "Client", value: (r) => names[r.client_id] || r.client_id },
    { title: "Status", value: (r) => h("span", { dataset: { status: r.request_id } }, badge(r.status)) },
    { title: "Urgency", value: (r) => r.urgency },
    { title: "Template", value: (r) => (r.template ? r.template.template_name : "—") },
    { title: "Updated", value: (r) => when(r.updated_at) },
  ];

  async function load(append = false) {
    const query = { ...requestFilters, limit: 50, cursor: append ? cursor : undefined };
    try {
      const answer = await get(withQuery(kam("/requests"), query));
      if (!append) rows.clear();
      for (const r of answer.requests) rows.set(r.request_id, r);
      cursor = answer.next_cursor;
      const all = [...rows.values()];
      replace(
        results,
        h("p", { class: "muted" }, `${all.length} request${all.length === 1 ? "" : "s"} shown${cursor ? " (more below)" : ""}`),
        table(columns, all, { empty: "No request matches these filters.", caption: "Requests" }),
      );
      replace(more, cursor ? button("Show more", () => load(true), { kind: "link", busy: "Loading…" }) : null);
    } catch (error) {
      replace(results, errorBox(error));
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    for (const key of Object.keys(requestFilters)) requestFilters[key] = String(data.get(key) || "").trim();
    load();
  });
  form.addEventListener("reset", () => {
    for (const key of Object.keys(requestFilters)) requestFilters[key] = "";
    setTimeout(load);
  });

  let reload = null;
  const stream = follow(kam("/notifications/stream"), {
    types: REQUEST_EVENTS,
    onState: live.set,
    onUpdate: (type, data) => {
      const shown = data && rows.get(data.request_id);
      if (shown && data.status) {
        // A status change of a request on the page: its badge changes in place.
        shown.status = data.status;
        const cell = results.querySelector(`[data-status="${CSS.escape(data.request_id)}"]`);
        if (cell) replace(cell, badge(data.status));
      }
      if (!shown || type.endsWith(".template_assigned") || type.endsWith(".updated")) {
        // Something new may now match the filters: list again, once for a burst of updates.
        clearTimeout(reload);
        reload = setTimeout(() => load(), 400);
      }
    },
  });
  page.onLeave(() => {
    stream.close();
    clearTimeout(reload);
  });

  replace(main, heading("Requests", "Every client's requests, newest first"), live.element, form, results, more);
  await load();
}

// -- one request ---------------------------------------------------------------------------

async function requestPage(main, params, page) {
  const visible = current(page);
  const id = params.id;
  const path = kam(`/requests/${encodeURIComponent(id)}`);
  let request = await get(path);
  const [templates, clients] = await Promise.all([get(kam("/templates")), get(kam("/clients"))]);
  if (!visible()) return;
  const byId = Object.fromEntries(templates.templates.map((t) => [String(t.id), t]));
  const client = clients.clients.find((c) => c.client_id === request.client_id);

  const summary = h("div");
  const recommendArea = h("div", { "aria-live": "polite" });
  const assignArea = h("div");
  const runArea = h("div", { "aria-live": "polite" });
  const runError = h("div", { "aria-live": "assertive" });
  const resultArea = h("div");
  const live = liveState();
  let watched = null;
  let runState = null;
  let chosen = request.template ? String(request.template.template_id) : "";

  function drawSummary() {
    replace(
      summary,
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Status"),
        h("dd", {}, badge(request.status)),
        h("dt", {}, "Client"),
        h("dd", {}, client ? `${client.name} (${client.client_id}, ${client.tier})` : request.client_id),
        h("dt", {}, "Urgency"),
        h("dd", {}, request.urgency),
        h("dt", {}, "Category"),
        h("dd", {}, request.category),
        h("dt", {}, "Created"),
        h("dd", {}, `${when(request.created_at)} by ${request.created_by}`),
        h("dt", {}, "Template"),
        h("dd", {}, request.template ? `${request.template.template_name} (${request.template.tier || "?"})` : "none yet"),
        request.template && Object.keys(request.template.parameters || {}).length
          ? [h("dt", {}, "Parameters"), h("dd", {}, h("code", {}, JSON.stringify(request.template.parameters)))]
          : null,
        request.execution_id ? [h("dt", {}, "Execution"), h("dd", {}, h("code", {}, request.execution_id))] : null,
        request.error ? [h("dt", {}, "Error"), h("dd", { class: "error" }, request.error)] : null,
      ),
      request.description ? h("p", { class: "a-description" }, request.description) : null,
      h("h3", { class: "a-sub" }, "History"),
      h(
        "ol",
        { class: "timeline" },
        (request.history || []).map((step) => h("li", {}, badge(step.status), " ", h("span", { class: "muted" }, when(step.at)))),
      ),
    );
  }

  async function recommend() {
    try {
      const answer = await post(kam("/recommend-template"), { request_id: id });
      replace(
        recommendArea,
        answer.fallback ? h("p", { class: "muted" }, `The model did not answer (${answer.fallback_reason}); the builtin recommender ranked these.`) : null,
        h(
          "ol",
          { class: "a-ranked", "aria-label": "Recommended templates" },
          answer.recommendations.map((r, index) =>
            h(
              "li",
              { class: "card" },
              h(
                "div",
                { class: "a-ranked-head" },
                h("strong", {}, `${index + 1}. ${(byId[String(r.template_id)] || {}).title || r.template_name}`),
                " ",
                h("span", { class: "muted" }, `${r.tier} · ${money(r.estimated_cost, r.currency)} a run`),
                h("span", { class: "a-score" }, h("meter", { min: 0, max: 1, value: r.score, "aria-label": `Score of ${r.template_name}` }), ` ${Math.round(r.score * 100)}%`),
              ),
              h("ul", { class: "a-reasons" }, r.reasons.map((reason) => h("li", {}, reason))),
              button(`Choose ${r.template_name}`, async () => {
                chosen = String(r.template_id);
                drawAssign();
                assignArea.querySelector("select").focus();
              }, { kind: "link" }),
            ),
          ),
        ),
      );
    } catch (error) {
      replace(recommendArea, errorBox(error));
    }
  }

  function drawAssign() {
    const assignable = ["pending", "template_assigned", "failed"].includes(request.status);
    const picker = select("template", templates.templates.map((t) => [String(t.id), `${t.title} (${t.tier}, ${money(t.estimated_cost, t.cost.currency)})`]), chosen, { any: "— choose a template —" });
    const formArea = h("div");
    const error = h("div", { "aria-live": "assertive" });
    let form = null;
    function drawForm() {
      const template = byId[picker.value];
      if (!template) {
        replace(formArea, h("p", { class: "muted" }, "Choose a template to see its parameters."));
        form = null;
        return;
      }
      const same = request.template && String(request.template.template_id) === picker.value;
      form = schemaForm(template.parameters, { values: same ? request.template.parameters : {} });
      replace(
        formArea,
        h("p", { class: "muted" }, template.description),
        h("p", {}, "Stages: ", template.stages.join(" → ")),
        h("fieldset", {}, h("legend", {}, `Parameters of ${template.title}`), form.element),
      );
    }
    picker.addEventListener("change", () => {
      chosen = picker.value;
      drawForm();
    });
    drawForm();
    const submit = h("button", { type: "submit", class: "btn btn-primary", disabled: !assignable }, "Assign");
    const element = h(
      "form",
      { "aria-label": "Assign a template" },
      field("Template", picker),
      formArea,
      error,
      h("div", { class: "actions" }, submit, assignable ? null : h("span", { class: "muted" }, `A template is assigned while the request is pending, template assigned or failed (it is ${request.status.replace(/_/g, " ")}).`)),
    );
    element.addEventListener("submit", async (event) => {
      event.preventDefault();
      replace(error);
      if (!form) {
        replace(error, errorBox(new Error("choose a template first")));
        return;
      }
      let parameters;
      try {
        parameters = form.value();
      } catch (problem) {
        replace(error, errorBox(problem));
        return;
      }
      submit.disabled = true;
      try {
        request = await put(path, { template_id: picker.value, parameters }, { headers: { "If-Match": `"${request.version}"` } });
        notify(`Assigned ${request.template.template_name}.`, "ok");
        redraw();
      } catch (problem) {
        replace(error, errorBox(problem));
      } finally {
        submit.disabled = !["pending", "template_assigned", "failed"].includes(request.status);
      }
    });
    replace(assignArea, element);
  }

  function drawRun() {
    const state = runState;
    const stages = request.template ? request.template.stages : [];
    const steps = state ? state.steps || {} : {};
    const order = [...stages, ...Object.keys(steps).filter((s) => !stages.includes(s))];
    const executable = request.template && ["template_assigned", "failed"].includes(request.status);
    replace(
      runArea,
      h(
        "div",
        { class: "actions" },
        executable ? button("Execute", execute, { busy: "Starting…" }) : null,
        !request.template ? h("span", { class: "muted" }, "Assign a template to execute the request.") : null,
        state ? h("span", {}, "Execution ", badge(state.status.toLowerCase()), state.current_step ? ` · at ${state.current_step}` : "") : null,
      ),
      order.length
        ? h(
            "ol",
            { class: "a-steps", "aria-label": "Workflow steps" },
            order.map((name) => {
              const step = steps[name];
              return h(
                "li",
                { class: `a-step a-step-${step ? step.status : "pending"}` },
                h("span", { class: "a-step-name" }, name),
                " ",
                badge(step ? step.status : "pending"),
                step && step.duration_ms !== undefined ? h("span", { class: "muted" }, ` ${Math.round(step.duration_ms)} ms`) : null,
                step && step.attempts > 1 ? h("span", { class: "muted" }, ` · ${step.attempts} attempts`) : null,
                step && step.error ? h("p", { class: "error" }, step.error) : null,
              );
            }),
          )
        : null,
      state && state.error ? h("p", { class: "error", role: "alert" }, state.error) : null,
    );
  }

  async function execute() {
    replace(runError);
    try {
      const started = await post(kam(`/requests/${encodeURIComponent(id)}/execute`), {});
      notify(`Execution ${started.execution_id} started.`, "ok");
      request = await get(path);
      redraw();
    } catch (error) {
      replace(runError, errorBox(error));
    }
  }

  function watch(executionId) {
    if (!executionId || (watched && watched.id === executionId)) return;
    if (watched) watched.handle.close();
    runState = null;
    const handle = follow(workflow(`/executions/${encodeURIComponent(executionId)}/stream`), {
      types: ["state", "final"],
      onState: () => {},
      onUpdate: (type, state) => {
        if (typeof state !== "object" || !state) return;
        runState = state;
        drawRun();
        if (type === "final") handle.close();
      },
    });
    watched = { id: executionId, handle };
  }

  async function drawResults() {
    if (!["completed", "failed"].includes(request.status) && !(request.deliverable_ids || []).length) {
      replace(resultArea);
      return;
    }
    try {
      const [deliverables, costs] = await Promise.all([
        get(kam(`/requests/${encodeURIComponent(id)}/deliverables`)),
        get(withQuery(kam("/costs"), { request_id: id })),
      ]);
      replace(
        resultArea,
        section(
          "Deliverables",
          table(
            [
              { title: "Deliverable", value: (d) => h("a", { href: kam(`/deliverables/${encodeURIComponent(d.id)}`), download: `${d.id}.json` }, `Download the ${d.type}`) },
              { title: "Size", value: (d) => `${d.size_bytes} bytes`, class: "num" },
              { title: "Recorded", value: (d) => when(d.created_at) },
            ],
            deliverables.deliverables,
            { empty: "No deliverable was recorded." },
          ),
        ),
        section(
          "Costs of this request",
          h("p", {}, "Total: ", h("strong", {}, currencyTotals(costs.by_currency))),
          table(
            [
              { title: "Kind", value: (c) => c.kind },
              { title: "Quantity", value: (c) => String(c.quantity), class: "num" },
              { title: "Amount", value: (c) => money(c.amount, c.currency), class: "num" },
            ],
            costs.entries,
            { empty: "No cost recorded yet." },
          ),
        ),
      );
    } catch (error) {
      replace(resultArea, errorBox(error));
    }
  }

  function redraw() {
    drawSummary();
    drawAssign();
    watch(request.execution_id);
    drawRun();
    drawResults();
  }

  // The request's transitions (from anyone: another admin, the execution ending) redraw it.
  const stream = follow(kam("/notifications/stream"), {
    types: REQUEST_EVENTS,
    onState: live.set,
    onUpdate: async (type, data) => {
      if (!data || data.request_id !== id) return;
      try {
        const fresh = await get(path);
        if (fresh.version !== request.version || type.startsWith("nexus.kam.deliverable")) {
          request = fresh;
          redraw();
        }
      } catch (error) {
        notify(error.message, "error");
      }
    },
  });
  page.onLeave(() => {
    stream.close();
    if (watched) watched.handle.close();
  });

  replace(
    main,
    heading(request.title, `Request ${request.request_id}`),
    live.element,
    h("div", { class: "card" }, summary),
    section("Recommendation", h("div", { class: "actions" }, button("Recommend", recommend, { busy: "Ranking…" })), recommendArea),
    section("Template and parameters", assignArea),
    section("Run", runError, runArea),
    resultArea,
  );
  redraw();
}

// -- clients and users ---------------------------------------------------------------------

async function clientsPage(main) {
  const list = h("div", { "aria-live": "polite" });
  const userClient = select("client", [], "", { any: null });

  async function load() {
    const clients = (await get(kam("/clients"))).clients;
    const users = await Promise.all(clients.map((c) => get(kam(`/clients/${encodeURIComponent(c.client_id)}/users`)).then((a) => a.users)));
    const current = userClient.value;
    replace(userClient, clients.map((c) => h("option", { value: c.client_id, selected: c.client_id === current }, `${c.name} (${c.client_id})`)));
    replace(
      list,
      clients.length
        ? clients.map((c, i) =>
            h(
              "article",
              { class: "card a-client", "aria-labelledby": `client-${i}` },
              h("h3", { id: `client-${i}` }, `${c.name} `, h("span", { class: "muted" }, `(${c.client_id})`)),
              h(
                "dl",
                { class: "facts" },
                h("dt", {}, "Tier"),
                h("dd", {}, c.tier),
                h("dt", {}, "Contact"),
                h("dd", {}, c.contact_email || "—"),
                h("dt", {}, "Budget"),
                h("dd", {}, c.monthly_budget === null ? "none" : `${money(c.monthly_budget, c.currency)} a month`),
                h("dt", {}, "Created"),
                h("dd", {}, when(c.created_at)),
              ),
              table(
                [
                  { title: "User", value: (u) => u.username },
                  { title: "Name", value: (u) => u.display_name || "—" },
                  { title: "Since", value: (u) => when(u.created_at) },
                ],
                users[i],
                { empty: "No user yet.", caption: `Users of ${c.name}` },
              ),
            ),
          )
        : h("p", { class: "empty muted" }, "No client yet: create the first one below."),
    );
  }

  function creationForm(title, fields, submitLabel, action) {
    const error = h("div", { "aria-live": "assertive" });
    const form = h("form", { class: "card", "aria-label": title }, h("h3", {}, title), fields, error, h("div", { class: "actions" }, h("button", { type: "submit", class: "btn btn-primary" }, submitLabel)));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      replace(error);
      const submit = form.querySelector("button[type=submit]");
      submit.disabled = true;
      try {
        await action(new FormData(form));
        form.reset();
        await load();
      } catch (problem) {
        replace(error, errorBox(problem));
      } finally {
        submit.disabled = false;
      }
    });
    return form;
  }

  const newClient = creationForm(
    "New client",
    [
      field("Client id", h("input", { name: "client_id", required: true, pattern: "[A-Za-z0-9_.\\-]{1,64}", autocomplete: "off" }), "Letters, digits, _ . - (its tenant name; not platform)"),
      field("Client name", h("input", { name: "name", required: true, maxlength: 200 })),
      field("Contact e-mail", h("input", { name: "contact_email", type: "email" })),
      field("Tier", select("tier", TIERS, "standard", { any: null })),
      field("Monthly budget", h("input", { name: "monthly_budget", type: "number", min: 0, step: "any" })),
      field("Currency", h("input", { name: "currency", value: "USD", pattern: "[A-Z]{3}", maxlength: 3, size: 4 })),
    ],
    "Create client",
    async (data) => {
      const budget = String(data.get("monthly_budget") || "");
      const created = await post(kam("/clients"), {
        client_id: String(data.get("client_id")).trim(),
        name: String(data.get("name")).trim(),
        contact_email: String(data.get("contact_email") || "").trim(),
        tier: String(data.get("tier")),
        monthly_budget: budget === "" ? null : Number(budget),
        currency: String(data.get("currency") || "USD").trim(),
      });
      notify(`Client ${created.client_id} created.`, "ok");
    },
  );
  const newUser = creationForm(
    "New user",
    [
      field("Of client", userClient),
      field("Login name", h("input", { name: "username", required: true, autocomplete: "off" }), "An e-mail address fits"),
      field("Display name", h("input", { name: "display_name" })),
      field("Initial password", h("input", { name: "password", type: "password", required: true, minlength: 12, autocomplete: "new-password" }), "At least 12 characters; give it to the user privately"),
    ],
    "Create user",
    async (data) => {
      const user = await post(kam(`/clients/${encodeURIComponent(String(data.get("client")))}/users`), {
        username: String(data.get("username")).trim(),
        password: String(data.get("password")),
        display_name: String(data.get("display_name") || "").trim(),
      });
      notify(`User ${user.username} created.`, "ok");
    },
  );
  replace(main, heading("Clients", "The AI factory's clients and their users"), list, h("div", { class: "grid a-forms" }, newClient, newUser));
  await load();
}

// -- the ledger ----------------------------------------------------------------------------

async function ledgerPage(main, params, page) {
  const visible = current(page);
  const [clients, templates] = await Promise.all([get(kam("/clients")), get(kam("/templates"))]);
  if (!visible()) return;
  const filters = { client_id: "", template: "", kind: "", from: "", to: "" };
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter the ledger" },
    field("Client", select("client_id", clients.clients.map((c) => [c.client_id, c.name]), "")),
    field("Template", select("template", templates.templates.map((t) => [String(t.id), t.title]), "")),
    field("Kind", select("kind", KINDS, "")),
    field("From", h("input", { name: "from", type: "date" })),
    field("To", h("input", { name: "to", type: "date" }), "Inclusive"),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "btn btn-primary" }, "Apply")),
  );
  const results = h("div", { "aria-live": "polite" });
  const more = h("div", { class: "actions" });
  let shown = [];
  let cursor = null;

  const entryColumns = [
    { title: "When", value: (e) => when(e.at) },
    { title: "Client", value: (e) => e.client_name },
    { title: "Template", value: (e) => e.template_name || "—" },
    { title: "Request", value: (e) => (e.request_id ? h("a", { href: `#/requests/${encodeURIComponent(e.request_id)}` }, e.request_id) : "—") },
    { title: "Kind", value: (e) => e.kind },
    { title: "Quantity", value: (e) => String(e.quantity), class: "num" },
    { title: "Amount", value: (e) => money(e.amount, e.currency), class: "num" },
  ];
  const totalColumns = (what) => [
    { title: what, value: (t) => t.name },
    { title: "Entries", value: (t) => String(t.entries), class: "num" },
    { title: "Amount", value: (t) => money(t.amount, t.currency), class: "num" },
  ];

  async function load(append = false) {
    try {
      const answer = await get(withQuery(kam("/costs"), { ...filters, limit: 100, cursor: append ? cursor : undefined }));
      shown = append ? [...shown, ...answer.entries] : answer.entries;
      cursor = answer.next_cursor;
      replace(
        results,
        h("p", { class: "a-total" }, "Total: ", h("strong", {}, currencyTotals(answer.by_currency)), h("span", { class: "muted" }, ` over ${answer.matching} entr${answer.matching === 1 ? "y" : "ies"}`)),
        h(
          "div",
          { class: "grid" },
          h("div", {}, answer.by_client.length ? barChart(answer.by_client.map((t) => ({ label: t.name, value: t.amount })), { title: "By client", format: (v) => money(v) }) : null, table(totalColumns("Client"), answer.by_client, { empty: "No cost.", caption: "Per client" })),
          h("div", {}, table(totalColumns("Template"), answer.by_template, { empty: "No cost.", caption: "Per template" })),
        ),
        table(entryColumns, shown, { empty: "No ledger entry matches these filters.", caption: "Entries, newest first" }),
      );
      replace(more, cursor ? button("Show more", () => load(true), { kind: "link", busy: "Loading…" }) : null);
    } catch (error) {
      replace(results, errorBox(error));
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const data = new FormData(form);
    for (const key of Object.keys(filters)) filters[key] = String(data.get(key) || "");
    load();
  });
  replace(main, heading("Cost ledger", "Every client's costs, as the ledger records them"), form, results, more);
  await load();
}

// -- dead letters --------------------------------------------------------------------------

async function deadLettersPage(main) {
  const consumer = h("input", { name: "consumer", pattern: "[A-Za-z0-9_\\-]{1,128}", placeholder: "every consumer" });
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter dead letters" },
    field("Consumer", consumer),
    h("div", { class: "actions" }, h("button", { type: "submit", class: "btn" }, "Show")),
  );
  const outcome = h("div", { "aria-live": "polite" });
  const results = h("div");

  function report(answer) {
    replace(
      outcome,
      h("p", { class: answer.problems.length ? "" : "a-ok" }, `Redrove ${answer.redriven} dead letter${answer.redriven === 1 ? "" : "s"}.`),
      answer.problems.length ? h("ul", { class: "a-problems" }, answer.problems.map((p) => h("li", {}, p))) : null,
    );
  }

  async function redrive(body) {
    try {
      report(await post(kam("/dead-letters/redrive"), body));
    } catch (error) {
      replace(outcome, errorBox(error));
    }
    await load();
  }

  function redriveButton(letter) {
    const element = button("Redrive", () => redrive({ seq: letter.seq }), { busy: "Redriving…" });
    element.setAttribute("aria-label", `Redrive dead letter ${letter.seq}`);
    return element;
  }

  async function load() {
    try {
      const answer = await get(withQuery(kam("/dead-letters"), { consumer: consumer.value.trim(), limit: 200 }));
      const letters = answer.dead_letters;
      replace(
        results,
        h("p", { class: "muted" }, `${answer.total} in NEXUS_DLQ${answer.more ? `; the first ${letters.length} shown` : ""}. KAM redrives as NATS identity ${answer.identity || "(not one of the platform's: the server decides)"}.`),
        letters.length
          ? h("div", { class: "actions" }, button(consumer.value.trim() ? `Redrive all of ${consumer.value.trim()}` : "Redrive all", () => redrive({ consumer: consumer.value.trim() || undefined }), { kind: "danger", busy: "Redriving…" }))
          : null,
        table(
          [
            { title: "Seq", value: (d) => String(d.seq), class: "num" },
            { title: "Consumer", value: (d) => d.consumer },
            { title: "Original subject", value: (d) => h("code", {}, d.original_subject || "?") },
            { title: "Deliveries", value: (d) => (d.deliveries === null ? "?" : String(d.deliveries)), class: "num" },
            { title: "Reason", value: (d) => [h("strong", {}, d.error), d.reason ? h("div", {}, d.reason) : null] },
            {
              title: "Action",
              value: (d) =>
                d.redrivable ? redriveButton(d) : h("small", { class: "muted" }, d.not_redrivable_because),
            },
          ],
          letters,
          { empty: "No dead letters: every consumer handled what it received.", caption: "Dead letters, oldest first" },
        ),
      );
    } catch (error) {
      replace(results, errorBox(error));
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load();
  });
  replace(main, heading("Dead letters", "Messages a consumer gave up on (stream NEXUS_DLQ), with the reason"), form, outcome, results);
  await load();
}

// -- health --------------------------------------------------------------------------------

async function healthPage(main, params, page) {
  const body = h("div", { "aria-live": "polite" });
  const stamp = h("p", { class: "muted" });
  let timer = null;
  let left = false;

  async function refresh() {
    try {
      const health = await get(kam("/console/health"));
      replace(
        body,
        h("p", { class: "a-total" }, "Platform: ", badge(health.status)),
        h(
          "dl",
          { class: "facts card" },
          h("dt", {}, "NATS (KAM's connection)"),
          h("dd", {}, badge(health.nats === "ok" ? "ok" : "error"), health.nats === "ok" ? "" : ` ${health.nats}`),
          h("dt", {}, "Log head"),
          h("dd", {}, health.log_head >= 0 ? `position ${health.log_head}` : "cannot be read"),
          h("dt", {}, "Relay lag"),
          h("dd", {}, health.relay_lag === null ? "not reported" : `${health.relay_lag} event${health.relay_lag === 1 ? "" : "s"} not yet published`),
          h("dt", {}, "Relay checkpoint"),
          h("dd", {}, health.relay_position === null ? "not reported" : `position ${health.relay_position}`),
        ),
        table(
          [
            { title: "Process", value: (s) => s.name },
            { title: "Readiness", value: (s) => badge(s.status) },
            { title: "Checks", value: (s) => h("ul", { class: "a-checks" }, Object.entries(s.checks).map(([k, v]) => h("li", {}, `${k}: ${v}`))) },
            { title: "Answered in", value: (s) => (s.name === "kam" ? "—" : `${s.millis} ms`), class: "num" },
          ],
          health.services,
          { caption: "Processes" },
        ),
      );
      stamp.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshed every ${HEALTH_SECONDS} s.`;
    } catch (error) {
      replace(body, errorBox(error));
      // Signed out (the shell shows the login page): nothing more to refresh.
      if (error instanceof ApiError && error.status === 401) left = true;
    }
    if (!left) timer = setTimeout(refresh, HEALTH_SECONDS * 1000);
  }

  page.onLeave(() => {
    left = true;
    clearTimeout(timer);
  });
  replace(main, heading("Platform health", "Each process's readiness, NATS, the log and the relay"), stamp, body);
  await refresh();
}

export const routes = [
  { path: "/", title: "Overview", roles: ["admin"], nav: "Overview", view: overview },
  { path: "/requests", title: "Requests", roles: ["admin"], nav: "Requests", view: requestsPage },
  { path: "/requests/:id", title: "Request", roles: ["admin"], view: requestPage },
  { path: "/clients", title: "Clients", roles: ["admin"], nav: "Clients", view: clientsPage },
  { path: "/ledger", title: "Cost ledger", roles: ["admin"], nav: "Ledger", view: ledgerPage },
  { path: "/dead-letters", title: "Dead letters", roles: ["admin"], nav: "Dead letters", view: deadLettersPage },
  { path: "/health", title: "Health", roles: ["admin"], nav: "Health", view: healthPage },
];
