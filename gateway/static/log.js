// A job's log, following live: scrollback from the start, then each chunk as the runner sends it.
// Auto-scroll follows the end only while the reader is at the bottom; scrolling up stops it,
// and scrolling back down (or the "Follow" button) resumes it.

import { api, refused, session } from "./api.js";
import { AnsiRenderer } from "./ansi.js";
import { h } from "./dom.js";
import { followStream } from "./sse.js";

// How close to the bottom (in pixels) still counts as "at the bottom": zoom and rounding.
const BOTTOM_SLACK = 8;

export class LogView {
  constructor() {
    this.renderer = new AnsiRenderer();
    this.output = h("pre", { class: "log", tabindex: "0", "aria-live": "off" });
    this.follow = h("button", { type: "button", class: "follow", hidden: true }, "↓ Follow");
    this.element = h("div", { class: "log-frame" }, this.output, this.follow);
    this.sticky = true;
    this.output.addEventListener("scroll", () => {
      this.sticky = this.#atBottom();
      this.follow.hidden = this.sticky;
    });
    this.follow.addEventListener("click", () => this.#scrollToEnd());
  }

  #atBottom() {
    const o = this.output;
    return o.scrollHeight - o.scrollTop - o.clientHeight <= BOTTOM_SLACK;
  }

  #scrollToEnd() {
    this.output.scrollTop = this.output.scrollHeight;
    this.sticky = true;
    this.follow.hidden = true;
  }

  #add(node) {
    this.output.append(node);
    if (this.sticky) this.#scrollToEnd();
  }

  append(text) {
    this.#add(this.renderer.render(text));
  }

  /** A line of our own (not the job's output): where an attempt starts, how the job ended. */
  note(text, kind = "info") {
    this.renderer.reset();
    this.#add(h("div", { class: `log-note log-note-${kind}` }, text));
  }

  clear() {
    this.output.replaceChildren();
    this.renderer.reset();
    this.#scrollToEnd();
  }
}

/**
 * Streams job `jobId`'s log into `view`; onEnd gets {status, exit_code, error}. Returns close().
 * `known`: the run's stream has just shown this job, so a 404 means the gateway's read model has
 * not caught up yet, for a few seconds at most.
 */
export function followLog(jobId, view, { onEnd = () => {}, onState = () => {}, known = false } = {}) {
  let attempt = null;
  return followStream(api.logStream(jobId), {
    token: session.token,
    notFoundRetries: known ? 20 : 0,
    onState: (state, error) => {
      if (state === "refused") {
        refused(error.status);
        view.note(error.status === 404 ? "No such job (or not yours)." : error.message, "error");
      }
      onState(state);
    },
    onMessage: ({ event, data }) => {
      if (event === "log") {
        const chunk = JSON.parse(data);
        if (attempt !== null && chunk.attempt !== attempt) view.note(`attempt ${chunk.attempt}`);
        attempt = chunk.attempt;
        view.append(chunk.text);
      } else if (event === "attempt") {
        const next = JSON.parse(data).attempt;
        // A retry starts its log afresh; the earlier attempt's output stays above the line.
        if (next !== attempt) view.note(`attempt ${next}`);
        attempt = next;
      } else if (event === "end") {
        const end = JSON.parse(data);
        // The error says more than the exit code ("timed out", "runner lost", or the exit code itself).
        const exit = end.exit_code === null || end.exit_code === undefined ? null : `exit code ${end.exit_code}`;
        const how = [end.status, end.error || exit].filter(Boolean).join(" · ");
        view.note(`job ${how}`, end.status === "succeeded" ? "ok" : "error");
        onEnd(end);
      }
    },
  });
}
