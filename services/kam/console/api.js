// Calls to the platform from the console: KAM's /api, and the workflow service and the studio
// through KAM's gateway (/svc/workflow, /svc/studio), all on this origin with the session cookie.
// A call that changes something carries the CSRF token the login set in the readable
// nexus_csrf cookie; the session cookie itself is HttpOnly and never seen by this code.

const SAFE = new Set(["GET", "HEAD", "OPTIONS"]);

/** An answer other than 2xx: the status and the message the platform gave. */
export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.body = body;
  }
}

/** The value of a cookie this page may read (only nexus_csrf is readable). */
export function cookie(name) {
  for (const part of document.cookie.split(";")) {
    const [key, ...rest] = part.trim().split("=");
    if (key === name) return decodeURIComponent(rest.join("="));
  }
  return "";
}

/** Headers for a call with `method` (the CSRF token on any call that changes something). */
export function headersFor(method, extra = {}) {
  const headers = { Accept: "application/json", ...extra };
  if (!SAFE.has(method)) headers["X-CSRF-Token"] = cookie("nexus_csrf");
  return headers;
}

function messageOf(status, body, text) {
  if (body && typeof body === "object") {
    if (typeof body.message === "string") return body.message;
    if (typeof body.error === "string") return body.error;
    if (body.error && typeof body.error.message === "string") return body.error.message;
  }
  return text ? text.slice(0, 300) : `HTTP ${status}`;
}

/**
 * Call `path` with `method`; a JSON body when `body` is given (a Blob or FormData is sent as is).
 * Answers the decoded JSON (or text), throws ApiError for any status outside 2xx. A 401 also
 * tells the app (event "nexus:unauthorized") so it can show the login page.
 */
export async function call(method, path, body = undefined, options = {}) {
  const init = { method, credentials: "same-origin", headers: headersFor(method, options.headers) };
  if (body !== undefined) {
    if (body instanceof Blob || body instanceof FormData || typeof body === "string") {
      init.body = body;
    } else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  const response = await fetch(path, init);
  const text = await response.text();
  let parsed = text;
  if ((response.headers.get("Content-Type") || "").includes("json") && text) {
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = text;
    }
  }
  if (!response.ok) {
    if (response.status === 401 && !options.quiet) window.dispatchEvent(new CustomEvent("nexus:unauthorized"));
    throw new ApiError(response.status, messageOf(response.status, parsed, text), parsed);
  }
  return options.raw ? { body: parsed, headers: response.headers, status: response.status } : parsed;
}

export const get = (path, options) => call("GET", path, undefined, options);
export const post = (path, body, options) => call("POST", path, body ?? {}, options);
export const put = (path, body, options) => call("PUT", path, body, options);
export const patch = (path, body, options) => call("PATCH", path, body, options);
export const del = (path, options) => call("DELETE", path, undefined, options);

/** A path of KAM's API. */
export const kam = (path) => `/api${path}`;
/** A path of the workflow service, through the gateway. */
export const workflow = (path) => `/svc/workflow${path}`;
/** A path of the studio, through the gateway. */
export const studio = (path) => `/svc/studio${path}`;

/** `path` with the query parameters that have a value. */
export function withQuery(path, params) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") query.set(key, String(value));
  }
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}
