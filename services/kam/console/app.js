// The console's shell: who is signed in, the navigation their role allows, and the router.
// Pages live in their own modules (client.js, admin.js, jobs.js, studio.js); each exports
// `routes`: `{ path: "/requests/:id", title, roles: ["client", "admin"], nav?, view }`, where
// `view(main, params, page)` draws into `main` and registers clean-ups with `page.onLeave(fn)`
// (an open stream of live updates, a timer). Routes are in the URL's fragment (#/requests/r1),
// so every page has an address a user can bookmark or share, and the server serves one page.

import { ApiError, get, kam, post } from "./api.js";
import { button, h, notFound, notify, replace } from "./ui.js";
import { routes as admin } from "./admin.js";
import { routes as client } from "./client.js";
import { routes as jobs } from "./jobs.js";
import { routes as studio } from "./studio.js";

const ROUTES = [...client, ...admin, ...jobs, ...studio];

const state = { session: null, leave: [], render: 0 };

/** The signed-in user, or null. `{ user: {id, username, role, client_id, display_name}, ... }` */
export function session() {
  return state.session;
}

function compile(path) {
  const names = [];
  const pattern = path.replace(/:([a-z_]+)/g, (_, name) => {
    names.push(name);
    return "([^/]+)";
  });
  return { regex: new RegExp(`^${pattern}$`), names };
}

const compiled = ROUTES.map((route) => ({ route, ...compile(route.path) }));

function match(path, role) {
  for (const { route, regex, names } of compiled) {
    const found = regex.exec(path);
    if (!found) continue;
    if (route.roles && !route.roles.includes(role)) continue;
    const params = Object.fromEntries(names.map((name, i) => [name, decodeURIComponent(found[i + 1])]));
    return { route, params };
  }
  return null;
}

function leave() {
  for (const fn of state.leave.splice(0)) {
    try {
      fn();
    } catch (error) {
      console.error(error);
    }
  }
}

function drawNav(role) {
  const nav = document.getElementById("nav");
  const current = location.hash.slice(1) || "/";
  const items = ROUTES.filter((r) => r.nav && (!r.roles || r.roles.includes(role)));
  replace(
    nav,
    h(
      "ul",
      {},
      items.map((r) => {
        const active = current === r.path || (r.path !== "/" && current.startsWith(`${r.path}/`));
        return h("li", {}, h("a", { href: `#${r.path}`, "aria-current": active ? "page" : undefined }, r.nav));
      }),
    ),
  );
  const who = document.getElementById("who");
  const user = state.session.user;
  replace(
    who,
    h("span", { class: "muted" }, `${user.display_name || user.username} · ${role}`),
    button("Sign out", signOut, { kind: "link", busy: "Signing out…" }),
  );
  const menu = document.querySelector(".menu");
  menu.hidden = false;
}

async function signOut() {
  try {
    await post(kam("/auth/logout"), {}, { quiet: true });
  } catch (error) {
    if (!(error instanceof ApiError) || error.status !== 401) notify(`Sign-out: ${error.message}`, "error");
  }
  state.session = null;
  location.hash = "#/login";
  render();
}

function loginPage(main) {
  document.title = "Sign in · Nexus console";
  replace(document.getElementById("nav"));
  replace(document.getElementById("who"));
  document.querySelector(".menu").hidden = true;
  const error = h("p", { class: "error", role: "alert", hidden: true });
  const form = h(
    "form",
    { class: "card login", "aria-labelledby": "login-title" },
    h("h1", { id: "login-title" }, "Sign in"),
    h("div", { class: "field" }, h("label", { for: "login-username" }, "User name"), h("input", { id: "login-username", name: "username", autocomplete: "username", required: true })),
    h("div", { class: "field" }, h("label", { for: "login-password" }, "Password"), h("input", { id: "login-password", name: "password", type: "password", autocomplete: "current-password", required: true })),
    h(
      "fieldset",
      { class: "inline" },
      h("legend", {}, "Sign in as"),
      h("label", {}, h("input", { type: "radio", name: "loginType", value: "client", checked: true }), " Client"),
      h("label", {}, h("input", { type: "radio", name: "loginType", value: "admin" }), " Administrator"),
    ),
    error,
    h("button", { type: "submit", class: "btn btn-primary" }, "Sign in"),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const data = new FormData(form);
    const submit = form.querySelector("button[type=submit]");
    submit.disabled = true;
    error.hidden = true;
    try {
      await post(kam("/auth/login"), {
        username: data.get("username"),
        password: data.get("password"),
        loginType: data.get("loginType"),
      }, { quiet: true });
      state.session = await get(kam("/auth/session"), { quiet: true });
      location.hash = "#/";
      render();
    } catch (failure) {
      error.textContent = failure.status === 429 ? `Too many attempts: ${failure.message}` : failure.message;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  replace(main, form);
  form.querySelector("input").focus();
}

/**
 * Draw the page the URL names (the login page when nobody is signed in).
 *
 * Each render draws into a frame of its own. A view still loading when the user moves on keeps
 * drawing into its frame, which is no longer in the page, and a clean-up it registers late runs
 * at once: a slow page never draws over the next one nor leaves its stream open.
 */
export async function render() {
  leave();
  const token = ++state.render;
  const current = () => token === state.render;
  const main = document.getElementById("main");
  if (!state.session) {
    try {
      state.session = await get(kam("/auth/session"), { quiet: true });
    } catch {
      state.session = null;
    }
  }
  if (!state.session) {
    loginPage(main);
    return;
  }
  const role = state.session.user.role;
  let path = location.hash.slice(1) || "/";
  if (path === "/login") path = "/";
  drawNav(role);
  const found = match(path, role);
  if (!found) {
    document.title = "Not found · Nexus console";
    replace(main, notFound());
    return;
  }
  document.title = `${found.route.title || "Nexus"} · Nexus console`;
  const frame = h("div", { class: "page" }, h("p", { class: "muted" }, "Loading…"));
  replace(main, frame);
  const page = {
    onLeave: (fn) => (current() ? state.leave.push(fn) : fn()),
    get current() {
      return current();
    },
    role,
    session: state.session,
  };
  try {
    await found.route.view(frame, found.params, page);
  } catch (error) {
    if (!current()) return;
    if (error instanceof ApiError && error.status === 404) {
      replace(frame, notFound());
    } else if (error instanceof ApiError && error.status === 401) {
      state.session = null;
      loginPage(main);
    } else {
      console.error(error);
      replace(frame, h("p", { class: "error", role: "alert" }, `Something went wrong: ${error.message}`));
    }
  }
  if (current()) main.focus({ preventScroll: true });
}

window.addEventListener("hashchange", render);
window.addEventListener("nexus:unauthorized", () => {
  state.session = null;
  render();
});
document.addEventListener("DOMContentLoaded", () => {
  const menu = document.querySelector(".menu");
  menu.addEventListener("click", () => {
    const open = menu.getAttribute("aria-expanded") === "true";
    menu.setAttribute("aria-expanded", String(!open));
    document.getElementById("nav").classList.toggle("open", !open);
  });
  render();
});
