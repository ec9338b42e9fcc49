// The console's studio pages (seed 004): a client's blobs with their versions, the changes of each
// version drawn as a diff, where a blob comes from and what was derived from it, and the
// providers whose workflows blob events start (see app.js for the route contract).
//
// Every call goes to the studio through KAM's gateway as the signed-in user: the studio decides
// what the user may see (another client's blob is a 404, which the shell shows as "Not found").
// The studio has no stream of changes, so a page with provider runs still going asks again every
// few seconds until they are done (or the page is left).

import { ApiError, get, headersFor, post, put, del, studio, withQuery, workflow } from "./api.js";
import { badge, button, errorBox, h, heading, notify, replace, table, when } from "./ui.js";

const POLL_MS = 2500;
const POLL_LIMIT_MS = 10 * 60 * 1000;
const DONE = new Set(["completed", "failed", "cancelled", "compensated", "timed_out"]);
const LIST_PAGE = 25;
const RUN_PAGE = 10;

// -- small helpers ---------------------------------------------------------------------------

let counter = 0;
const uid = (name) => `studio-${name}-${++counter}`;

/** A labelled field: `control` gets the id the label points at; `help` is read with it. */
function field(text, control, help) {
  const id = control.id || uid("f");
  control.id = id;
  const helpNode = help ? h("small", { class: "help", id: `${id}-help` }, help) : null;
  if (helpNode) control.setAttribute("aria-describedby", helpNode.id);
  return h("div", { class: "field" }, h("label", { for: id }, text), control, helpNode);
}

const isJson = (type) => /^application\/(.+\+)?json\b|\+json\b/i.test(String(type || "").split(";")[0].trim());

function bytes(n) {
  if (n === undefined || n === null) return "";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

const blobHref = (id, version) => `#/studio/blobs/${encodeURIComponent(id)}${version ? `?version=${version}` : ""}`;
const blobPath = (id, tail = "") => studio(`/blobs/${encodeURIComponent(id)}${tail}`);

/** What a blob is called on a page: its metadata's title or type, else its id. */
function label(blob) {
  const meta = (blob && blob.metadata) || {};
  if (typeof meta.title === "string" && meta.title) return meta.title;
  if (typeof meta.type === "string" && meta.type) return `${meta.type} ${shortId(blob.id || blob.blob_id)}`;
  return shortId(blob.id || blob.blob_id);
}

function shortId(id) {
  const text = String(id || "");
  // Time-ordered ids share their first digits: the last ones tell blobs apart.
  return text.length > 14 ? `…${text.slice(-10)}` : text;
}

function blobLink(id, text, version) {
  return h("a", { href: blobHref(id, version), title: id }, text || shortId(id));
}

/** JSON as people read it (two-space indent). */
const pretty = (value) => JSON.stringify(value, null, 2);
/** A JSON value on one line, cut at `max` characters. */
function compact(value, max = 400) {
  const text = value === undefined ? "(nothing)" : JSON.stringify(value);
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

/** The studio's sub-navigation: blobs and providers. */
function subnav(current) {
  const item = (href, text, name) =>
    h("li", {}, h("a", { href, "aria-current": current === name ? "page" : undefined }, text));
  return h(
    "nav",
    { class: "studio-subnav", "aria-label": "Studio" },
    h("ul", {}, item("#/studio", "Blobs", "blobs"), item("#/studio/providers", "Providers", "providers")),
  );
}

/** The status of each execution (lower case), fetched from the workflow service; "" when unknown. */
async function statuses(executionIds, known = new Map()) {
  const wanted = [...new Set(executionIds)].filter((id) => !DONE.has(known.get(id)));
  const answers = await Promise.allSettled(wanted.map((id) => get(workflow(`/executions/${encodeURIComponent(id)}`), { quiet: true })));
  answers.forEach((answer, i) => {
    if (answer.status === "fulfilled") known.set(wanted[i], String(answer.value.status || "").toLowerCase());
  });
  return known;
}

/** A run is still going when its output is not applied and its execution has not ended. */
const running = (run, known) => !run.applied && !run.rolled_back && !DONE.has(known.get(run.execution_id));

/** What a run's output did, in words and links. */
function outcome(run, known) {
  const status = known.get(run.execution_id);
  if (run.rolled_back) return "rolled back";
  const parts = [];
  if (run.applied_version) parts.push(h("span", {}, "wrote ", blobLink(run.blob_id, `version ${run.applied_version}`, run.applied_version)));
  for (const child of run.derived_blobs || run.created_blobs || []) parts.push(h("span", {}, "derived ", blobLink(child)));
  if (!run.applied && !parts.length) return status && DONE.has(status) ? "output not applied" : "waiting for the output";
  if (!run.applied) parts.push(h("span", { class: "muted" }, "waiting for the output"));
  if (!parts.length) return "nothing changed";
  return h("span", { class: "studio-outcome" }, parts);
}

/** A timer asking again every `every` ms while `more()` says so, stopped when the page is left. */
function poller(page, tick, more, every = POLL_MS) {
  const started = Date.now();
  let timer = null;
  let stopped = false;
  const schedule = () => {
    if (stopped || !more() || Date.now() - started > POLL_LIMIT_MS) return;
    timer = setTimeout(async () => {
      try {
        await tick();
      } catch (error) {
        if (!(error instanceof ApiError)) console.error(error);
      }
      schedule();
    }, every);
  };
  page.onLeave(() => {
    stopped = true;
    clearTimeout(timer);
  });
  return { schedule };
}

// -- the blob list ---------------------------------------------------------------------------

async function blobsPage(main, params, page) {
  const admin = page.role === "admin";
  const filters = { field: "type", value: "", type: "", owner: "", include_deleted: false };
  const cursors = [""];
  const listing = h("section", { "aria-labelledby": "studio-blobs-title", "aria-live": "polite" });

  async function load() {
    const query = { limit: LIST_PAGE, cursor: cursors.at(-1), type: filters.type, include_deleted: filters.include_deleted ? "true" : "" };
    if (admin) query.owner = filters.owner;
    if (filters.field && filters.value) query[`metadata.${filters.field}`] = filters.value;
    let answer;
    try {
      answer = await get(withQuery(studio("/blobs"), query));
    } catch (error) {
      replace(listing, h("h2", { id: "studio-blobs-title" }, "Blobs"), errorBox(error));
      return;
    }
    const columns = [
      { title: "Blob", value: (b) => h("span", {}, blobLink(b.id, label(b)), b.deleted ? [" ", badge("deleted")] : null) },
      { title: "Content type", value: (b) => h("code", {}, b.content_type) },
      { title: "Version", class: "num", value: (b) => String(b.version) },
      { title: "Size", class: "num", value: (b) => bytes(b.size) },
      { title: "Derived from", value: (b) => (b.parent_id ? blobLink(b.parent_id) : "—") },
      { title: "Updated", value: (b) => when(b.updated_at) },
    ];
    if (admin) columns.splice(1, 0, { title: "Owner", value: (b) => b.owner });
    const pager = h("div", { class: "actions" });
    if (cursors.length > 1) {
      pager.append(button("Previous page", async () => { cursors.pop(); await load(); }, { kind: "secondary", busy: "Loading…" }));
    }
    if (answer.next_cursor) {
      pager.append(button("Next page", async () => { cursors.push(answer.next_cursor); await load(); }, { kind: "secondary", busy: "Loading…" }));
    }
    replace(
      listing,
      h("h2", { id: "studio-blobs-title" }, "Blobs"),
      table(columns, answer.blobs, {
        empty: cursors.length > 1 ? "No more blobs." : "No blobs yet: create the first one with the form below.",
        caption: cursors.length > 1 ? `Page ${cursors.length}` : undefined,
      }),
      pager,
    );
  }

  const fieldName = h("input", { name: "field", value: filters.field, autocomplete: "off", spellcheck: "false" });
  const fieldValue = h("input", { name: "value", autocomplete: "off" });
  const typeInput = h("input", { name: "type", placeholder: "application/json", autocomplete: "off", spellcheck: "false" });
  const ownerInput = admin ? h("input", { name: "owner", placeholder: "every client", autocomplete: "off" }) : null;
  const deletedInput = h("input", { type: "checkbox", name: "include_deleted", id: uid("deleted") });
  const filterForm = h(
    "form",
    { class: "filters", "aria-label": "Filter blobs" },
    field("Metadata field", fieldName),
    field("Metadata value", fieldValue),
    field("Media type", typeInput),
    ownerInput ? field("Owner (client)", ownerInput) : null,
    h("div", { class: "field field-check" }, deletedInput, h("label", { for: deletedInput.id }, "Include deleted")),
    h("button", { type: "submit", class: "btn" }, "Apply filters"),
  );
  filterForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    filters.field = fieldName.value.trim();
    filters.value = fieldValue.value;
    filters.type = typeInput.value.trim();
    filters.owner = ownerInput ? ownerInput.value.trim() : "";
    filters.include_deleted = deletedInput.checked;
    cursors.splice(1);
    await load();
  });

  replace(
    main,
    heading("Studio", admin ? "Every client's blobs, their versions and lineage" : "Your blobs, their versions and lineage"),
    subnav("blobs"),
    filterForm,
    listing,
    createForm(admin),
  );
  await load();
}

