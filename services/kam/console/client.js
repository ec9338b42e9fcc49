// The console's client pages (see app.js for the route contract): the dashboard of the client's
// requests with the form that creates one, a request's page (its history, each workflow step as
// it runs, its deliverables and costs), the costs over time and by template, and the client's
// API keys. Live updates come from KAM's notification stream (/api/notifications/stream) and,
// for a running request, from the workflow service's stream of its execution through the
// gateway (/svc/workflow/executions/{id}/stream); both are Server-Sent Events on the session
// cookie, closed when the page is left.

import { ApiError, del, get, kam, post, put, withQuery, workflow } from "./api.js";
import { REQUEST_EVENTS, REQUEST_STATUSES as STATUSES, follow } from "./live.js";
import { badge, barChart, button, errorBox, h, heading, money, notify, replace, table, when } from "./ui.js";

const URGENCIES = ["low", "normal", "high", "urgent"];
const STATUS_WORDS = {
  pending: "waiting for an operator to pick a template",
  template_assigned: "a template is assigned; it runs next",
  executing: "running",
  completed: "done",
  failed: "failed",
};
/** Deliverables up to this size are shown in the page; larger ones are only downloaded. */
const INLINE_BYTES = 1024 * 1024;
const PAGE_SIZE = 50;

const enc = encodeURIComponent;
let uid = 0;
/** A fresh id for a label's `for` or an `aria-labelledby`. */
const nextId = (prefix) => `${prefix}-${++uid}`;

/** Runs `fn` once after calls stop for `ms` (a burst of live events makes one reload). */
function debounce(fn, ms = 150) {
  let timer = null;
  const run = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  run.cancel = () => clearTimeout(timer);
  return run;
}

/** A small "Live" / "Reconnecting…" line for a followed stream. */
function liveLine(label = "Live updates") {
  const element = h("span", { class: "live-state", role: "status" }, `${label}: connecting…`);
  const words = { connecting: "connecting…", open: "on", reconnecting: "reconnecting…", closed: "off" };
  return { element, set: (state) => (element.textContent = `${label}: ${words[state] || state}`) };
}

/**
 * KAM's notification stream: `onRequest(request_id, data)` for each of the caller's events, and
 * `onOpen()` each time the stream (re)opens: what changed between the page's first read and the
 * subscription (or while it was reconnecting) is read again then, so no change is missed.
 */
function followRequests(page, onRequest, line, onOpen = () => {}) {
  const handle = follow(kam("/notifications/stream"), {
    types: REQUEST_EVENTS,
    onUpdate: (type, data) => {
      if (data && typeof data === "object" && data.request_id) onRequest(data.request_id, { ...data, type });
    },
    onState: (state) => {
      if (line) line.set(state);
      if (state === "open") onOpen();
    },
  });
  page.onLeave(() => handle.close());
  return handle;
}

function field(label, control, help) {
  const id = control.id || nextId("f");
  control.id = id;
  let helpElement = null;
  if (help) {
    helpElement = h("small", { class: "help", id: `${id}-help` }, help);
    control.setAttribute("aria-describedby", `${id}-help`);
  }
  return h("div", { class: "field" }, h("label", { for: id }, label), control, helpElement);
}

function select(name, options, value, empty) {
  return h(
    "select",
    { name },
    empty ? h("option", { value: "" }, empty) : null,
    options.map((o) => h("option", { value: o, selected: o === value }, o.replace(/_/g, " "))),
  );
}

function statusBadge(status) {
  const element = badge(status);
  element.title = STATUS_WORDS[status] || status;
  return element;
}

