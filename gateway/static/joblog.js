// One job's log on a page (the run page's pane, or the log alone): which attempt it shows, the
// line a link asked for, the attempt picker and the raw download. Asking for another line of
// the log already shown moves to it; only another job or attempt fetches a log again.

import { h } from "./dom.js";
import { LogView } from "./log.js";
import { downloadLog, followLog } from "./logsource.js";

export class JobLog {
  /** `lineLink(jobId, attempt, number)`: a line's link. The callbacks go to followLog. */
  constructor({ lineLink, onInfo, onEnd, onState } = {}) {
    this.view = new LogView({ lineLink: (attempt, number) => lineLink(this.jobId, attempt, number) });
    this.callbacks = { onInfo, onEnd, onState };
    this.jobId = null;
    this.attempt = null; // null: the current attempt, then any retry after it
    this.stream = null;
  }

  get element() {
    return this.view.element;
  }

  /** The attempt on screen: the one asked for, else the latest the log has shown. */
  get shownAttempt() {
    return this.attempt ?? this.view.attempt;
  }

  /** Shows `jobId`'s log: `attempt` alone (null: the current one, following retries), at `line`. */
  show(jobId, { attempt = null, line = null, known = false } = {}) {
    const shown = jobId === this.jobId
      && (attempt === this.attempt || (this.attempt === null && attempt !== null && this.view.hasAttempt(attempt)));
    if (!shown) {
      this.stream?.close();
      this.view.clear();
      this.jobId = jobId;
      this.attempt = attempt;
      this.stream = followLog(jobId, this.view, { attempt, known, ...this.callbacks });
    }
    if (line !== null) this.view.goToLine(attempt, line);
  }

  /** The picker of earlier attempts, for a job that has any; `href(attempt)` is where each goes. */
  attemptPicker(job, href) {
    if (job.attempt < 2) return null;
    const shown = this.attempt === null || this.attempt === job.attempt ? "" : String(this.attempt);
    const options = [];
    for (let n = job.attempt; n >= 1; n--) {
      const value = n === job.attempt ? "" : String(n);
      options.push(h("option", { value, selected: value === shown }, n === job.attempt ? `attempt ${n} (latest)` : `attempt ${n}`));
    }
    const select = h("select", { class: "attempt-picker", "aria-label": "attempt" }, options);
    select.addEventListener("change", () => {
      window.location.hash = href(select.value ? Number(select.value) : null);
    });
    return select;
  }

  rawButton(job) {
    return h("button", { type: "button", class: "link raw-log", title: "the whole log as a text file",
      onclick: () => {
        const attempt = this.shownAttempt;
        downloadLog(job.id, attempt, `${job.name}${attempt ? `-attempt-${attempt}` : ""}.log`)
          .catch((error) => window.alert(`Could not download the log: ${error.message}`));
      } }, "Raw log");
  }

  close() {
    this.stream?.close();
  }
}
