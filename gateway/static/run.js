// A run's page: its jobs change state as the run's stream reports each change (no re-fetching),
// durations tick, and the log pane follows a job live. Without a job in the link it follows
// the job that is running (then the last one that ran, or the failure of a failed run);
// `#/runs/<run>/jobs/<job>` pins one, `…/L12?attempt=1` a line of one of its attempts.

import { api, download, refused, session } from "./api.js";
import { FINAL, ago, badge, commitSubject, duration, fill, h, jobLabel, setStatus, shortRef, shortSha } from "./dom.js";
import { JobLog } from "./joblog.js";
import { followStream } from "./sse.js";

const ACTIVITY_SHOWN = 200;
// A running job's heartbeats (one every few seconds) would bury what happened; `ledgerci events` has them.
const QUIET_EVENTS = new Set(["JobLeaseExtended"]);
// Changes after which the run's artifacts are read again.
const ARTIFACT_EVENTS = new Set(["ArtifactUploaded", "ArtifactsExpired"]);

function bytes(size) {
  const units = ["B", "KiB", "MiB", "GiB"];
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return `${unit ? size.toFixed(1) : size} ${units[unit]}`;
}

/** The files the run's jobs left: each a button that downloads it (the token goes in a header). */
function artifactsPanel(runId, artifacts) {
  if (!artifacts.length) return null;
  const save = (artifact) => api.artifact(runId, artifact.name)
    .then((response) => download(response, artifact.path.split("/").pop()))
    .catch((error) => window.alert(`Could not download ${artifact.name}: ${error.message}`));
  return h("section", { class: "artifacts" },
    h("h2", {}, "Artifacts"),
    h("table", {},
      h("thead", {}, h("tr", {}, ["File", "Size", "SHA-256", "Expires"].map((title) => h("th", {}, title)))),
      h("tbody", {}, artifacts.map((artifact) => h("tr", { "data-artifact": artifact.name },
        h("td", {}, artifact.removed_at
          ? h("span", { class: "muted", title: "expired and removed" }, artifact.name)
          : h("button", { type: "button", class: "link artifact", onclick: () => save(artifact) }, artifact.name)),
        h("td", {}, bytes(artifact.size)),
        h("td", { class: "mono", title: artifact.sha256 }, artifact.sha256.slice(0, 12)),
        h("td", {}, artifact.removed_at ? "expired" : h("time", { datetime: artifact.expires_at },
          new Date(artifact.expires_at).toLocaleString())))))));
}

/**
 * The job to show when none is pinned: the running one, else the last that started, else the
 * first. A failed run is opened for its failure: its first failed job, not a clean-up after it.
 */
function jobToFollow(run) {
  const jobs = run.jobs;
  const running = jobs.find((job) => job.status === "running");
  if (running) return running;
  const failed = run.status === "failed" && jobs.find((job) => job.status === "failed");
  if (failed) return failed;
  const started = jobs.filter((job) => job.started_at);
  return started.length ? started[started.length - 1] : jobs[0];
}

/** `#/runs/<run>/jobs/<job>`, with `attempt` (null: the current one) and `line` when given. */
function jobHref(runId, jobId, attempt = null, line = null) {
  return `#/runs/${runId}/jobs/${jobId}${line ? `/L${line}` : ""}${attempt ? `?attempt=${attempt}` : ""}`;
}