function bytes(size) {
  const n = Number(size || 0);
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

// -- the dashboard -----------------------------------------------------------------------------

/** The "New request" form; `onCreated(request)` after the platform accepted it. */
function newRequestForm(categories, onCreated) {
  const title = h("input", { name: "title", required: true, maxlength: 200, autocomplete: "off" });
  const description = h("textarea", { name: "description", rows: 4, maxlength: 20000 });
  const urgency = select("urgency", URGENCIES, "normal");
  const listId = nextId("categories");
  const category = h("input", { name: "category", maxlength: 64, list: listId, value: "general" });
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Create request");
  const titleId = nextId("new-request");
  const form = h(
    "form",
    { class: "card c-new-request", "aria-labelledby": titleId },
    h("h2", { id: titleId }, "New request"),
    field("Title", title, "What you need, in a line."),
    field("Description", description, "Everything that helps: scope, audience, sources, format."),
    h(
      "div",
      { class: "c-row" },
      field("Urgency", urgency),
      field("Category", category, "For example research, writing, education."),
      h("datalist", { id: listId }, categories.map((c) => h("option", { value: c }))),
    ),
    error,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    if (!title.value.trim()) {
      error.textContent = "Give the request a title.";
      error.hidden = false;
      title.focus();
      return;
    }
    submit.disabled = true;
    submit.textContent = "Creating…";
    try {
      const created = await post(kam("/requests"), {
        title: title.value.trim(),
        description: description.value,
        urgency: urgency.value,
        category: category.value.trim() || "general",
      });
      form.reset();
      category.value = "general";
      await onCreated(created);
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
      submit.textContent = "Create request";
    }
  });
  return form;
}

function requestRows(requests) {
  return table(
    [
      {
        title: "Request",
        value: (r) => [
          h("a", { href: `#/requests/${enc(r.request_id)}` }, r.title),
          h("small", { class: "muted c-request-meta" }, `${r.urgency} urgency · ${r.category}`),
        ],
      },
      { title: "Status", value: (r) => statusBadge(r.status) },
      { title: "Template", value: (r) => (r.template ? r.template.template_name : h("span", { class: "muted" }, "not yet")) },
      { title: "Updated", value: (r) => when(r.updated_at) },
    ],
    requests,
    { empty: "No requests here yet. Ask for work with the form above.", caption: "Your requests, newest first" },
  );
}

async function dashboard(main, params, page) {
  const user = page.session.user;
  const templates = await get(kam("/templates")).catch(() => ({ templates: [] }));
  const categories = [...new Set((templates.templates || []).map((t) => t.category).filter(Boolean))].sort();
  const filters = { status: "", q: "" };
  let shown = PAGE_SIZE;
  let next = null;
  const line = liveLine();
  const listArea = h("div", { class: "c-request-list", "aria-live": "polite", "aria-busy": "true" });
  const more = button("Show more", async () => {
    shown = Math.min(shown + PAGE_SIZE, 500);
    await load();
  }, { kind: "secondary", busy: "Loading…" });
  more.hidden = true;

  async function load() {
    listArea.setAttribute("aria-busy", "true");
    try {
      const answer = await get(withQuery(kam("/requests"), { ...filters, limit: shown }));
      next = answer.next_cursor;
      replace(listArea, requestRows(answer.requests));
      more.hidden = !next || shown >= 500;
    } catch (failure) {
      if (failure instanceof ApiError && failure.status === 401) throw failure;
      replace(listArea, errorBox(failure));
    } finally {
      listArea.setAttribute("aria-busy", "false");
    }
  }
  const reload = debounce(() => load().catch(() => {}));
  page.onLeave(reload.cancel);

  const form = newRequestForm(categories, async (created) => {
    notify(`Request “${created.title}” created.`, "ok");
    filters.status = "";
    statusFilter.value = "";
    await load();
  });

  const statusFilter = select("status", STATUSES, "", "All statuses");
  const search = h("input", { type: "search", name: "q", placeholder: "Words in the title or description" });
  const filterForm = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter requests" },
    field("Status", statusFilter),
    field("Search", search),
    h("button", { type: "submit", class: "btn" }, "Filter"),
  );
  filterForm.addEventListener("submit", (event) => {
    event.preventDefault();
    filters.q = search.value.trim();
    load();
  });
  statusFilter.addEventListener("change", () => {
    filters.status = statusFilter.value;
    load();
  });

  const listTitle = nextId("requests");
  replace(
    main,
    heading("Dashboard", `${user.display_name || user.username} · ${user.client_id}`),
    h(
      "div",
      { class: "c-client-dashboard" },
      form,
      h(
        "section",
        { class: "c-requests", "aria-labelledby": listTitle },
        h("div", { class: "c-section-head" }, h("h2", { id: listTitle }, "Requests"), line.element),
        filterForm,
        listArea,
        h("div", { class: "actions" }, more),
      ),
    ),
  );
  await load();
  // Any event of one of the client's requests (a new one, a status, a deliverable) reloads the list.
  followRequests(page, () => reload(), line, () => reload());
}

