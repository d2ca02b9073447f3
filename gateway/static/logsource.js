// Where a log view's text comes from. What the job has logged so far comes in one plain-text
// answer (a 16 MiB log as JSON events would cost the browser seconds to parse); the log's
// stream then carries on from the byte where that answer ended, live, to the job's end.
// Also the raw download, which needs the token as every call does, so it goes through fetch.

import { ApiError, api, download, refused, session } from "./api.js";
import { followStream } from "./sse.js";

// Text is handed to the view in slices of about this many characters, with a pause between
// them in which the page answers clicks and keys.
const SLICE = 1 << 20;
// How long to wait for a job the run's stream has just shown but the log's read model has not yet.
const NOT_YET_MS = 250;
const NOT_YET_TRIES = 20;

const nextTask = () => new Promise((resolve) => setTimeout(resolve, 0));

/** The length of `bytes` without a UTF-8 character cut at the end (a running job's last write). */
export function wholeCharacters(bytes) {
  let start = bytes.length - 1;
  while (start >= 0 && bytes.length - start < 4 && (bytes[start] & 0xc0) === 0x80) start--;
  if (start < 0 || bytes[start] < 0xc0) return bytes.length;
  const size = bytes[start] >= 0xf0 ? 4 : bytes[start] >= 0xe0 ? 3 : 2;
  return bytes.length - start < size ? start : bytes.length;
}

async function fetchLog(jobId, attempt, signal, known) {
  for (let tries = known ? NOT_YET_TRIES : 0; ; tries--) {
    try {
      return await api.log(jobId, attempt, signal);
    } catch (error) {
      if (!(error instanceof ApiError) || error.status !== 404 || tries <= 0) throw error;
      await new Promise((resolve) => setTimeout(resolve, NOT_YET_MS));
    }
  }
}

/** "job succeeded", "job failed · exit code 2", "attempt 1 abandoned · timed out" */
export function describeEnd(end, attempt = null) {
  // The error says more than the exit code ("timed out", "runner lost", or the exit code itself).
  const exit = end.exit_code === null || end.exit_code === undefined ? null : `exit code ${end.exit_code}`;
  const who = attempt === null ? "job" : `attempt ${attempt}`;
  return `${who} ${[end.status, end.error || exit].filter(Boolean).join(" · ")}`;
}

/** Only a failure is an error; skipped, cancelled or abandoned are not the job's fault. */
export const endKind = (status) => ({ succeeded: "ok", failed: "error" })[status] || "info";

/**
 * Shows job `jobId`'s log in `view`: the current attempt, following later ones, or `attempt`
 * alone. onInfo gets {runId, attempt, status} once the first answer names them; onEnd gets
 * {status, exit_code, error}. `known`: the run's stream has just shown this job, so a 404 means
 * the gateway's read model has not caught up yet, for a few seconds at most. Returns close().
 */
export function followLog(jobId, view, { attempt = null, known = false, onInfo = () => {}, onEnd = () => {},
  onState = () => {} } = {}) {
  const controller = new AbortController();
  let stream = null;

  function refusedWith(error) {
    refused(error.status);
    // A 404 for an attempt says which attempts there are; for the job, say it plainly.
    view.note(error.status === 404 && attempt === null ? "No such job (or not yours)." : error.message, "error");
    onState("refused", error);
  }

  (async () => {
    onState("connecting");
    let response;
    try {
      response = await fetchLog(jobId, attempt, controller.signal, known);
    } catch (error) {
      if (!controller.signal.aborted) refusedWith(error);
      return;
    }
    const shown = Number(response.headers.get("X-Job-Attempt") || 0);
    onInfo({ runId: response.headers.get("X-Run-Id"), attempt: shown, status: response.headers.get("X-Job-Status") });
    let bytes;
    try {
      bytes = new Uint8Array(await response.arrayBuffer());
    } catch {
      bytes = new Uint8Array(0); // closed, or dropped: the stream below reads it all again
    }
    if (controller.signal.aborted) return;
    const whole = wholeCharacters(bytes);
    const text = new TextDecoder().decode(bytes.subarray(0, whole));
    if (shown) view.startAttempt(shown);
    for (let at = 0; at < text.length;) {
      let end = Math.min(text.length, at + SLICE);
      if (end < text.length) end = text.indexOf("\n", end) + 1 || text.length; // a slice ends with a line
      view.append(text.slice(at, end));
      at = end;
      await nextTask();
      if (controller.signal.aborted) return;
    }
    stream = followStream(api.logStream(jobId, attempt), {
      token: session.token,
      // Ids are `<attempt>-<byte offset>`: the stream resumes after the bytes read above.
      lastEventId: shown ? `${shown}-${whole}` : "",
      notFoundRetries: known ? NOT_YET_TRIES : 0,
      onState: (state, error) => (state === "refused" ? refusedWith(error) : onState(state)),
      onMessage: ({ event, data }) => {
        if (event === "log") {
          const chunk = JSON.parse(data);
          view.append(chunk.text, chunk.attempt);
        } else if (event === "attempt") {
          view.startAttempt(JSON.parse(data).attempt); // a retry starts afresh, below the earlier one
        } else if (event === "end") {
          const end = JSON.parse(data);
          view.note(describeEnd(end, attempt), endKind(end.status));
          onEnd(end);
        }
      },
    });
  })();

  return {
    close() {
      controller.abort();
      stream?.close();
    },
  };
}

/** Saves the attempt's whole log as a file (a link cannot carry the token; fetch can). */
export async function downloadLog(jobId, attempt, filename) {
  await download(await api.log(jobId, attempt), filename);
}