/** The form creating a blob: content, its type, metadata as JSON, an optional parent. */
function createForm(admin) {
  const type = h("input", { name: "content_type", value: "application/json", list: "studio-types", required: true, spellcheck: "false" });
  const types = h(
    "datalist",
    { id: "studio-types" },
    ["application/json", "text/markdown", "text/plain", "text/csv", "application/yaml"].map((t) => h("option", { value: t })),
  );
  const content = h("textarea", { name: "content", rows: 8, class: "mono", required: true, spellcheck: "false" });
  const metadata = h("textarea", { name: "metadata", rows: 4, class: "mono", spellcheck: "false" });
  metadata.value = "{}";
  const parent = h("input", { name: "parent_id", autocomplete: "off", spellcheck: "false" });
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const form = h(
    "form",
    { class: "card studio-form", "aria-labelledby": "studio-create-title" },
    h("h2", { id: "studio-create-title" }, "New blob"),
    field("Content type", type, "JSON types take a JSON value; text types (text/markdown…) take the text as it is."),
    types,
    field("Content", content),
    field("Metadata (JSON object)", metadata, 'Kept with the version; providers match on it, e.g. {"type": "chapter", "title": "Harbour"}.'),
    field("Derived from (blob id, optional)", parent),
    admin ? h("p", { class: "muted" }, "Blobs an administrator creates belong to the platform.") : null,
    error,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "btn btn-primary" }, "Create blob")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const submit = form.querySelector("button[type=submit]");
    let body;
    try {
      body = {
        content_type: type.value.trim(),
        content: readContent(type.value, content.value),
        metadata: readMetadata(metadata.value),
      };
      if (parent.value.trim()) body.parent_id = parent.value.trim();
    } catch (problem) {
      error.textContent = problem.message;
      error.hidden = false;
      return;
    }
    submit.disabled = true;
    try {
      const made = await post(studio("/blobs"), body);
      notify(`Blob created (version ${made.version}).`, "ok");
      location.hash = blobHref(made.id);
    } catch (problem) {
      error.textContent = problem.status ? `${problem.status}: ${problem.message}` : problem.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** The content a form's text stands for: a JSON value for a JSON type, else the text. */
function readContent(type, text) {
  if (isJson(type)) {
    try {
      return JSON.parse(text);
    } catch (problem) {
      throw new Error(`Content: not valid JSON for ${type.trim()} (${problem.message})`);
    }
  }
  return text;
}

function readMetadata(text) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (problem) {
    throw new Error(`Metadata: not valid JSON (${problem.message})`);
  }
  if (value === null || typeof value !== "object" || Array.isArray(value)) throw new Error("Metadata: must be a JSON object, {…}");
  return value;
}