// -- a request ---------------------------------------------------------------------------------

/** The request's progress: each step of its workflow as the execution's stream tells it. */
function progressSection(page) {
  const titleId = nextId("progress");
  const line = liveLine("Progress");
  line.element.hidden = true;
  const summary = h("p", { class: "muted" }, "Not started yet: an operator assigns a template and runs it.");
  const steps = h("ol", { class: "c-steps", "aria-label": "Workflow steps" });
  const element = h(
    "section",
    { class: "card c-progress", "aria-labelledby": titleId },
    h("div", { class: "c-section-head" }, h("h2", { id: titleId }, "Progress"), line.element),
    summary,
    steps,
  );
  let current = null;
  let handle = null;
  let definition = [];

  function close() {
    if (handle) handle.close();
    handle = null;
  }
  page.onLeave(close);

  function draw(state) {
    const status = String(state.status || "").toLowerCase();
    const names = Object.fromEntries(definition.map((d) => [d.id, d.name || d.id]));
    replace(
      summary,
      "Execution ",
      h("code", {}, state.id || current),
      ": ",
      badge(status),
      state.current_step && status === "running" ? ` now at “${names[state.current_step] || state.current_step}”` : "",
      state.error ? ` — ${state.error}` : "",
    );
    const seen = state.steps || {};
    const order = [...definition.map((d) => d.id), ...Object.keys(seen).filter((id) => !definition.some((d) => d.id === id))];
    replace(
      steps,
      order.map((id) => {
        const step = seen[id] || { status: "pending" };
        const details = [];
        if (step.attempts > 1) details.push(`${step.attempts} attempts`);
        if (step.duration_ms !== undefined) details.push(`${Math.round(step.duration_ms)} ms`);
        if (step.finished_at) details.push(`finished ${when(step.finished_at)}`);
        else if (step.started_at) details.push(`started ${when(step.started_at)}`);
        if (step.retry_at) details.push(`retrying at ${when(step.retry_at)}`);
        return h(
          "li",
          { class: `c-step c-step-${String(step.status).replace(/[^a-z_]/gi, "")}`, dataset: { step: id } },
          h("span", { class: "c-step-name" }, names[id] || id),
          " ",
          badge(step.status),
          details.length ? h("span", { class: "muted c-step-details" }, ` ${details.join(" · ")}`) : null,
          step.error ? h("p", { class: "error" }, step.error) : null,
        );
      }),
    );
  }

  async function watch(executionId) {
    if (!executionId || executionId === current) return;
    close();
    current = executionId;
    let state;
    try {
      state = await get(workflow(`/executions/${enc(executionId)}`));
    } catch (failure) {
      replace(summary, errorBox(failure));
      return;
    }
    if (current !== executionId) return;
    try {
      const found = await get(workflow(`/workflows/${enc(state.workflow_id)}`), { quiet: true });
      definition = (found.steps || []).map((s) => ({ id: s.id, name: s.name }));
    } catch {
      definition = [];
    }
    draw(state);
    if (["COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"].includes(state.status)) return;
    line.element.hidden = false;
    handle = follow(workflow(`/executions/${enc(executionId)}/stream`), {
      types: ["state", "final"],
      onUpdate: (type, data) => {
        if (!data || typeof data !== "object" || current !== executionId) return;
        draw(data);
        // The stream ends after the final state: closing it stops the browser's reconnects.
        if (type === "final") {
          close();
          line.set("closed");
          line.element.hidden = true;
        }
      },
      onState: (s) => line.set(s),
    });
  }

  return { element, watch };
}

