// The console's job pages: seed 000's job API, through the gateway (/svc/workflow). A person
// picks a workflow, fills the form its jobPayloadSchema describes (the eight job types, files
// uploaded through the presigned URLs the API gives), runs the job, watches it live over
// /job/{id}/monitor, then reads its results and its audit trail (see app.js for the route
// contract). The caller's jobs are GET /jobs (not in the seed: the platform adds it); a job
// initiated and never executed can be given its payload later (#/jobs/:id/run).

import { ApiError, get, headersFor, post, withQuery, workflow } from "./api.js";
import { follow } from "./live.js";
import { badge, button, errorBox, h, heading, notify, replace, schemaForm, table, when } from "./ui.js";

/** The job types of seed 000, in its order; the form draws each one. */
const JOB_TYPES = ["str", "float", "bool", "date", "object", "array", "file", "array_files"];
const TYPE_HINTS = {
  str: "text",
  float: "a number",
  bool: "yes or no",
  date: "a date",
  object: "a JSON object",
  array: "a list",
  file: "one file",
  array_files: "one or more files",
};
const IN_PROGRESS = "IN PROGRESS";
/** How many of the caller's latest jobs the jobs page lists. */
const RECENT = 50;

const jobPath = (id) => workflow(`/job/${encodeURIComponent(id)}`);

/**
 * The gateway's address for a URL the workflow service built with its own origin (a presigned
 * upload URL, a file URL). The signature covers the upload's id, extension, size limit and
 * expiry, not the host, so the same path and query under /svc/workflow is the same capability.
 * The path is taken from /job/file/ on, whatever prefix a configured public URL puts before it;
 * and the file only ever goes to this origin.
 */
export function throughGateway(url) {
  const parsed = new URL(url, location.origin);
  const at = parsed.pathname.indexOf("/job/file/");
  return workflow(`${at >= 0 ? parsed.pathname.slice(at) : parsed.pathname}${parsed.search}`);
}

function jobStatusBadge(status) {
  return badge(status || IN_PROGRESS);
}

function json(value) {
  return h("pre", { class: "mono" }, JSON.stringify(value, null, 2));
}

function titleOf(name) {
  return name.replace(/[_-]+/g, " ").replace(/^./, (c) => c.toUpperCase());
}

function isFileUrl(value) {
  return typeof value === "string" && /\/job\/file\/[0-9a-f]{32}\.[A-Za-z0-9]+\?sig=/.test(value);
}

/** A value of the payload as a person reads it: files as download links through the gateway. */
function shownValue(value) {
  if (isFileUrl(value)) {
    const name = new URL(value, location.origin).pathname.split("/").pop();
    return h("a", { href: throughGateway(value), download: name }, name);
  }
  if (Array.isArray(value) && value.length && value.every(isFileUrl)) {
    return h("ul", { class: "job-files" }, value.map((item) => h("li", {}, shownValue(item))));
  }
  if (Array.isArray(value) && value.every((item) => item === null || typeof item !== "object")) {
    return value.map(String).join(", ");
  }
  if (value !== null && typeof value === "object") return json(value);
  return String(value);
}

// --- #/jobs: the workflows and the caller's recent jobs ----------------------------------------

function jobLink(job) {
  return h("a", { href: `#/jobs/${encodeURIComponent(job.jobExecutionId)}` }, job.title || job.jobExecutionId);
}

function jobState(job) {
  if (job.stage === "initiated") {
    return h("span", {}, h("span", { class: "muted" }, "not executed "), h("a", { href: `#/jobs/${encodeURIComponent(job.jobExecutionId)}/run`, "aria-label": `Give ${job.title || "the job"} its payload` }, "Run it"));
  }
  return jobStatusBadge(job.status);
}