// -- one blob ------------------------------------------------------------------------------------

/** The route's id and the ?version= of the address (`#/studio/blobs/<id>?version=2`). */
function blobAddress(raw) {
  const [id, query = ""] = String(raw).split("?");
  const version = Number(new URLSearchParams(query).get("version"));
  return { id, version: Number.isInteger(version) && version > 0 ? version : null };
}

async function blobPage(main, params, page) {
  const { id, version: asked } = blobAddress(params.id);
  const versions = await get(blobPath(id, "/versions")); // a 404 here is the "Not found" page
  const latest = versions.versions.length;
  const shown = asked || latest;
  if (shown > latest) throw new ApiError(404, `blob ${id} has no version ${shown}`);
  const blob = await get(withQuery(blobPath(id), { version: versions.deleted || asked ? shown : undefined }));
  document.title = `${label(blob)} · Studio · Nexus console`;

  const runsSection = h("section", { "aria-labelledby": "studio-runs-title" });
  const lineageSection = h("section", { "aria-labelledby": "studio-lineage-title" });
  const deltasSection = h("section", { "aria-labelledby": "studio-changes-title" });
  let lineageSeen = null;
  const refreshLineage = async () => {
    lineageSeen = await drawLineage(lineageSection, id, lineageSeen);
  };

  replace(
    main,
    h(
      "div",
      { class: "heading" },
      h("h1", {}, label(blob)),
      h("p", { class: "muted" }, `Version ${blob.version} of ${latest} · `, h("code", {}, blob.content_type)),
      versions.deleted ? badge("deleted") : null,
    ),
    subnav("blobs"),
    h("p", {}, h("a", { href: "#/studio" }, "← All blobs")),
    versions.deleted ? h("p", { class: "studio-tombstone", role: "note" }, "This blob is deleted: its versions stay readable, it cannot change any more.") : null,
    h("div", { class: "grid studio-blob" }, contentCard(blob), factsCard(blob, versions, shown, page)),
    !versions.deleted ? editCard(blob, shown === latest, latest) : null,
    versionsSection(id, versions, shown),
    deltasSection,
    lineageSection,
    runsSection,
    !versions.deleted ? deleteCard(id) : null,
  );

  await Promise.all([
    drawDeltas(deltasSection, id, versions),
    refreshLineage(),
    drawRuns(runsSection, id, page, refreshLineage),
  ]);
}

function contentCard(blob) {
  const download = h("a", { href: withQuery(blobPath(blob.id, "/content"), { version: blob.version }), download: `${blob.id}-v${blob.version}` }, "Download this version");
  let body;
  if (blob.content !== undefined && isJson(blob.content_type)) body = h("pre", { class: "studio-content", tabindex: "0" }, pretty(blob.content));
  else if (typeof blob.content === "string") body = h("pre", { class: "studio-content studio-text", tabindex: "0" }, blob.content);
  else body = h("p", { class: "muted" }, `Binary content (${bytes(blob.size)}): download it to read it.`);
  return h(
    "section",
    { class: "card", "aria-labelledby": "studio-content-title" },
    h("h2", { id: "studio-content-title" }, `Content of version ${blob.version}`),
    body,
    h("p", {}, download),
  );
}

/** Who wrote a version, in words: a key, a worker, or a workflow step acting for its execution. */
function writer(by) {
  const text = String(by || "");
  if (text.startsWith("execution:")) return h("span", {}, "a workflow step of execution ", h("code", {}, text.slice("execution:".length)));
  return text || "—";
}

function originText(origin) {
  if (!origin) return null;
  return [
    "provider ", h("strong", {}, origin.provider_id),
    ", workflow ", h("code", {}, origin.workflow_id),
    ", execution ", h("code", {}, origin.execution_id),
    origin.step ? [", step ", h("code", {}, origin.step)] : null,
  ];
}