function deliverableItem(item) {
  const viewer = h("div", { class: "c-deliverable-view", hidden: true });
  const href = kam(`/deliverables/${enc(item.id)}`);
  const name = (item.storage_ref || item.id).split("/").pop();
  const textual = /^(text\/|application\/(json|x-ndjson|xml|yaml|x-yaml|markdown))|\+json|\+xml/.test(item.content_type);
  const viewable = textual && item.size_bytes <= INLINE_BYTES;
  let shown = false;
  const view = viewable
    ? button("View", async () => {
        shown = !shown;
        viewer.hidden = !shown;
        view.setAttribute("aria-expanded", String(shown));
        if (!shown || viewer.childElementCount) return;
        const response = await fetch(href, { credentials: "same-origin" });
        if (!response.ok) {
          replace(viewer, errorBox(new ApiError(response.status, (await response.text()).slice(0, 300))));
          return;
        }
        let text = await response.text();
        if (/json/.test(item.content_type)) {
          try {
            text = JSON.stringify(JSON.parse(text), null, 2);
          } catch {
            // shown as it is
          }
        }
        replace(viewer, h("pre", { class: "mono c-deliverable-text", tabindex: "0", "aria-label": `Content of ${name}` }, text));
      }, { kind: "secondary", busy: "Loading…" })
    : h("span", { class: "muted" }, textual ? "Too large to show here" : "Not text: download it");
  if (viewable) {
    // Its state is in aria-expanded (the label stays); its name says which deliverable it shows.
    view.setAttribute("aria-expanded", "false");
    view.setAttribute("aria-label", `View ${name}`);
  }
  const meta = item.metadata || {};
  const what = meta.source === "execution_output" ? "The run's result" : meta.path ? `A file the result names (${meta.path})` : "Deliverable";
  return h(
    "li",
    { class: "c-deliverable" },
    h(
      "div",
      { class: "c-deliverable-head" },
      h("strong", {}, what),
      h("span", { class: "muted" }, ` · ${item.type || "deliverable"}`),
      h("span", { class: "muted" }, ` ${item.content_type} · ${bytes(item.size_bytes)} · ${when(item.created_at)}`),
      h("div", { class: "actions" }, view, h("a", { class: "btn btn-link", href, download: name }, `Download ${name}`)),
    ),
    viewer,
  );
}