async function jobsPage(main, params, page) {
  const admin = page.session.user.role === "admin";
  const [listed, recent] = await Promise.all([
    get(workflow("/workflows")),
    get(withQuery(workflow("/jobs"), { limit: RECENT })).catch((error) => error),
  ]);
  const tenant = admin ? "platform" : page.session.user.client_id;
  // A job runs a workflow of the caller's namespace or the platform's (an admin's list shows
  // every client's; those are run by their clients).
  const workflows = (listed.workflows || []).filter((w) => w.tenant === "platform" || w.tenant === tenant);
  const picker = table(
    [
      {
        title: "Workflow",
        value: (w) =>
          w.active === false
            ? h("span", {}, w.name || w.id, " ", h("span", { class: "muted" }, "(inactive)"))
            : h("a", { href: `#/jobs/new/${encodeURIComponent(w.id)}`, "aria-label": `Start a job: ${w.name || w.id}` }, w.name || w.id),
      },
      { title: "Id", value: (w) => h("code", {}, w.id) },
      { title: "Version", value: (w) => String(w.version ?? ""), class: "num" },
      { title: "Description", value: (w) => w.description || "" },
      { title: "Owner", value: (w) => (w.tenant === "platform" ? "Platform" : "Yours") },
    ],
    workflows,
    { empty: "No workflow is registered yet: register one (POST /workflows) to run jobs.", caption: "Pick a workflow to start a job" },
  );
  const recentBlock =
    recent instanceof Error
      ? errorBox(recent)
      : table(
          [
            { title: "Job", value: jobLink },
            { title: "Workflow", value: (j) => h("code", {}, j.workflowId) },
            { title: "Status", value: jobState },
            { title: "Initiated", value: (j) => when(j.createdAt) },
            admin ? { title: "Client", value: (j) => j.owner } : null,
            { title: "Id", value: (j) => h("code", { class: "job-id" }, j.jobExecutionId) },
          ].filter(Boolean),
          recent.jobs || [],
          { empty: "No job yet: pick a workflow below to start one.", caption: admin ? "Recent jobs of every client" : "Your recent jobs" },
        );
  replace(
    main,
    h("div", { class: "jobs" },
    heading("Jobs", "Run a workflow with a payload, watch it live, read its results and its audit trail."),
    h(
      "section",
      { "aria-labelledby": "jobs-recent" },
      h("h2", { id: "jobs-recent" }, "Recent jobs"),
      recent instanceof Error || !(recent.total > (recent.jobs || []).length) ? null : h("p", { class: "muted" }, `The latest ${(recent.jobs || []).length} of ${recent.total}.`),
      recentBlock,
    ),
    h("section", { "aria-labelledby": "jobs-workflows" }, h("h2", { id: "jobs-workflows" }, "Start a job"), picker),
    ),
  );
}

// --- #/jobs/new/:workflow: the payload form ----------------------------------------------------

/** Files chosen in a file field, uploaded when the job runs. */
class ChosenFiles {
  constructor(files, multiple, status) {
    this.files = files;
    this.multiple = multiple;
    this.status = status;
  }
}

let widgetCounter = 0;

function fieldShell(name, spec, control, id, extra = null) {
  const helpId = `${id}-help`;
  control.setAttribute("aria-describedby", helpId);
  const hint = `${spec.type}: ${TYPE_HINTS[spec.type] || spec.type}`;
  return h(
    "div",
    { class: `field job-field job-field-${spec.type}` },
    h("label", { for: id }, titleOf(name), spec.required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null),
    control,
    h("small", { class: "help", id: helpId }, spec.description ? `${spec.description} · ${hint}` : hint),
    extra,
  );
}

