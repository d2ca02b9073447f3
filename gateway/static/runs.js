// The runs list: every repository with the status of its latest run, and the runs themselves,
// newest first, filtered by repository and status (kept in the link: `#/?repository=web`).
//
// It re-reads the list every REFRESH_MS while the tab is visible rather than opening a stream
// per run: a browser allows about six HTTP/1.1 connections per host, and a page of 50 runs
// holding streams would leave none for anything else. The run page is the live one.

import { api } from "./api.js";
import { FINAL, ago, badge, commitSubject, duration, h, shortRef, shortSha } from "./dom.js";

const REFRESH_MS = 5000;
const PAGE = 50;
// Enough recent runs to name the active repositories and their latest status.
const OVERVIEW = 200;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled", "skipped"];

function link(filters) {
  const query = new URLSearchParams(Object.entries(filters).filter(([, v]) => v)).toString();
  return query ? `#/?${query}` : "#/";
}

function repositories(runs, filters) {
  const latest = new Map();
  for (const run of runs) if (!latest.has(run.repository_id)) latest.set(run.repository_id, run);
  const items = [...latest.values()].sort((a, b) => a.repository_id.localeCompare(b.repository_id));
  return h("nav", { class: "repos", "aria-label": "repositories" },
    h("h2", {}, "Repositories"),
    h("a", { href: link({ status: filters.status }), class: filters.repository ? "" : "current" }, "All repositories"),
    items.map((run) => h("a", {
      href: link({ ...filters, repository: run.repository_id }),
      class: run.repository_id === filters.repository ? "current" : "",
      "data-repository": run.repository_id,
    }, h("span", { class: `dot status-${run.status}`, title: `latest run ${run.status}` }), run.repository_id)),
    items.length ? null : h("p", { class: "muted" }, "No runs yet."));
}

function table(runs) {
  if (!runs.length) return h("p", { class: "empty" }, "No runs match.");
  return h("table", { class: "runs" },
    h("thead", {}, h("tr", {}, ["Status", "Repository", "Commit", "Ref", "Pushed", "Duration"].map((t) => h("th", {}, t)))),
    h("tbody", {}, runs.map((run) => h("tr", { "data-run": run.id, class: "clickable" },
      h("td", {}, badge(run.status)),
      h("td", {}, h("a", { href: `#/runs/${run.id}` }, run.repository_id)),
      h("td", { class: "commit" }, h("span", { class: "mono" }, shortSha(run.commit)), commitSubject(run, "span")),
      h("td", {}, shortRef(run.ref)),
      h("td", {}, ago(run.created_at)),
      h("td", {}, duration(run.created_at, FINAL.has(run.status) ? run.finished_at || run.created_at : null)),
    ))));
}

/** A repository's schedules: when each fires next, and its last firings (links to their runs). */
function schedulesPanel({ schedules }) {
  if (!schedules.length) return null;
  return h("section", { class: "schedules" },
    h("h2", {}, "Schedules"),
    h("table", {},
      h("thead", {}, h("tr", {}, ["Cron (UTC)", "Branch", "Next", "Last firings"].map((t) => h("th", {}, t)))),
      h("tbody", {}, schedules.map((s) => h("tr", { "data-schedule": s.cron },
        h("td", { class: "mono" }, s.cron),
        h("td", {}, s.branch),
        h("td", { title: s.next_at }, s.next_at),
        h("td", {}, s.last_firings.length ? s.last_firings.map((f) => h("a", {
          href: `#/runs/${f.run_id}`, title: `for ${f.scheduled_for}`, class: "firing" }, badge(f.status)))
          : h("span", { class: "muted" }, "none yet")))))));
}

export function mountRuns(main, params, { setCrumbs }) {
  const filters = { repository: params.get("repository") || "", status: params.get("status") || "" };
  let shown = PAGE;
  let nextCursor = null;
  let timer = null;
  let disposed = false;

  const statusSelect = h("select", { "aria-label": "status" },
    h("option", { value: "" }, "Any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filters.status }, s)));
  statusSelect.addEventListener("change", () => { window.location.hash = link({ ...filters, status: statusSelect.value }); });
  const more = h("button", { type: "button", class: "secondary", hidden: true }, "Older runs");
  more.addEventListener("click", () => { shown += PAGE; refresh(); });
  const sidebar = h("div");
  const schedules = h("div");
  const list = h("div", { class: "list" }, h("p", { class: "muted" }, "Loading…"));
  const problem = h("p", { class: "problem", hidden: true });
  main.replaceChildren(h("div", { class: "runs-page" }, sidebar,
    h("section", {},
      h("div", { class: "toolbar" }, h("h1", {}, filters.repository || "All runs"), statusSelect),
      problem, schedules, list, more)));
  setCrumbs(filters.repository ? [["Runs", "#/"], [filters.repository, null]] : [["Runs", null]]);

  async function refresh() {
    clearTimeout(timer);
    try {
      const [overview, page, scheduled] = await Promise.all([
        api.runs({ limit: OVERVIEW }),
        api.runs({ repository_id: filters.repository, status: filters.status, limit: Math.min(shown, 500) }),
        filters.repository ? api.schedules(filters.repository) : { schedules: [] },
      ]);
      if (disposed) return;
      sidebar.replaceChildren(repositories(overview.runs, filters));
      schedules.replaceChildren(...[schedulesPanel(scheduled)].filter(Boolean));
      list.replaceChildren(table(page.runs));
      nextCursor = page.next_cursor;
      more.hidden = !nextCursor || shown >= 500;
      problem.hidden = true;
    } catch (error) {
      if (disposed) return;
      problem.textContent = `Could not load the runs: ${error.message}`;
      problem.hidden = false;
    }
    if (!disposed && document.visibilityState === "visible") timer = setTimeout(refresh, REFRESH_MS);
  }

  const onVisible = () => { if (document.visibilityState === "visible") refresh(); };
  document.addEventListener("visibilitychange", onVisible);
  list.addEventListener("click", (event) => {
    const row = event.target.closest("tr[data-run]");
    if (row && !event.target.closest("a")) window.location.hash = `#/runs/${row.dataset.run}`;
  });
  refresh();
  return {
    dispose() {
      disposed = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisible);
    },
  };
}