async function requestPage(main, params, page) {
  const id = params.id;
  let item = await get(kam(`/requests/${enc(id)}`));
  const progress = progressSection(page);
  const line = liveLine();
  const head = h("div");
  const facts = h("dl", { class: "facts" });
  const history = h("ol", { class: "timeline", "aria-label": "Status history" });
  const deliverables = h("div", { "aria-live": "polite" });
  const costs = h("div");
  const titleIds = { about: nextId("about"), deliverables: nextId("deliverables"), costs: nextId("costs"), history: nextId("history") };

  // The client edits its own fields while the request is pending (If-Match: a change someone
  // else made meanwhile is not overwritten; the page says so and shows the request as it is).
  const editor = h("div", { class: "c-editor" });
  let editing = false;
  function drawEditor() {
    if (item.status !== "pending") {
      if (editing) notify("The request is no longer pending: it cannot be edited now.", "error");
      editing = false;
      replace(editor);
      return;
    }
    if (editing) return;
    replace(editor, h("div", { class: "actions" }, button("Edit request", async () => openEditor(), { kind: "secondary" })));
  }
  function openEditor() {
    editing = true;
    const title = h("input", { name: "title", required: true, maxlength: 200, value: item.title });
    const description = h("textarea", { name: "description", rows: 4, maxlength: 20000 });
    description.value = item.description;
    const urgency = select("urgency", URGENCIES, item.urgency);
    const category = h("input", { name: "category", maxlength: 64, value: item.category });
    const error = h("p", { class: "error", role: "alert", hidden: true });
    const formTitle = nextId("edit");
    const form = h(
      "form",
      { class: "c-edit", "aria-labelledby": formTitle },
      h("h3", { id: formTitle }, "Edit request"),
      field("Title", title),
      field("Description", description),
      h("div", { class: "c-row" }, field("Urgency", urgency), field("Category", category)),
      error,
      h(
        "div",
        { class: "actions" },
        h("button", { type: "submit", class: "btn btn-primary" }, "Save changes"),
        button("Cancel", async () => {
          editing = false;
          drawEditor();
        }, { kind: "link" }),
      ),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.hidden = true;
      const changes = { title: title.value.trim(), description: description.value, urgency: urgency.value, category: category.value.trim() };
      if (!changes.title) {
        error.textContent = "The title must not be empty.";
        error.hidden = false;
        return;
      }
      try {
        item = await put(kam(`/requests/${enc(id)}`), changes, { headers: { "If-Match": `"${item.version}"` } });
        editing = false;
        notify("Changes saved.", "ok");
        drawHead();
      } catch (failure) {
        error.textContent = failure.message;
        error.hidden = false;
        if (failure instanceof ApiError && (failure.status === 409 || failure.status === 412)) refresh();
      }
    });
    replace(editor, form);
    title.focus();
  }

  function drawHead() {
    document.title = `${item.title} · Nexus console`;
    drawEditor();
    replace(
      head,
      h(
        "div",
        { class: "heading" },
        h("h1", {}, item.title),
        h("span", { class: "c-request-status", "aria-label": `Status: ${item.status}` }, statusBadge(item.status)),
        line.element,
      ),
      h("p", { class: "muted" }, h("a", { href: "#/" }, "← All requests"), ` · ${STATUS_WORDS[item.status] || item.status}`),
      item.error ? h("p", { class: "error", role: "alert" }, item.error) : null,
    );
    const template = item.template;
    replace(
      facts,
      h("dt", {}, "Request"),
      h("dd", {}, h("code", {}, item.request_id)),
      h("dt", {}, "Urgency"),
      h("dd", {}, item.urgency),
      h("dt", {}, "Category"),
      h("dd", {}, item.category || "—"),
      h("dt", {}, "Template"),
      h("dd", {}, template ? `${template.template_name}${template.tier ? ` (${template.tier})` : ""}` : "not assigned yet"),
      template && Object.keys(template.parameters || {}).length
        ? [h("dt", {}, "Parameters"), h("dd", {}, Object.entries(template.parameters).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", "))]
        : null,
      h("dt", {}, "Runs"),
      h("dd", {}, String(item.attempts)),
      h("dt", {}, "Created"),
      h("dd", {}, when(item.created_at)),
      h("dt", {}, "Updated"),
      h("dd", {}, when(item.updated_at)),
      h("dt", {}, "Description"),
      h("dd", { class: "c-description" }, item.description || h("span", { class: "muted" }, "none")),
    );
    replace(
      history,
      (item.history || []).map((step) => h("li", {}, statusBadge(step.status), " ", h("time", { datetime: step.at }, when(step.at)))),
    );
    const m = item.metrics || {};
    replace(
      costs,
      m.estimated_cost === undefined
        ? h("p", { class: "muted" }, "No cost yet: a request costs what its run uses, once it has run.")
        : h(
            "dl",
            { class: "facts" },
            h("dt", {}, "Cost of the last run"),
            h("dd", { class: "cost" }, money(m.estimated_cost, m.currency || "USD")),
            m.tokens_used !== undefined ? [h("dt", {}, "Tokens"), h("dd", {}, String(m.tokens_used))] : null,
            m.stages_completed !== undefined ? [h("dt", {}, "Steps completed"), h("dd", {}, String(m.stages_completed))] : null,
            m.total_time_ms !== undefined ? [h("dt", {}, "Run time"), h("dd", {}, `${(m.total_time_ms / 1000).toFixed(1)} s`)] : null,
          ),
      h("p", {}, h("a", { href: "#/costs" }, "All your costs")),
    );
  }

  async function drawDeliverables() {
    if (!item.deliverable_ids.length) {
      replace(deliverables, h("p", { class: "muted" }, item.status === "completed" ? "This run delivered nothing." : "Deliverables appear here when the request completes."));
      return;
    }
    try {
      const listed = await get(kam(`/requests/${enc(id)}/deliverables`));
      replace(deliverables, h("ul", { class: "c-deliverables" }, listed.deliverables.map(deliverableItem)));
    } catch (failure) {
      replace(deliverables, errorBox(failure));
    }
  }

  drawHead();
  replace(
    main,
    head,
    h(
      "div",
      { class: "c-request-grid" },
      progress.element,
      h("section", { class: "card", "aria-labelledby": titleIds.deliverables }, h("h2", { id: titleIds.deliverables }, "Deliverables"), deliverables),
      h("section", { class: "card", "aria-labelledby": titleIds.about }, h("h2", { id: titleIds.about }, "About"), facts, editor),
      h("section", { class: "card", "aria-labelledby": titleIds.costs }, h("h2", { id: titleIds.costs }, "Costs"), costs),
      h("section", { class: "card", "aria-labelledby": titleIds.history }, h("h2", { id: titleIds.history }, "History"), history),
    ),
  );
  await drawDeliverables();
  if (item.execution_id) progress.watch(item.execution_id);

  let shownDeliverables = item.deliverable_ids.join(",");
  const refresh = debounce(async () => {
    try {
      item = await get(kam(`/requests/${enc(id)}`));
    } catch (failure) {
      notify(`Could not reload the request: ${failure.message}`, "error");
      return;
    }
    drawHead();
    if (item.deliverable_ids.join(",") !== shownDeliverables) {
      shownDeliverables = item.deliverable_ids.join(",");
      await drawDeliverables();
    }
    if (item.execution_id) progress.watch(item.execution_id);
  });
  page.onLeave(refresh.cancel);
  followRequests(
    page,
    (requestId, data) => {
      if (requestId !== id) return;
      // A new run: follow its execution at once (the request is reloaded too).
      if (data.type === "nexus.kam.request.executing" && data.execution_id) progress.watch(data.execution_id);
      refresh();
    },
    line,
    () => refresh(),
  );
}