export function mountRun(main, { runId, jobId, attempt, line }, { setCrumbs, setConnection }) {
  let run = null;
  let pinned = jobId;
  let wanted = { attempt, line }; // the attempt and line the link asks for; the line, once
  let shownJob = null;
  const events = new Map(); // version -> event: the history, then each streamed change, once

  const head = h("section", { class: "run-head" }, h("p", { class: "muted" }, "Connecting…"));
  const jobList = h("ol", { class: "jobs", "aria-label": "jobs" });
  const logTitle = h("div", { class: "log-title" });
  const jobLog = new JobLog({ lineLink: (job, shown, number) => jobHref(runId, job, shown, number) });
  const activity = h("ol", { class: "activity" });
  const artifacts = h("div");
  main.replaceChildren(h("div", { class: "run-page" },
    head,
    h("div", { class: "run-body" },
      h("aside", {}, h("h2", {}, "Jobs"), jobList),
      h("section", { class: "log-pane" }, logTitle, jobLog.element)),
    artifacts,
    h("details", { class: "activity-frame" }, h("summary", {}, "Activity (the run's events)"), activity)));

  function renderHead() {
    const final = FINAL.has(run.status);
    const action = final
      ? h("button", { type: "button", class: "secondary", onclick: rerun }, "Re-run")
      : h("button", { type: "button", class: "danger", onclick: cancel }, "Cancel");
    fill(head,
      h("div", { class: "run-title" },
        badge(run.status),
        h("h1", {}, h("a", { href: `#/?repository=${encodeURIComponent(run.repository_id)}` }, run.repository_id),
          " ", h("span", { class: "mono" }, shortSha(run.commit))),
        action),
      commitSubject(run),
      h("dl", { class: "facts" },
        h("dt", {}, "Ref"), h("dd", {}, shortRef(run.ref)),
        h("dt", {}, "Commit"), h("dd", { class: "mono" }, run.commit),
        h("dt", {}, "Created"), h("dd", {}, ago(run.created_at)),
        h("dt", {}, "Duration"), h("dd", {}, duration(run.created_at, run.finished_at)),
        run.concurrency_group ? [h("dt", {}, "Group"), h("dd", { class: "mono" }, run.concurrency_group)] : null),
      // Why the first job has not been queued: the run's concurrency group is held.
      run.waiting ? h("p", { class: "notice" }, run.waiting) : null,
      // Why a run was skipped (a branch filter, no workflow) or superseded by a newer run of
      // its group is news, not a failure.
      run.error ? h("p", { class: run.status === "failed" ? "problem" : "notice" }, run.error) : null);
  }

  // Rows are kept per job and changed in place, so a change does not rebuild what the reader
  // is hovering, focusing or (in the tests) holding.
  const rows = new Map();

  function jobRow(job) {
    let row = rows.get(job.id);
    if (!row) {
      row = { badge: badge(job.status), name: h("span", { class: "name" }), time: h("span") };
      row.link = h("a", { href: `#/runs/${run.id}/jobs/${job.id}`, "data-job-id": job.id, "data-job-name": job.name },
        row.badge, row.name, row.time);
      row.item = h("li", {}, row.link);
      rows.set(job.id, row);
    }
    row.link.className = `job status-${job.status}`;
    row.link.dataset.status = job.status;
    if (job.id === shownJob) row.link.setAttribute("aria-current", "true");
    else row.link.removeAttribute("aria-current");
    setStatus(row.badge, job.status);
    row.name.textContent = jobLabel(job);
    const time = duration(job.started_at, job.finished_at);
    row.time.replaceWith(time);
    row.time = time;
    return row.item;
  }

  function renderJobs() {
    if (!run.jobs.length) {
      jobList.replaceChildren(h("li", { class: "muted" }, FINAL.has(run.status) ? "No jobs ran." : "Planning…"));
      return;
    }
    const items = run.jobs.map(jobRow);
    if (items.some((item, i) => jobList.children[i] !== item) || jobList.children.length !== items.length) {
      jobList.replaceChildren(...items);
    }
  }

  function renderLogTitle() {
    const job = run.jobs.find((j) => j.id === shownJob);
    if (!job) {
      if (FINAL.has(run.status)) fill(logTitle, h("strong", {}, "No jobs"));
      return;
    }
    const skipped = job.status === "skipped";
    fill(logTitle,
      h("strong", {}, jobLabel(job)), badge(job.status), duration(job.started_at, job.finished_at),
      job.error ? h("span", { class: skipped ? "muted" : "problem-inline" }, job.error) : null,
      job.exit_code !== null && !job.error ? h("span", { class: "muted" }, `exit code ${job.exit_code}`) : null,
      h("span", { class: "spacer" }),
      jobLog.attemptPicker(job, (attempt) => jobHref(run.id, job.id, attempt)),
      jobLog.rawButton(job),
      pinned ? h("a", { href: `#/runs/${run.id}`, title: "show whichever job is running" }, "Follow the run") : null,
      h("a", { href: `#/jobs/${job.id}`, title: "a link to this log alone" }, "Log only"));
  }

  function showLog() {
    const job = pinned ? run.jobs.find((j) => j.id === pinned) : jobToFollow(run);
    if (!job) {
      // A run that ended without jobs has no output to wait for: say why instead.
      if (FINAL.has(run.status)) {
        jobLog.view.setEmptyText(run.error ? `This run has no jobs: ${run.error}` : "This run has no jobs.");
        jobLog.view.tools.hidden = true; // nothing to search
      }
      return;
    }
    if (job.id === shownJob && wanted === null) return;
    shownJob = job.id;
    jobLog.show(job.id, { attempt: wanted?.attempt ?? null, line: wanted?.line ?? null, known: true });
    wanted = null;
  }

  function render() {
    renderHead();
    showLog();
    renderJobs();
    renderLogTitle();
    setCrumbs([["Runs", "#/"], [run.repository_id, `#/?repository=${encodeURIComponent(run.repository_id)}`],
      [`run ${shortSha(run.commit)}`, null]]);
  }

  function renderActivity() {
    const names = new Map((run?.jobs || []).map((job) => [job.id, job.name]));
    const recent = [...events.values()].filter((event) => !QUIET_EVENTS.has(event.type))
      .sort((a, b) => b.version - a.version).slice(0, ACTIVITY_SHOWN);
    fill(activity, recent.map((event) => h("li", {},
      h("span", { class: "mono muted" }, `v${event.version}`),
      h("time", { datetime: event.at, title: event.at }, new Date(event.at).toLocaleTimeString()),
      h("strong", {}, event.type),
      h("span", {}, event.data?.job_id ? names.get(event.data.job_id) || event.data.job_id : ""),
      h("span", { class: "muted" }, event.actor || ""))));
  }

  async function loadHistory() {
    try {
      for (const event of (await api.events(runId)).events) events.set(event.version, event);
      renderActivity();
    } catch {
      // The history is extra: the live view does not need it.
    }
  }

  async function loadArtifacts() {
    try {
      artifacts.replaceChildren(...[artifactsPanel(runId, (await api.artifacts(runId)).artifacts)].filter(Boolean));
    } catch {
      // The list is extra: the run's page does not need it.
    }
  }

  async function cancel() {
    await api.cancel(run.id).catch((error) => window.alert(`Could not cancel: ${error.message}`));
  }

  async function rerun() {
    try {
      const answer = await api.rerun(run.id);
      window.location.hash = `#/runs/${answer.run_id}`;
    } catch (error) {
      window.alert(`Could not re-run: ${error.message}`);
    }
  }

  const runStream = followStream(api.runStream(runId), {
    token: session.token,
    onState: (state, error) => {
      setConnection(state);
      if (state !== "refused") return;
      refused(error.status);
      head.replaceChildren(h("p", { class: "problem" },
        error.status === 404 ? "No such run (or it is another tenant's)." : `The run's stream refused: ${error.message}`));
    },
    onMessage: ({ event, data }) => {
      if (event === "end") return; // the last change already carried the final state
      const change = JSON.parse(data);
      run = change.run;
      if (change.event) events.set(change.event.version, change.event);
      if (ARTIFACT_EVENTS.has(change.event?.type)) loadArtifacts();
      render();
      renderActivity();
    },
  });
  loadHistory();
  loadArtifacts();

  return {
    /** Another job of the same run: switch the log, keep the run's stream. */
    update(next) {
      if (next.name !== "run" || next.runId !== runId) return false;
      pinned = next.jobId;
      wanted = { attempt: next.attempt, line: next.line };
      if (run) render();
      return true;
    },
    dispose() {
      runStream.close();
      jobLog.close();
    },
  };
}