/** The fields schemaForm does not draw as seed 000 means them: object, array, file, array_files. */
function payloadWidget(fields) {
  return (name) => {
    const spec = fields[name];
    if (!spec) return undefined;
    const id = `job-${++widgetCounter}-${name.replace(/[^a-z0-9_-]/gi, "")}`;
    const required = Boolean(spec.required);
    if (spec.type === "file" || spec.type === "array_files") {
      const multiple = spec.type === "array_files";
      const input = h("input", { id, name, type: "file", multiple, required });
      const status = h("span", { class: "job-upload-status muted", "aria-live": "polite" });
      return {
        element: fieldShell(name, spec, input, id, status),
        value: () => {
          const files = [...(input.files || [])];
          if (!files.length) {
            if (required) throw new Error(`${name} is required: choose ${multiple ? "at least one file" : "a file"}`);
            return undefined;
          }
          return new ChosenFiles(files, multiple, status);
        },
      };
    }
    if (spec.type === "object") {
      const input = h("textarea", { id, name, rows: 4, class: "mono", placeholder: '{"key": "value"}', required });
      return {
        element: fieldShell(name, spec, input, id),
        value: () => {
          const text = input.value.trim();
          if (!text) {
            if (required) throw new Error(`${name} is required: give a JSON object`);
            return undefined;
          }
          let parsed;
          try {
            parsed = JSON.parse(text);
          } catch {
            throw new Error(`${name}: not valid JSON`);
          }
          if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
            throw new Error(`${name}: give a JSON object ({...})`);
          }
          return parsed;
        },
      };
    }
    if (spec.type === "array") {
      const input = h("textarea", { id, name, rows: 3, placeholder: "one item per line, or a JSON array", required });
      return {
        element: fieldShell(name, { ...spec, description: [spec.description, "one item per line, or a JSON array"].filter(Boolean).join(" · ") }, input, id),
        value: () => {
          const text = input.value.trim();
          if (!text) {
            if (required) throw new Error(`${name} is required: give at least one item`);
            return undefined;
          }
          if (text.startsWith("[")) {
            let parsed;
            try {
              parsed = JSON.parse(text);
            } catch {
              throw new Error(`${name}: not a valid JSON array`);
            }
            if (!Array.isArray(parsed)) throw new Error(`${name}: give a JSON array`);
            return parsed;
          }
          return text.split("\n").map((s) => s.trim()).filter(Boolean);
        },
      };
    }
    return undefined;
  };
}

/** The JSON Schema schemaForm draws for the scalar job types (the others are widgets). */
function formSchema(fields) {
  const properties = {};
  for (const [name, spec] of Object.entries(fields)) {
    const hint = `${spec.type}: ${TYPE_HINTS[spec.type] || spec.type}`;
    const description = spec.description ? `${spec.description} · ${hint}` : hint;
    const base = { title: titleOf(name), description };
    properties[name] = {
      str: { ...base, type: "string" },
      float: { ...base, type: "number" },
      bool: { ...base, type: "boolean" },
      date: { ...base, type: "string", format: "date" },
    }[spec.type] || { ...base, type: "object" };
  }
  const required = Object.entries(fields).filter(([, spec]) => spec.required).map(([name]) => name);
  return { type: "object", properties, required };
}

function extensionOf(file) {
  const match = /\.([A-Za-z0-9]{1,16})$/.exec(file.name);
  return match ? match[1].toLowerCase() : "bin";
}

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/**
 * Upload one file for job `jobId`: a presigned URL from the job API, then the file PUT to it
 * (through the gateway, same path and query). Answers the file URL the payload passes.
 */
async function upload(file, jobId) {
  const grant = await post(workflow("/job/file/upload"), { fileExtension: extensionOf(file), jobExecutionId: jobId });
  if (file.size > grant.maxBytes) {
    throw new Error(`${file.name} is ${size(file.size)}; at most ${size(grant.maxBytes)} may be uploaded`);
  }
  const response = await fetch(throughGateway(grant.presignedUrl), {
    method: "PUT",
    credentials: "same-origin",
    headers: headersFor("PUT", { "Content-Type": file.type || "application/octet-stream" }),
    body: file,
  });
  let answer = {};
  try {
    answer = await response.json();
  } catch {
    answer = {};
  }
  if (!response.ok) {
    throw new ApiError(response.status, `${file.name}: ${answer.error || `upload refused (HTTP ${response.status})`}`, answer);
  }
  return answer.fileUrl || grant.fileUrl;
}

function problemsList(error) {
  const problems = error && error.body && Array.isArray(error.body.problems) ? error.body.problems : [];
  if (!problems.length) return null;
  return h("ul", { class: "job-problems" }, problems.map((p) => h("li", {}, h("code", {}, p.field || p.path || "?"), `: ${p.reason || p.message || ""}`)));
}