// -- costs -------------------------------------------------------------------------------------

/**
 * Every day from the first to the last group's (missing days cost nothing), at least the two
 * weeks up to the last one, at most a year (beyond it, only the days with costs).
 */
function daily(groups) {
  const day = 86_400_000;
  const known = groups.filter((g) => /^\d{4}-\d{2}-\d{2}$/.test(g.key));
  if (!known.length) return groups.map((g) => ({ label: g.key, value: g.amount }));
  const amounts = Object.fromEntries(known.map((g) => [g.key, g.amount]));
  const last = new Date(`${known.at(-1).key}T00:00:00Z`);
  const first = new Date(Math.min(new Date(`${known[0].key}T00:00:00Z`).getTime(), last.getTime() - 13 * day));
  const days = Math.round((last - first) / day) + 1;
  if (days > 366) return known.map((g) => ({ label: g.key, value: g.amount }));
  const out = [];
  for (let i = 0; i < days; i++) {
    const key = new Date(first.getTime() + i * day).toISOString().slice(0, 10);
    out.push({ label: key, value: amounts[key] || 0 });
  }
  return out;
}

/** A column chart of amounts over time (SVG; its label reads the values out). */
function timeChart(points, { title, format }) {
  const svgNS = "http://www.w3.org/2000/svg";
  const width = 640;
  const height = 220;
  const left = 8;
  const bottom = 28;
  const top = 22;
  const max = Math.max(...points.map((p) => p.value), 0) || 1;
  const slot = (width - left * 2) / Math.max(points.length, 1);
  const svg = document.createElementNS(svgNS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `${title}: ${points.filter((p) => p.value).map((p) => `${p.label} ${format(p.value)}`).join(", ") || "nothing yet"}`);
  svg.classList.add("chart", "c-time-chart");
  const add = (tag, attributes, text) => {
    const node = document.createElementNS(svgNS, tag);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    svg.append(node);
    return node;
  };
  add("line", { x1: left, x2: width - left, y1: height - bottom, y2: height - bottom, class: "c-axis" });
  add("text", { x: left, y: 14, class: "c-chart-max" }, `max ${format(max)}`);
  const every = Math.max(1, Math.ceil(points.length / 8));
  points.forEach((p, i) => {
    const barHeight = ((height - bottom - top) * p.value) / max;
    const x = left + i * slot + slot * 0.15;
    const bar = add("rect", { x, y: height - bottom - barHeight, width: Math.max(slot * 0.7, 1), height: Math.max(barHeight, p.value ? 1 : 0) });
    const tip = document.createElementNS(svgNS, "title");
    tip.textContent = `${p.label}: ${format(p.value)}`;
    bar.append(tip);
    if (i % every === 0 || i === points.length - 1) {
      add("text", { x: left + i * slot + slot / 2, y: height - 8, "text-anchor": "middle", class: "c-chart-label" }, p.label.slice(5) || p.label);
    }
  });
  return h("figure", { class: "chart-figure" }, h("figcaption", {}, title), svg);
}

