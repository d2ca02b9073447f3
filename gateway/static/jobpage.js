// A job's log alone (`#/jobs/<id>`, `…/L12?attempt=1`): for sharing a log. The log's answer names
// the job's run, and the run names the job, its repository and its commit; the job's status
// comes from the log's end.

import { api } from "./api.js";
import { badge, commitSubject, fill, h, jobLabel, shortSha } from "./dom.js";
import { JobLog } from "./joblog.js";

/** `#/jobs/<job>`, with `attempt` (null: the current one) and `line` when given. */
function jobHref(jobId, attempt = null, line = null) {
  return `#/jobs/${jobId}${line ? `/L${line}` : ""}${attempt ? `?attempt=${attempt}` : ""}`;
}

export function mountJob(main, { jobId, attempt = null, line = null }, { setCrumbs, setConnection }) {
  let described = null; // {run, job} once the run has been read
  const state = h("span", {}, h("span", { class: "badge" }, "following"));
  const title = h("div", { class: "log-title" }, h("strong", {}, `Job ${jobId.slice(0, 8)}`), state);
  const jobLog = new JobLog({
    lineLink: (job, shown, number) => jobHref(job, shown, number),
    onState: setConnection,
    onEnd: (end) => state.replaceChildren(badge(end.status)),
    onInfo: ({ runId }) => describe(runId),
  });
  main.replaceChildren(h("div", { class: "job-page" }, title, jobLog.element));
  setCrumbs([["Runs", "#/"], [`job ${jobId.slice(0, 8)}`, null]]);
  jobLog.show(jobId, { attempt, line });

  async function describe(runId) {
    if (!runId || described) {
      renderTitle();
      return;
    }
    try {
      const run = await api.run(runId);
      described = { run, job: run.jobs.find((job) => job.id === jobId) };
    } catch {
      return; // the log is what the page is for; naming it is a courtesy
    }
    renderTitle();
  }

  function renderTitle() {
    if (!described?.job) return;
    const { run, job } = described;
    const repository = `#/?repository=${encodeURIComponent(run.repository_id)}`;
    fill(title,
      h("strong", {}, jobLabel(job)), state,
      h("span", { class: "muted" }, "in"), h("a", { href: `#/runs/${run.id}/jobs/${job.id}` }, `run ${shortSha(run.commit)}`),
      h("span", { class: "muted" }, "of"), h("a", { href: repository }, run.repository_id),
      commitSubject(run, "span"),
      h("span", { class: "spacer" }),
      jobLog.attemptPicker(job, (shown) => jobHref(job.id, shown)),
      jobLog.rawButton(job));
    setCrumbs([["Runs", "#/"], [run.repository_id, repository], [`run ${shortSha(run.commit)}`, `#/runs/${run.id}`],
      [job.name, null]]);
  }

  return {
    /** Another line or attempt of the same job: the log already here moves, or changes attempt. */
    update(next) {
      if (next.name !== "job" || next.jobId !== jobId) return false;
      jobLog.show(jobId, { attempt: next.attempt, line: next.line });
      renderTitle();
      return true;
    },
    dispose: () => jobLog.close(),
  };
}