async function newJobPage(main, params, page, existing = null) {
  const workflowId = existing ? existing.workflowId : params.workflow;
  let described;
  try {
    described = await get(workflow(`/workflow/${encodeURIComponent(workflowId)}`));
  } catch (failure) {
    // 404 is the shell's "Not found"; a workflow whose input cannot be a job payload says why.
    if (!(failure instanceof ApiError) || failure.status !== 400) throw failure;
    replace(
      main,
      h("div", { class: "jobs" }, heading(`New job: ${workflowId}`), errorBox(failure), h("p", {}, h("a", { href: "#/jobs" }, "Back to the jobs"))),
    );
    return;
  }
  const fields = described.jobPayloadSchema || {};
  const unknown = Object.entries(fields).filter(([, spec]) => !JOB_TYPES.includes(spec.type));
  const payload = schemaForm(formSchema(fields), { widget: payloadWidget(fields) });
  // A job already initiated keeps the title and description it was given.
  const titleInput = h("input", { id: "job-title", name: "title", maxlength: 200, value: existing ? existing.title : described.name || workflowId, readonly: Boolean(existing) });
  const descriptionInput = h("textarea", { id: "job-description", name: "description", rows: 2, readonly: Boolean(existing) });
  if (existing) descriptionInput.value = existing.description || "";
  const error = h("div", { class: "error job-error", role: "alert", hidden: true });
  const progress = h("p", { class: "muted", "aria-live": "polite" });
  // What a failed attempt already did, so trying again neither initiates a second job nor
  // uploads a file twice.
  const done = { jobId: existing ? existing.jobExecutionId : null, uploads: new Map() };

  async function run() {
    error.hidden = true;
    replace(error);
    let values;
    try {
      values = payload.value();
    } catch (failure) {
      replace(error, failure.message);
      error.hidden = false;
      return;
    }
    try {
      if (!done.jobId) {
        progress.textContent = "Initiating the job…";
        const started = await post(workflow("/job/initiate"), {
          workflowId,
          title: titleInput.value.trim(),
          description: descriptionInput.value.trim(),
        });
        done.jobId = started.jobExecutionId;
      }
      const instance = {};
      for (const [name, spec] of Object.entries(fields)) {
        let value = values[name];
        if (value === undefined) continue;
        if (value instanceof ChosenFiles) {
          const urls = [];
          for (const file of value.files) {
            if (!done.uploads.has(file)) {
              value.status.textContent = `Uploading ${file.name} (${size(file.size)})…`;
              progress.textContent = `Uploading ${file.name}…`;
              done.uploads.set(file, await upload(file, done.jobId));
            }
            urls.push(done.uploads.get(file));
          }
          value.status.textContent = `Uploaded: ${value.files.map((f) => `${f.name} (${size(f.size)})`).join(", ")}`;
          value = value.multiple ? urls : urls[0];
        }
        instance[name] = { value, type: spec.type };
      }
      progress.textContent = "Executing…";
      await post(workflow("/job/execute"), { jobExecutionId: done.jobId, jobPayloadSchemaInstance: instance });
      notify("The job was started.", "ok");
      location.hash = `#/jobs/${encodeURIComponent(done.jobId)}`;
    } catch (failure) {
      progress.textContent = "";
      replace(error, h("p", {}, failure.status ? `${failure.status}: ${failure.message}` : failure.message), problemsList(failure));
      error.hidden = false;
    }
  }

  const form = h(
    "form",
    { class: "card job-form", "aria-labelledby": "job-form-title", novalidate: true },
    h("h2", { id: "job-form-title" }, "Payload"),
    h("div", { class: "field" }, h("label", { for: "job-title" }, "Job title"), titleInput),
    h("div", { class: "field" }, h("label", { for: "job-description" }, "Job description"), descriptionInput),
    payload.element,
    error,
    h("div", { class: "actions" }, button("Run job", run, { busy: "Running…" }), h("a", { href: "#/jobs" }, "Cancel")),
    progress,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    form.querySelector(".actions button").click();
  });
  replace(
    main,
    h("div", { class: "jobs" },
    heading(
      existing ? `Run job: ${existing.title || existing.jobExecutionId}` : `New job: ${described.name || workflowId}`,
      described.description || `Workflow ${workflowId}, version ${described.version ?? "?"}`,
    ),
    unknown.length ? h("p", { class: "error", role: "alert" }, `Fields of an unknown type: ${unknown.map(([n]) => n).join(", ")}`) : null,
    form,
    ),
  );
  const first = form.querySelector("input, textarea, select");
  if (first) first.focus();
}