async function costsPage(main, params, page) {
  const clientId = page.session.user.client_id;
  const from = h("input", { type: "date", name: "from" });
  const to = h("input", { type: "date", name: "to" });
  const form = h(
    "form",
    { class: "filters", "aria-label": "Period" },
    field("From", from),
    field("To (inclusive)", to),
    h("button", { type: "submit", class: "btn" }, "Show"),
  );
  const body = h("div", { "aria-live": "polite" });
  replace(main, heading("Costs", `What ${clientId}'s requests cost, from its ledger`), form, body);

  async function load() {
    const query = { from: from.value, to: to.value };
    let byDay;
    let byTemplate;
    try {
      [byDay, byTemplate] = await Promise.all([
        get(withQuery(kam(`/clients/${enc(clientId)}/costs`), { ...query, group: "day" })),
        get(withQuery(kam(`/clients/${enc(clientId)}/costs`), { ...query, group: "template" })),
      ]);
    } catch (failure) {
      if (failure instanceof ApiError && failure.status !== 400) throw failure;
      replace(body, errorBox(failure));
      return;
    }
    const currency = byDay.currency;
    const format = (v) => money(v, currency);
    const others = Object.entries(byDay.other_currencies || {});
    const summary = h(
      "div",
      { class: "grid c-cost-summary" },
      h("div", { class: "card" }, h("p", { class: "muted" }, "Total"), h("p", { class: "c-big", "data-testid": "cost-total" }, format(byDay.total))),
      h("div", { class: "card" }, h("p", { class: "muted" }, "Ledger entries"), h("p", { class: "c-big" }, String(byDay.entries))),
      h("div", { class: "card" }, h("p", { class: "muted" }, "Templates used"), h("p", { class: "c-big" }, String(byTemplate.groups.length))),
    );
    if (!byDay.entries) {
      replace(body, summary, h("p", { class: "empty muted" }, "No costs in this period: a request costs what its run uses, once it has run."));
      return;
    }
    replace(
      body,
      summary,
      others.length ? h("p", { class: "muted" }, `Also, in other currencies: ${others.map(([c, a]) => money(a, c)).join(", ")}`) : null,
      h(
        "div",
        { class: "c-charts" },
        h("section", { class: "card" }, timeChart(daily(byDay.groups), { title: "Costs per day", format })),
        h("section", { class: "card" }, barChart(byTemplate.groups.map((g) => ({ label: g.key, value: g.amount })), { title: "Costs by template", format })),
      ),
      h("h2", {}, "By template"),
      table(
        [
          { title: "Template", value: (g) => g.key },
          { title: "Entries", value: (g) => String(g.entries), class: "num" },
          { title: "Amount", value: (g) => format(g.amount), class: "num" },
        ],
        byTemplate.groups,
        { caption: "Costs by template" },
      ),
      h("h2", {}, "By day"),
      table(
        [
          { title: "Day (UTC)", value: (g) => g.key },
          { title: "Entries", value: (g) => String(g.entries), class: "num" },
          { title: "Amount", value: (g) => format(g.amount), class: "num" },
        ],
        [...byDay.groups].reverse(),
        { caption: "Costs per day, latest first" },
      ),
    );
  }
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    load().catch((failure) => replace(body, errorBox(failure)));
  });
  await load();
}

// -- API keys ----------------------------------------------------------------------------------

