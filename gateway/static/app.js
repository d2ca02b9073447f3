// The dashboard's shell: sign-in, hash routes (links that can be shared), the breadcrumbs, the
// live-connection light, and the one ticker that moves running durations forward.

import { UNAUTHORIZED, api, session } from "./api.js";
import { h, tick } from "./dom.js";
import { mountJob } from "./jobpage.js";
import { mountRun } from "./run.js";
import { mountRuns } from "./runs.js";

const main = document.getElementById("main");
const crumbs = document.getElementById("crumbs");
const who = document.getElementById("who");
const connection = document.getElementById("connection");
let view = null;

function setCrumbs(items) {
  crumbs.replaceChildren(...items.flatMap(([label, href], i) => [
    i ? h("span", { class: "sep" }, "/") : null,
    href ? h("a", { href }, label) : h("span", {}, label),
  ].filter(Boolean)));
}

const CONNECTION_TITLES = {
  connecting: "connecting…", live: "live", reconnecting: "reconnecting…", ended: "finished: nothing more to follow",
  closed: "closed", refused: "refused",
};

function setConnection(state) {
  connection.dataset.state = state;
  connection.title = CONNECTION_TITLES[state] || state;
  connection.textContent = state === "live" ? "live" : state === "reconnecting" ? "reconnecting" : "";
}

/**
 * `#/runs/<id>`, `#/runs/<id>/jobs/<id>`, `#/jobs/<id>`, or the list (`#/?repository=…&status=…`).
 * A job's link may name a line (`…/L123`) and an attempt (`?attempt=1`; none: the current one).
 */
function parseRoute(hash) {
  const [path, query = ""] = hash.replace(/^#/, "").split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const line = parts.length > 2 && /^L[1-9]\d*$/.test(parts[parts.length - 1]) ? Number(parts.pop().slice(1)) : null;
  const attempt = /^[1-9]\d*$/.test(params.get("attempt") || "") ? Number(params.get("attempt")) : null;
  if (parts[0] === "runs" && parts[1] && (parts.length === 2 || (parts[2] === "jobs" && parts[3]))) {
    return { name: "run", runId: parts[1], jobId: parts[3] || null, attempt, line };
  }
  if (parts[0] === "jobs" && parts[1]) return { name: "job", jobId: parts[1], attempt, line };
  return { name: "runs", params };
}

const MOUNTS = {
  runs: (route, context) => mountRuns(main, route.params, context),
  run: (route, context) => mountRun(main, route, context),
  job: (route, context) => mountJob(main, route, context),
};

function route() {
  if (!session.token) {
    showSignIn();
    return;
  }
  who.hidden = false;
  const next = parseRoute(window.location.hash);
  if (view?.update?.(next)) return;
  view?.dispose();
  setConnection("");
  view = MOUNTS[next.name](next, { setCrumbs, setConnection });
}

function showSignIn(message) {
  view?.dispose();
  view = null;
  who.hidden = true;
  setCrumbs([]);
  const token = h("input", { type: "password", name: "token", id: "token", autocomplete: "current-password",
    required: true, placeholder: "a tenant or admin token" });
  const problem = h("p", { class: "problem", hidden: !message }, message || "");
  const form = h("form", { class: "sign-in" },
    h("h1", {}, "Sign in"),
    h("p", { class: "muted" }, "The token stays in this browser (localStorage) and goes with every request."),
    h("label", { for: "token" }, "Token"), token, problem,
    h("button", { type: "submit" }, "Sign in"));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      await api.runs({ limit: 1 }, token.value.trim()); // one cheap call proves the token works
      session.signIn(token.value.trim());
      route();
    } catch (error) {
      problem.textContent = error.status === 401 ? "That token was refused." : `Could not sign in: ${error.message}`;
      problem.hidden = false;
    }
  });
  main.replaceChildren(form);
  token.focus();
}

document.getElementById("sign-out").addEventListener("click", () => {
  session.signOut();
  showSignIn();
});
window.addEventListener(UNAUTHORIZED, () => {
  session.signOut();
  showSignIn("The token was refused (revoked?). Sign in again.");
});
window.addEventListener("hashchange", route);
setInterval(tick, 1000);
route();