function factsCard(blob, versions, shown, page) {
  const picker = h(
    "select",
    { id: uid("version") },
    versions.versions.map((v) => h("option", { value: String(v.version), selected: v.version === shown }, `Version ${v.version}${v.version === versions.versions.length ? " (latest)" : ""} · ${v.reason}`)),
  );
  picker.addEventListener("change", () => {
    const n = Number(picker.value);
    location.hash = blobHref(blob.id, n === versions.versions.length && !versions.deleted ? null : n);
  });
  const facts = [
    ["Id", h("code", {}, blob.id)],
    ["Owner", blob.owner],
    ["Content type", h("code", {}, blob.content_type)],
    ["Size", bytes(blob.size)],
    ["SHA-256", h("code", { class: "studio-hash" }, blob.sha256)],
    ["Created", when(blob.created_at)],
    ["Updated", when(blob.updated_at)],
    ["Derived from", blob.parent_id ? blobLink(blob.parent_id) : "—"],
    ["Written by", blob.origin ? originText(blob.origin) : writer(versions.versions[shown - 1]?.by)],
  ];
  const metadata = blob.metadata && Object.keys(blob.metadata).length ? h("pre", { class: "studio-meta" }, pretty(blob.metadata)) : h("p", { class: "muted" }, "No metadata.");
  return h(
    "section",
    { class: "card", "aria-labelledby": "studio-facts-title" },
    h("h2", { id: "studio-facts-title" }, "About this blob"),
    field("Show version", picker),
    h("dl", { class: "facts" }, facts.map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("h3", {}, "Metadata"),
    metadata,
    page.role === "admin" ? h("p", { class: "muted" }, "Administrators' reads of a client's blob are recorded in the audit log.") : null,
  );
}

/** The editor: a new version written with If-Match = the version it was read at. */
function editCard(blob, isLatest, latest) {
  const binary = blob.content === undefined;
  const base = { version: blob.version };
  const type = h("input", { name: "content_type", value: blob.content_type, spellcheck: "false", required: true });
  const content = h("textarea", { name: "content", rows: 12, class: "mono", spellcheck: "false" });
  content.value = isJson(blob.content_type) ? pretty(blob.content) : typeof blob.content === "string" ? blob.content : "";
  const metadata = h("textarea", { name: "metadata", rows: 4, class: "mono", spellcheck: "false" });
  metadata.value = pretty(blob.metadata || {});
  const file = h("input", { type: "file", name: "file" });
  const baseNote = h("p", { class: "muted" });
  const warning = isLatest
    ? null
    : h("p", { class: "studio-warning" }, `You are reading version ${blob.version}; the latest is ${latest}. Saving from here is refused unless you start from the latest.`);
  const status = h("div", { "aria-live": "polite" });
  const describeBase = () => {
    baseNote.textContent = `Saving writes a new version on top of version ${base.version}. If someone saved another version meanwhile, nothing is overwritten: you are told, and shown it.`;
  };
  describeBase();

  const form = h(
    "form",
    { class: "card studio-form", "aria-labelledby": "studio-edit-title" },
    h("h2", { id: "studio-edit-title" }, isLatest ? "Edit" : `Edit from version ${blob.version}`),
    warning,
    baseNote,
    binary
      ? field("Replace the content with a file", file, "The file's type becomes the content type.")
      : [field("Content type", type), field("Content", content), field("Metadata (JSON object)", metadata)],
    status,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "btn btn-primary" }, "Save new version")),
  );

  async function save() {
    const ifMatch = { "If-Match": `"${base.version}"` };
    if (binary) {
      const chosen = file.files[0];
      if (!chosen) throw new Error("Choose a file first.");
      const response = await fetch(blobPath(blob.id, "/content"), {
        method: "PUT",
        credentials: "same-origin",
        headers: headersFor("PUT", { ...ifMatch, "Content-Type": chosen.type || "application/octet-stream" }),
        body: chosen,
      });
      const text = await response.text();
      let parsed = {};
      try {
        parsed = JSON.parse(text);
      } catch {
        parsed = { message: text };
      }
      if (!response.ok) throw new ApiError(response.status, parsed.message || `HTTP ${response.status}`, parsed);
      return parsed;
    }
    const body = {
      content_type: type.value.trim(),
      content: readContent(type.value, content.value),
      metadata: readMetadata(metadata.value),
    };
    return put(blobPath(blob.id), body, { headers: ifMatch });
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    replace(status);
    try {
      const written = await save();
      notify(`Saved version ${written.version}.`, "ok");
      const target = blobHref(blob.id);
      if (location.hash === target) window.dispatchEvent(new HashChangeEvent("hashchange"));
      else location.hash = target;
    } catch (problem) {
      if (problem instanceof ApiError && problem.status === 409) {
        await showConflict(status, blob, base, problem, () => {
          describeBase();
          form.querySelector("h2").textContent = "Edit";
          if (warning) warning.remove();
        });
      } else {
        replace(status, problem instanceof ApiError ? errorBox(problem) : h("p", { class: "error", role: "alert" }, problem.message));
      }
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

/** A 409: say so, show the version that won, and offer to save the draft on top of it. */
async function showConflict(status, blob, base, problem, rebased) {
  let current = null;
  try {
    current = await get(blobPath(blob.id));
  } catch (error) {
    replace(status, errorBox(problem), errorBox(error));
    return;
  }
  const shownContent =
    current.content === undefined ? `(binary, ${bytes(current.size)})` : isJson(current.content_type) ? pretty(current.content) : String(current.content);
  replace(
    status,
    h(
      "div",
      { class: "studio-conflict", role: "alert" },
      h("h3", {}, `Conflict: the blob is at version ${current.version} now`),
      h("p", {}, `Your edit was made on version ${base.version}, but the blob is at version ${current.version}: someone saved it meanwhile, so yours was not saved (nothing was overwritten). The studio said: ${problem.message}`),
      h("p", {}, "The current version is below; your draft is still in the form. Compare, then save your draft on top of it, or open the current version."),
      h("h4", {}, `Current version ${current.version}`),
      h("pre", { class: "studio-content", tabindex: "0" }, shownContent),
      h(
        "div",
        { class: "actions" },
        button(`Save my draft on top of version ${current.version}`, async () => {
          base.version = current.version;
          rebased();
          replace(status, h("p", { class: "muted" }, `Your draft will be saved on top of version ${current.version}: press "Save new version".`));
        }, { kind: "secondary" }),
        h("a", { href: blobHref(blob.id), class: "btn btn-link" }, `Open version ${current.version}`),
      ),
    ),
  );
}

function versionsSection(id, versions, shown) {
  const columns = [
    { title: "Version", class: "num", value: (v) => (v.version === shown ? h("strong", { "aria-current": "true" }, `${v.version} (shown)`) : blobLink(id, `Version ${v.version}`, v.version)) },
    { title: "Written", value: (v) => when(v.at) },
    { title: "By", value: (v) => (v.origin ? h("span", {}, "provider ", h("strong", {}, v.origin.provider_id)) : writer(v.by)) },
    { title: "Why", value: (v) => v.reason },
    { title: "Change", value: (v) => (v.delta_kinds.length ? v.delta_kinds.join(", ") : v.version === 1 ? "created" : "no change") },
    { title: "Content type", value: (v) => h("code", {}, v.content_type) },
    { title: "Size", class: "num", value: (v) => bytes(v.size) },
  ];
  return h(
    "section",
    { "aria-labelledby": "studio-versions-title" },
    h("h2", { id: "studio-versions-title" }, "Versions"),
    table(columns, [...versions.versions].reverse(), { empty: "No versions." }),
  );
}

function deleteCard(id) {
  const confirmBox = h("div", { class: "studio-confirm", hidden: true, role: "group", "aria-label": "Confirm deletion" });
  const ask = button("Delete blob…", async () => {
    confirmBox.hidden = false;
    confirmBox.querySelector("button").focus();
  }, { kind: "danger" });
  replace(
    confirmBox,
    h("p", {}, "Delete this blob? It cannot change afterwards; its versions stay readable to you."),
    h(
      "div",
      { class: "actions" },
      button("Delete", async () => {
        try {
          await del(blobPath(id));
          notify("Blob deleted; its versions stay readable.", "ok");
          window.dispatchEvent(new HashChangeEvent("hashchange"));
        } catch (problem) {
          notify(`Delete: ${problem.message}`, "error");
        }
      }, { kind: "danger", busy: "Deleting…" }),
      button("Cancel", async () => {
        confirmBox.hidden = true;
        ask.focus();
      }, { kind: "secondary" }),
    ),
  );
  return h(
    "section",
    { class: "card studio-danger", "aria-labelledby": "studio-delete-title" },
    h("h2", { id: "studio-delete-title" }, "Delete"),
    h("p", { class: "muted" }, "Deleting leaves a tombstone: the blob stops changing and leaves listings, its history stays."),
    ask,
    confirmBox,
  );
}

// -- deltas drawn as diffs ------------------------------------------------------------------

async function drawDeltas(section, id, versions) {
  const title = h("h2", { id: "studio-changes-title" }, "Changes");
  if (versions.versions.length < 2) {
    replace(section, title, h("p", { class: "empty muted" }, "One version so far: changes appear here when it is edited."));
    return;
  }
  let answer;
  try {
    answer = await get(blobPath(id, "/deltas"));
  } catch (error) {
    replace(section, title, errorBox(error));
    return;
  }
  const items = [...answer.versions].reverse();
  replace(
    section,
    title,
    h("p", { class: "muted" }, "What each version changed from the one before: removed lines and values are marked −, added ones +."),
    items.map((entry, index) => deltaBlock(id, entry, versions.versions[entry.version - 1], index < 5)),
  );
}

function deltaBlock(id, entry, version, open) {
  const kinds = entry.deltas.map((d) => d.kind);
  const count = entry.deltas.reduce((n, d) => n + (d.operations ? d.operations.length : 0), 0);
  const summary = `Version ${entry.version - 1} → ${entry.version}: ${kinds.length ? `${kinds.join(", ")}, ${count} ${count === 1 ? "change" : "changes"}` : "no change"}${version ? ` · ${version.reason}` : ""}`;
  const body = h("div", { class: "studio-delta-body" }, h("p", { class: "muted" }, "Loading…"));
  const details = h("details", { class: "studio-delta", open }, h("summary", {}, summary), body);
  let drawn = false;
  const draw = async () => {
    if (drawn) return;
    drawn = true;
    let previous = null;
    try {
      previous = await get(withQuery(blobPath(id), { version: entry.version - 1 }));
    } catch {
      previous = null; // the diff is drawn without the old values
    }
    replace(body, entry.deltas.length ? entry.deltas.map((d) => renderDelta(d, previous, id, entry.version)) : h("p", { class: "muted" }, "The content did not change (metadata only, or the same content)."));
  };
  details.addEventListener("toggle", () => details.open && draw());
  if (open) draw();
  return details;
}

function renderDelta(delta, previous, id, version) {
  if (delta.kind === "json-patch") return jsonPatchDiff(delta.operations, previous && previous.content);
  if (delta.kind === "text-diff") return textDiff(delta.operations, previous && typeof previous.content === "string" ? previous.content : null);
  if (delta.kind === "replace") {
    const op = delta.operations[0] || {};
    return h("div", { class: "diff", role: "group", "aria-label": "Content replaced" }, h("span", { class: "add" }, `+ the whole content replaced (${bytes(op.size)}, sha256 ${String(op.sha256 || "").slice(0, 12)}…) — `, blobLink(id, `read version ${version}`, version)));
  }
  return h("pre", {}, pretty(delta));
}

const MISSING = Symbol("missing");

function pointerParts(pointer) {
  if (pointer === "") return [];
  return String(pointer).slice(1).split("/").map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
}

function resolve(doc, pointer) {
  let value = doc;
  for (const part of pointerParts(pointer)) {
    if (value === null || typeof value !== "object") return MISSING;
    if (Array.isArray(value)) {
      const index = Number(part);
      if (!/^\d+$/.test(part) || index >= value.length) return MISSING;
      value = value[index];
    } else {
      if (!Object.hasOwn(value, part)) return MISSING;
      value = value[part];
    }
  }
  return value;
}

/** `doc` with one RFC 6902 operation applied (doc is changed; throws when it does not apply). */
function applyOperation(doc, op) {
  const root = { "": doc };
  const walk = (parts) => {
    let node = root;
    for (const part of parts.slice(0, -1)) {
      node = Array.isArray(node) ? node[Number(part)] : node[part];
      if (node === null || typeof node !== "object") throw new Error("no such path");
    }
    return [node, parts.at(-1)];
  };
  const place = (parts, value, insert) => {
    const [node, key] = walk(parts);
    if (Array.isArray(node)) {
      const index = key === "-" ? node.length : Number(key);
      if (insert) node.splice(index, 0, value);
      else node[index] = value;
    } else node[key] = value;
  };
  const take = (parts) => {
    const [node, key] = walk(parts);
    if (Array.isArray(node)) return node.splice(Number(key), 1)[0];
    const value = node[key];
    delete node[key];
    return value;
  };
  const path = ["", ...pointerParts(op.path)];
  const clone = (v) => (v === undefined ? v : structuredClone(v));
  if (op.op === "add") place(path, clone(op.value), true);
  else if (op.op === "remove") take(path);
  else if (op.op === "replace") place(path, clone(op.value), false);
  else if (op.op === "move") place(path, take(["", ...pointerParts(op.from)]), true);
  else if (op.op === "copy") place(path, clone(resolve(root[""], op.from)), true);
  return root[""];
}

/** A JSON Patch as lines: − the value a path had, + the value it has; moves and tests in words. */
function jsonPatchDiff(operations, before) {
  let doc = before === undefined || before === null ? MISSING : structuredClone(before);
  const lines = [];
  for (const op of operations) {
    const path = op.path === "" ? "(the whole document)" : op.path;
    const old = doc === MISSING ? MISSING : resolve(doc, op.path);
    if (op.op === "add") {
      if (old !== MISSING && !/\/(-|\d+)$/.test(op.path)) lines.push(h("span", { class: "del" }, `− ${path}: ${compact(old)}`));
      lines.push(h("span", { class: "add" }, `+ ${path}: ${compact(op.value)}`));
    } else if (op.op === "remove") {
      lines.push(h("span", { class: "del" }, `− ${path}${old !== MISSING ? `: ${compact(old)}` : " (removed)"}`));
    } else if (op.op === "replace") {
      lines.push(h("span", { class: "del" }, `− ${path}${old !== MISSING ? `: ${compact(old)}` : " (old value)"}`));
      lines.push(h("span", { class: "add" }, `+ ${path}: ${compact(op.value)}`));
    } else if (op.op === "move") {
      lines.push(h("span", { class: "ctx" }, `→ moved ${op.from} to ${path}`));
    } else if (op.op === "copy") {
      lines.push(h("span", { class: "add" }, `+ ${path}: copy of ${op.from}`));
    } else if (op.op === "test") {
      lines.push(h("span", { class: "ctx" }, `= checked ${path} is ${compact(op.value)}`));
    } else {
      lines.push(h("span", { class: "ctx" }, compact(op)));
    }
    if (doc !== MISSING) {
      try {
        doc = applyOperation(doc, op);
      } catch {
        doc = MISSING; // later old values are not known
      }
    }
  }
  return h("div", { class: "diff", role: "group", "aria-label": "JSON changes" }, lines);
}

const CONTEXT = 2;

/** Line hunks `{at, delete, insert}` as a unified diff, with the removed lines read from `before`. */
function textDiff(hunks, before) {
  const old = before === null ? null : before.split(/(?<=\n)/);
  const line = (cls, mark, text) => h("span", { class: cls }, `${mark} ${String(text).replace(/\r?\n$/, "")}`);
  const blocks = hunks.map((hunk) => {
    const lines = [h("span", { class: "hunk" }, `@@ line ${hunk.at + 1}: −${hunk.delete} +${hunk.insert.length} @@`)];
    if (old) {
      for (let i = Math.max(0, hunk.at - CONTEXT); i < hunk.at; i++) lines.push(line("ctx", " ", old[i]));
      for (let i = hunk.at; i < hunk.at + hunk.delete; i++) lines.push(line("del", "−", old[i] ?? ""));
    } else if (hunk.delete) {
      lines.push(line("del", "−", `(${hunk.delete} ${hunk.delete === 1 ? "line" : "lines"})`));
    }
    for (const text of hunk.insert) lines.push(line("add", "+", text));
    if (old) {
      const end = hunk.at + hunk.delete;
      for (let i = end; i < Math.min(old.length, end + CONTEXT); i++) lines.push(line("ctx", " ", old[i]));
    }
    return lines;
  });
  return h("div", { class: "diff", role: "group", "aria-label": "Text changes" }, blocks);
}

// -- lineage -----------------------------------------------------------------------------------

/** Draw the lineage unless it is `seen` already (its JSON); answers the JSON drawn. */
async function drawLineage(section, id, seen = null) {
  const title = h("h2", { id: "studio-lineage-title" }, "Lineage");
  let answer;
  try {
    answer = await get(blobPath(id, "/lineage"));
  } catch (error) {
    replace(section, title, errorBox(error));
    return null;
  }
  const json = JSON.stringify(answer);
  if (json === seen) return seen;
  const single = !answer.root.children.length && !answer.ancestors.length;
  replace(
    section,
    title,
    h("p", { class: "muted" }, single ? "Nothing derives from this blob yet, and it derives from none." : "Where this blob comes from and what was derived from it: each edge says which provider's run made it."),
    h("ul", { class: "tree studio-tree", "aria-label": "Lineage tree" }, lineageNode(answer.root, id)),
    answer.truncated ? h("p", { class: "muted" }, "The tree is large: only part of it is shown.") : null,
  );
  return json;
}

function edgeText(edge) {
  if (!edge || !edge.provider_id) return h("span", { class: "muted" }, "derived by a client's write");
  return h(
    "span",
    { class: "studio-edge" },
    "derived by provider ", h("strong", {}, edge.provider_id),
    " · workflow ", h("code", {}, edge.workflow_id || "?"),
    " · execution ", h("code", {}, edge.execution_id || "?"),
    edge.step ? [" · step ", h("code", {}, edge.step)] : null,
  );
}

function lineageNode(node, current) {
  const name = label({ blob_id: node.blob_id, metadata: node.metadata });
  const here = node.blob_id === current;
  const head = h(
    "div",
    { class: `studio-node${here ? " studio-here" : ""}` },
    here ? h("strong", { "aria-current": "page" }, `${name} (this blob)`) : blobLink(node.blob_id, name),
    " ",
    h("code", {}, node.content_type),
    ` v${node.version}`,
    node.deleted ? [" ", badge("deleted")] : null,
    node.edge ? h("div", {}, edgeText(node.edge)) : null,
    node.versions_by_runs.length
      ? h(
          "ul",
          { class: "studio-runs-of-node" },
          node.versions_by_runs.map((v) => h("li", {}, `version ${v.version} (${v.reason}) written by `, v.edge.provider_id ? runEdge(v.edge) : "a run")),
        )
      : null,
  );
  return h("li", {}, head, node.children.length ? h("ul", {}, node.children.map((child) => lineageNode(child, current))) : null);
}

function runEdge(edge) {
  return h("span", {}, "provider ", h("strong", {}, edge.provider_id), " · workflow ", h("code", {}, edge.workflow_id), " · execution ", h("code", {}, edge.execution_id), edge.step ? [" · step ", h("code", {}, edge.step)] : null);
}

// -- provider runs of one blob ------------------------------------------------------------------

async function drawRuns(section, id, page, onChange) {
  const title = h("h2", { id: "studio-runs-title" }, "Provider runs for this blob");
  const known = new Map();
  const loadedAt = Date.now();
  let last = 1;
  let runs = [];
  const fetchRuns = async () => {
    const providers = (await get(studio("/providers"))).providers;
    const answers = await Promise.all(
      providers.map((p) =>
        get(withQuery(studio(`/providers/${encodeURIComponent(p.provider.id)}/triggered`), { blob_id: id, limit: 50, owner: page.role === "admin" ? p.owner : undefined }), { quiet: true }).catch(() => ({ runs: [] })),
      ),
    );
    const seen = new Set();
    const found = [];
    answers.forEach((answer, i) => {
      for (const run of answer.runs) {
        if (seen.has(run.execution_id)) continue;
        seen.add(run.execution_id);
        found.push({ ...run, provider_id: providers[i].provider.id });
      }
    });
    found.sort((a, b) => String(b.started_at).localeCompare(String(a.started_at)));
    await statuses(found.map((r) => r.execution_id), known);
    return found;
  };
  const draw = () => {
    const columns = [
      { title: "Provider", value: (r) => h("strong", {}, r.provider_id) },
      { title: "Workflow", value: (r) => h("code", {}, r.workflow_id) },
      { title: "Execution", value: (r) => h("code", {}, r.execution_id) },
      { title: "Status", value: (r) => (known.get(r.execution_id) ? badge(known.get(r.execution_id)) : "—") },
      { title: "Started by", value: (r) => `${r.trigger} of version ${r.blob_version}` },
      { title: "Started", value: (r) => when(r.started_at) },
      { title: "Output", value: (r) => outcome(r, known) },
    ];
    replace(section, title, table(columns, runs, { empty: "No provider has started a workflow for this blob." }));
  };
  try {
    runs = await fetchRuns();
  } catch (error) {
    replace(section, title, errorBox(error));
    return;
  }
  draw();
  const poll = poller(
    page,
    async () => {
      const before = JSON.stringify([runs, [...known]]);
      runs = await fetchRuns();
      if (JSON.stringify([runs, [...known]]) !== before) draw();
      await onChange(); // the lineage, drawn again only when it changed
    },
    // A blob written a moment ago may not have its runs recorded yet: ask for a while anyway,
    // and once more after the last run ended (what it derived).
    () => {
      if (runs.some((r) => running(r, known)) || Date.now() - loadedAt < 15000) {
        last = 1;
        return true;
      }
      return last-- > 0;
    },
  );
  poll.schedule();
}

// -- providers -----------------------------------------------------------------------------------

const EXAMPLE = `provider:
  id: my-provider
  name: My provider
  type: processor
workflows:
  - workflow_id: book_chapter_expansion
    triggers:
      - event: onCreate
        conditions:
          - field: metadata.type
            operator: eq
            value: draft_chapter
    priority: 20`;

async function providersPage(main, params, page) {
  const admin = page.role === "admin";
  const tenant = page.session.user.client_id;
  const listing = h("section", { "aria-labelledby": "studio-providers-title" });
  let generation = 0; // cards drawn by an earlier load stop asking

  async function load() {
    generation += 1;
    let answer;
    try {
      answer = await get(studio("/providers"));
    } catch (error) {
      replace(listing, h("h2", { id: "studio-providers-title" }, "Registered providers"), errorBox(error));
      return;
    }
    replace(
      listing,
      h("h2", { id: "studio-providers-title" }, "Registered providers"),
      answer.providers.length
        ? answer.providers.map((p) => providerCard(p))
        : h("p", { class: "empty muted" }, "No providers yet: register one with the form below."),
    );
  }

  function providerCard(p) {
    const id = p.provider.id;
    const platform = p.owner === "platform";
    const removable = admin || p.owner === tenant;
    const runs = h("div", { class: "studio-triggered", "aria-live": "polite" }, h("p", { class: "muted" }, "Loading what it triggered…"));
    const workflows = table(
      [
        { title: "Workflow", value: (w) => h("code", {}, w.workflow_id) },
        { title: "Priority", class: "num", value: (w) => String(w.priority) },
        { title: "Triggers", value: (w) => h("ul", { class: "studio-triggers" }, w.triggers.map((t) => h("li", {}, triggerText(t)))) },
      ],
      p.workflows,
    );
    const card = h(
      "article",
      { class: "card studio-provider", "aria-labelledby": `provider-${p.owner}-${id}` },
      h("h3", { id: `provider-${p.owner}-${id}` }, p.provider.name || id, " ", h("code", {}, id)),
      h(
        "p",
        { class: "muted" },
        `${p.provider.type || "provider"} · `,
        platform ? "the platform's: reacts to every client's blobs" : admin ? `client ${p.owner}'s: reacts to its blobs` : "yours: reacts to your blobs",
        ` · registered ${when(p.registered_at)}`,
      ),
      p.provider.description ? h("p", {}, p.provider.description) : null,
      workflows,
      h("h4", {}, "What it triggered"),
      runs,
      removable ? removeControl(p) : null,
    );
    drawTriggered(runs, p);
    return card;
  }

  function drawTriggered(container, p) {
    const mine = generation;
    const known = new Map();
    let shown = [];
    let cursor = null;
    const url = (from) =>
      withQuery(studio(`/providers/${encodeURIComponent(p.provider.id)}/triggered`), { limit: RUN_PAGE, cursor: from || undefined, owner: admin ? p.owner : undefined });
    const draw = () => {
      const columns = [
        { title: "Started", value: (r) => when(r.started_at) },
        { title: "Blob", value: (r) => h("span", {}, blobLink(r.blob_id), ` v${r.blob_version}`) },
        admin ? { title: "Client", value: (r) => r.blob_owner } : null,
        { title: "Workflow", value: (r) => h("code", {}, r.workflow_id) },
        { title: "Execution", value: (r) => h("code", {}, r.execution_id) },
        { title: "Status", value: (r) => (known.get(r.execution_id) ? badge(known.get(r.execution_id)) : "—") },
        { title: "Trigger", value: (r) => r.trigger },
        { title: "Output", value: (r) => outcome(r, known) },
      ].filter(Boolean);
      replace(
        container,
        table(columns, shown, { empty: admin ? "It has started nothing yet." : "It has started nothing for your blobs yet." }),
        cursor ? h("div", { class: "actions" }, button("Show older runs", more, { kind: "secondary", busy: "Loading…" })) : null,
      );
    };
    const more = async () => {
      const answer = await get(url(cursor));
      shown = [...shown, ...answer.runs];
      cursor = answer.next_cursor || null;
      await statuses(answer.runs.map((r) => r.execution_id), known);
      draw();
    };
    const refresh = async () => {
      const answer = await get(url(null), { quiet: true });
      const fresh = answer.runs.filter((r) => !shown.some((s) => s.execution_id === r.execution_id));
      shown = [...fresh, ...shown.map((s) => answer.runs.find((r) => r.execution_id === s.execution_id) || s)];
      await statuses(shown.map((r) => r.execution_id), known);
      draw();
    };
    more()
      .then(() => {
        poller(page, refresh, () => mine === generation && container.isConnected, 5000).schedule();
      })
      .catch((error) => replace(container, errorBox(error)));
  }

  function removeControl(p) {
    const box = h("div", { class: "studio-confirm", hidden: true, role: "group", "aria-label": `Confirm removing ${p.provider.id}` });
    const ask = button(`Remove ${p.provider.id}…`, async () => {
      box.hidden = false;
      box.querySelector("button").focus();
    }, { kind: "danger" });
    replace(
      box,
      h("p", {}, `Remove provider ${p.provider.id}? Blob events stop starting its workflows; what it did stays.`),
      h(
        "div",
        { class: "actions" },
        button("Remove", async () => {
          try {
            await del(withQuery(studio(`/providers/${encodeURIComponent(p.provider.id)}`), { owner: admin ? p.owner : undefined }));
            notify(`Provider ${p.provider.id} removed.`, "ok");
            await load();
          } catch (problem) {
            notify(`Remove: ${problem.message}`, "error");
          }
        }, { kind: "danger", busy: "Removing…" }),
        button("Cancel", async () => {
          box.hidden = true;
          ask.focus();
        }, { kind: "secondary" }),
      ),
    );
    return h("div", { class: "actions" }, ask, box);
  }

  const documentInput = h("textarea", { name: "provider", rows: 14, class: "mono", spellcheck: "false", placeholder: EXAMPLE, required: true });
  const ownerInput = admin ? h("input", { name: "owner", placeholder: "the platform (every client)", autocomplete: "off" }) : null;
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const form = h(
    "form",
    { class: "card studio-form", "aria-labelledby": "studio-register-title" },
    h("h2", { id: "studio-register-title" }, "Register a provider"),
    h("p", { class: "muted" }, "Seed 004's shape, in YAML or JSON: which workflows start on which blob events (onCreate, onUpdate, onDelete) when the conditions hold (operators eq, ne, in, exists, gt, lt, contains). Registering an id again replaces it."),
    field("Provider (YAML or JSON)", documentInput),
    ownerInput ? field("For client", ownerInput, "Leave empty to register it for the platform: it then reacts to every client's blobs.") : null,
    error,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "btn btn-primary" }, "Register provider")),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    error.hidden = true;
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    try {
      const made = await post(withQuery(studio("/providers"), { owner: ownerInput ? ownerInput.value.trim() : undefined }), documentInput.value);
      notify(`Provider ${made.provider.id} registered.`, "ok");
      documentInput.value = "";
      await load();
    } catch (problem) {
      error.textContent = problem.status ? `${problem.status}: ${problem.message}` : problem.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  replace(
    main,
    heading("Providers", admin ? "Every provider, whose blobs it reacts to, and what it started" : "The providers reacting to your blobs, and what they started"),
    subnav("providers"),
    listing,
    form,
  );
  await load();
}

function triggerText(trigger) {
  const conditions = trigger.conditions || [];
  return h(
    "span",
    {},
    h("strong", {}, trigger.event),
    conditions.length ? " when " : " (always)",
    conditions.map((c, i) => [i ? " and " : "", h("code", {}, `${c.field} ${c.operator}${c.operator === "exists" && c.value === true ? "" : ` ${JSON.stringify(c.value)}`}`)]),
  );
}

export const routes = [
  { path: "/studio", title: "Studio", roles: ["client", "admin"], nav: "Studio", view: blobsPage },
  { path: "/studio/providers", title: "Providers · Studio", roles: ["client", "admin"], view: providersPage },
  { path: "/studio/blobs/:id", title: "Blob · Studio", roles: ["client", "admin"], view: blobPage },
];