async function keysPage(main, params, page) {
  const clientId = page.session.user.client_id;
  const scopes = (page.session.kamContext && page.session.kamContext.permissions) || [];
  const path = kam(`/clients/${enc(clientId)}/keys`);
  const me = `user:${page.session.user.id}`;
  const listArea = h("div", { "aria-live": "polite" });
  const revealed = h("div", { class: "c-new-key-area" });

  async function load() {
    const answer = await get(path);
    const keys = [...answer.keys].reverse();
    replace(
      listArea,
      table(
        [
          { title: "Name", value: (k) => k.name || h("span", { class: "muted" }, "unnamed") },
          { title: "Key id", value: (k) => h("code", {}, k.key_id) },
          { title: "Scopes", value: (k) => (k.scopes.length ? k.scopes.join(", ") : "every client scope") },
          { title: "Issued", value: (k) => [when(k.issued_at), k.issued_by ? h("span", { class: "muted" }, ` by ${k.issued_by === me ? "you" : k.issued_by}`) : null] },
          { title: "Status", value: (k) => (k.revoked ? [badge("revoked"), h("span", { class: "muted" }, ` ${when(k.revoked_at)}`)] : badge("active")) },
          { title: "Actions", value: (k) => (k.revoked ? "" : revokeControl(k)) },
        ],
        keys,
        { empty: "No API keys yet. Create one for each program that calls Nexus.", caption: `API keys of ${clientId}, newest first` },
      ),
    );
  }

  function revokeControl(key) {
    const label = key.name || key.key_id;
    const area = h("div", { class: "actions c-revoke" });
    const ask = button("Revoke", async () => {
      const yes = button(`Revoke ${label} now`, async () => {
        try {
          await del(`${path}/${enc(key.key_id)}`);
          notify(`Key ${label} is revoked: every service refuses it from now on.`, "ok");
          await load();
        } catch (failure) {
          notify(`Revoke: ${failure.message}`, "error");
        }
      }, { kind: "danger", busy: "Revoking…" });
      const no = button("Keep it", async () => {
        replace(area, ask);
        ask.focus();
      }, { kind: "link" });
      replace(area, h("span", {}, "Programs using it will stop working. "), yes, no);
      yes.focus();
    }, { kind: "danger" });
    replace(area, ask);
    return area;
  }

  function reveal(issued) {
    const secret = h("code", { class: "secret", "aria-label": "The new key's secret" }, issued.secret);
    const titleId = nextId("new-key");
    const copy = button("Copy", async () => {
      try {
        await navigator.clipboard.writeText(issued.secret);
        notify("Copied.", "ok");
      } catch {
        const range = document.createRange();
        range.selectNodeContents(secret);
        getSelection().removeAllRanges();
        getSelection().addRange(range);
        notify("Select and copy the secret (the clipboard is not available here).", "error");
      }
    }, { kind: "secondary" });
    const done = button("I have stored it", async () => replace(revealed), { kind: "link" });
    replace(
      revealed,
      h(
        "section",
        { class: "card c-new-key", "aria-labelledby": titleId, role: "region" },
        h("h2", { id: titleId }, `New key ${issued.name || issued.key_id}`),
        h("p", { class: "c-warning" }, "Copy this secret now: it will not be shown again. Nexus keeps only its hash."),
        secret,
        h("p", { class: "muted" }, "Send it as the X-API-Key header. Scopes: ", issued.scopes.join(", ")),
        h("div", { class: "actions" }, copy, done),
      ),
    );
    secret.scrollIntoView({ block: "nearest" });
  }

  const name = h("input", { name: "name", maxlength: 100, autocomplete: "off", placeholder: "nightly export" });
  const boxes = scopes.map((scope) => h("input", { type: "checkbox", name: "scope", value: scope, checked: true, id: nextId("scope") }));
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", class: "btn btn-primary" }, "Create key");
  const formTitle = nextId("create-key");
  const form = h(
    "form",
    { class: "card c-client-form", "aria-labelledby": formTitle },
    h("h2", { id: formTitle }, "Create a key"),
    field("Name", name, "What the key is for, so you know which to revoke."),
    h(
      "fieldset",
      { class: "c-scopes" },
      h("legend", {}, "Scopes"),
      h("p", { class: "help c-scopes-help" }, "What programs holding the key may do. A key never creates or revokes keys."),
      boxes.map((box) => h("div", { class: "field-check" }, box, h("label", { for: box.id }, box.value))),
    ),
    error,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
    if (!chosen.length) {
      error.textContent = "Pick at least one scope.";
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    submit.textContent = "Creating…";
    try {
      const issued = await post(path, { name: name.value.trim(), scopes: chosen });
      form.reset();
      boxes.forEach((b) => (b.checked = true));
      reveal(issued);
      await load();
    } catch (failure) {
      error.textContent = failure.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
      submit.textContent = "Create key";
    }
  });

  const listTitle = nextId("keys");
  replace(
    main,
    heading("API keys", `Keys let ${clientId}'s programs call Nexus; each holds only the scopes you give it.`),
    revealed,
    form,
    h("section", { "aria-labelledby": listTitle }, h("h2", { id: listTitle }, "Keys"), listArea),
  );
  await load();
}

export const routes = [
  { path: "/", title: "Dashboard", roles: ["client"], nav: "Dashboard", view: dashboard },
  { path: "/requests/:id", title: "Request", roles: ["client"], view: requestPage },
  { path: "/costs", title: "Costs", roles: ["client"], nav: "Costs", view: costsPage },
  { path: "/keys", title: "API keys", roles: ["client"], nav: "API keys", view: keysPage },
];