/** #/jobs/:id/run: the payload of a job initiated and never executed (a failed attempt, a closed tab). */
async function resumePage(main, params, page) {
  const id = params.id;
  const [status, audit] = await Promise.all([get(`${jobPath(id)}/status`), get(`${jobPath(id)}/audit`)]);
  if (status.executionId) {
    location.hash = `#/jobs/${encodeURIComponent(id)}`;
    return;
  }
  const initiated = (audit.auditTrail || []).find((e) => e.type === "nexus.workflow.job.initiated");
  const info = (initiated && initiated.data) || {};
  await newJobPage(main, {}, page, {
    jobExecutionId: id,
    workflowId: status.workflowId,
    title: info.title || "",
    description: info.description || "",
  });
}

// --- #/jobs/:id: live status, results, audit trail ---------------------------------------------

function factsOf(rows) {
  return h("dl", { class: "facts" }, rows.filter(([, v]) => v !== undefined && v !== null && v !== "").map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
}

function auditTable(trail) {
  return table(
    [
      { title: "#", value: (e) => String(e.position ?? ""), class: "num" },
      { title: "Time", value: (e) => when(e.time) },
      { title: "Event", value: (e) => h("code", {}, String(e.type || "").replace(/^nexus\.workflow\./, "")) },
      { title: "Stream", value: (e) => h("span", {}, h("code", {}, e.stream || ""), e.version !== undefined ? ` v${e.version}` : "") },
      { title: "Hash", value: (e) => h("code", { title: e.hash || "" }, e.hash ? `${String(e.hash).slice(0, 12)}…` : "") },
      { title: "Data", value: (e) => h("details", {}, h("summary", {}, "Show"), json(e.data)) },
    ],
    trail,
    { empty: "No event recorded yet.", caption: "Every event of the job and its execution, from the event log" },
  );
}

function stepsTable(steps) {
  const rows = Object.entries(steps || {}).map(([id, step]) => ({ id, ...step }));
  return table(
    [
      { title: "Step", value: (s) => h("code", {}, s.id) },
      { title: "Status", value: (s) => badge(s.status || "") },
      { title: "Attempts", value: (s) => String(s.attempts ?? s.attempt ?? ""), class: "num" },
      { title: "Error", value: (s) => s.error || "" },
      { title: "Output", value: (s) => (s.output === undefined || s.output === null ? "" : json(s.output)) },
    ],
    rows,
    { empty: "No step ran.", caption: "Steps" },
  );
}

async function jobPage(main, params, page) {
  const id = params.id;
  // Both answer 404 for a job that is not the caller's: the shell then shows "Not found".
  const [status, audit] = await Promise.all([get(`${jobPath(id)}/status`), get(`${jobPath(id)}/audit`)]);
  const trail = audit.auditTrail || [];
  const initiated = trail.find((e) => e.type === "nexus.workflow.job.initiated");
  const info = (initiated && initiated.data) || {};

  const statusBadge = h("span", { class: "job-status" }, jobStatusBadge(status.status));
  const liveState = h("span", { class: "live-state", "aria-live": "polite" }, "Connecting…");
  const facts = h("div", {});
  const updates = h("ol", { class: "timeline job-updates", "aria-live": "polite", "aria-label": "Status updates" });
  const payloadBox = h("div", {});
  const resultsBox = h("div", {}, h("p", { class: "muted" }, "The results appear when the job has finished."));
  const auditBox = h("div", {}, auditTable(trail));

  function drawFacts(body) {
    replace(
      facts,
      factsOf([
        ["Job", h("code", {}, id)],
        ["Workflow", h("a", { href: `#/jobs/new/${encodeURIComponent(body.workflowId || info.workflow_id || "")}` }, body.workflowId || info.workflow_id || "")],
        ["Execution", body.executionId ? h("code", {}, body.executionId) : h("span", {}, "not executed yet: ", h("a", { href: `#/jobs/${encodeURIComponent(id)}/run` }, "give it its payload"))],
        ["Engine status", body.executionStatus ? badge(body.executionStatus) : body.stage || ""],
        ["Current step", body.currentStep ? h("code", {}, body.currentStep) : ""],
        ["Error", body.error || ""],
      ]),
    );
  }

  function drawPayload(events) {
    const executed = events.find((e) => e.type === "nexus.workflow.job.executed");
    if (!executed || !executed.data || !executed.data.input) {
      replace(payloadBox, h("p", { class: "muted" }, "Not executed yet: no payload."));
      return;
    }
    const input = executed.data.input;
    replace(
      payloadBox,
      table(
        [
          { title: "Field", value: ([k]) => h("code", {}, k) },
          { title: "Value", value: ([, v]) => shownValue(v) },
        ],
        Object.entries(input),
        { empty: "The payload is empty.", caption: "The payload the workflow received" },
      ),
    );
  }

  async function drawFinal() {
    try {
      const results = await get(`${jobPath(id)}/results`);
      replace(
        resultsBox,
        results.status === "FAILED" ? h("p", { class: "error" }, `The job failed: ${results.error || results.executionStatus || "no reason given"}`) : null,
        h("h3", {}, "Output"),
        results.results === undefined || results.results === null ? h("p", { class: "muted" }, "The workflow gave no output.") : json(results.results),
        stepsTable(results.data && results.data.steps),
      );
    } catch (failure) {
      replace(resultsBox, errorBox(failure));
    }
    try {
      const fresh = await get(`${jobPath(id)}/audit`);
      replace(auditBox, auditTable(fresh.auditTrail || []));
      drawPayload(fresh.auditTrail || []);
    } catch (failure) {
      replace(auditBox, errorBox(failure));
    }
  }

  let last = "";
  let stream = null;
  function onStatus(body) {
    const text = JSON.stringify(body);
    if (text === last) return;
    const wasExecuted = Boolean(JSON.parse(last || "{}").executionId);
    last = text;
    replace(statusBadge, jobStatusBadge(body.status));
    drawFacts(body);
    const step = body.currentStep ? ` · step ${body.currentStep}` : "";
    const engine = body.executionStatus ? ` (${body.executionStatus})` : body.stage ? ` (${body.stage})` : "";
    updates.append(h("li", {}, h("time", {}, new Date().toLocaleTimeString()), " ", jobStatusBadge(body.status), engine, step));
    if (body.executionId && !wasExecuted) {
      get(`${jobPath(id)}/audit`).then((fresh) => drawPayload(fresh.auditTrail || []), () => {});
    }
    if (body.status && body.status !== IN_PROGRESS) {
      // The service ends the stream at a final status; closing here keeps the browser from
      // reconnecting to hear it again.
      if (stream) stream.close();
      liveState.textContent = "Finished";
      drawFinal();
    }
  }

  replace(
    main,
    h("div", { class: "jobs" },
    heading(info.title || "Job", info.description || `Job ${id}`),
    h(
      "section",
      { class: "card job-summary", "aria-labelledby": "job-status-title" },
      h("h2", { id: "job-status-title" }, "Status ", statusBadge, " ", liveState),
      facts,
    ),
    h("div", { class: "grid job-grid" },
      h("section", { class: "card", "aria-labelledby": "job-updates-title" }, h("h2", { id: "job-updates-title" }, "Live updates"), updates),
      h("section", { class: "card", "aria-labelledby": "job-payload-title" }, h("h2", { id: "job-payload-title" }, "Payload"), payloadBox),
    ),
    h("section", { class: "card", "aria-labelledby": "job-results-title" }, h("h2", { id: "job-results-title" }, "Results"), resultsBox),
    h("section", { class: "card", "aria-labelledby": "job-audit-title" }, h("h2", { id: "job-audit-title" }, "Audit trail"), auditBox),
    ),
  );
  drawPayload(trail);
  onStatus(status);
  if (status.status === IN_PROGRESS) {
    stream = follow(`${jobPath(id)}/monitor`, {
      onUpdate: (type, data) => {
        if (data && typeof data === "object") onStatus(data);
      },
      onState: (state) => {
        if (last && JSON.parse(last).status !== IN_PROGRESS) return;
        liveState.textContent = { open: "Live", connecting: "Connecting…", reconnecting: "Reconnecting…", closed: "Closed" }[state] || state;
      },
    });
    page.onLeave(() => stream.close());
  }
}

export const routes = [
  { path: "/jobs", title: "Jobs", roles: ["client", "admin"], nav: "Jobs", view: jobsPage },
  { path: "/jobs/new/:workflow", title: "New job", roles: ["client", "admin"], view: newJobPage },
  { path: "/jobs/:id/run", title: "Run job", roles: ["client", "admin"], view: resumePage },
  { path: "/jobs/:id", title: "Job", roles: ["client", "admin"], view: jobPage },
];
