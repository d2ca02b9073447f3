// Server-sent events over fetch(): EventSource cannot send an Authorization header, and every
// stream needs the token. The parser follows the HTML standard's event-stream rules; the reader
// reconnects with Last-Event-ID after a drop, waiting what the server's `retry:` asked for.

/** Turns event-stream text into messages; keeps the last event id and retry across reconnects. */
export class EventStreamParser {
  constructor() {
    this.lastEventId = "";
    this.retry = null;
    this.buffer = "";
    this.started = false;
    this.#resetMessage();
  }

  #resetMessage() {
    this.eventType = "";
    this.data = [];
  }

  /** Feeds decoded text; returns the messages it completed ({event, data, id}). */
  feed(text) {
    this.buffer += text;
    if (!this.started && this.buffer.length) {
      this.buffer = this.buffer.replace(/^\uFEFF/, "");
      this.started = true;
    }
    const messages = [];
    let start = 0;
    for (let i = 0; i < this.buffer.length; i++) {
      const c = this.buffer[i];
      if (c !== "\n" && c !== "\r") continue;
      // A CR at the very end may be the first half of a CRLF: wait for the next chunk.
      if (c === "\r" && i === this.buffer.length - 1) break;
      const message = this.#line(this.buffer.slice(start, i));
      if (message) messages.push(message);
      if (c === "\r" && this.buffer[i + 1] === "\n") i++;
      start = i + 1;
    }
    this.buffer = this.buffer.slice(start);
    return messages;
  }

  #line(line) {
    if (line === "") return this.#dispatch();
    if (line.startsWith(":")) return null; // a comment: keep-alives and the server's notes
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.eventType = value;
    else if (field === "data") this.data.push(value);
    else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    else if (field === "retry" && /^\d+$/.test(value)) this.retry = Number(value);
    return null;
  }

  #dispatch() {
    const message = this.data.length
      ? { event: this.eventType || "message", data: this.data.join("\n"), id: this.lastEventId }
      : null;
    this.#resetMessage();
    return message;
  }
}

/** An HTTP answer that retrying will not change (401, 403, 404): the stream stops. */
export class StreamRefused extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

const DEFAULT_RETRY_MS = 1000;
const MAX_BACKOFF_MS = 15000;

// How long to wait before asking again about something the caller knows exists but the
// gateway's read model does not show yet (it trails the event store by milliseconds).
const NOT_YET_MS = 250;

/**
 * Follows `path` until an `end` event, close(), or a refusal. onMessage gets each message;
 * onState gets "connecting" | "live" | "reconnecting" | "ended" | "closed" and, for "refused",
 * the StreamRefused error. `notFoundRetries`: how many 404s to wait out before believing them.
 * `lastEventId`: where the caller already is (it read the rest some other way).
 */
export function followStream(path, { token, onMessage, onState = () => {}, notFoundRetries = 0, lastEventId = "" }) {
  const controller = new AbortController();
  const parser = new EventStreamParser();
  parser.lastEventId = lastEventId;
  const sleep = (ms) => new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    controller.signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });

  async function connectOnce() {
    const headers = { Authorization: `Bearer ${token}`, Accept: "text/event-stream" };
    if (parser.lastEventId) headers["Last-Event-ID"] = parser.lastEventId;
    const response = await fetch(path, { headers, signal: controller.signal, cache: "no-store" });
    if ([401, 403, 404].includes(response.status)) {
      const body = await response.json().catch(() => ({}));
      throw new StreamRefused(response.status, body.detail);
    }
    if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
    onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false; // dropped (or the gateway is stopping): reconnect
      for (const message of parser.feed(value)) {
        if (controller.signal.aborted) return false; // closed: the rest of this chunk is nobody's
        onMessage(message);
        if (message.event === "end") {
          controller.abort();
          return true;
        }
      }
    }
  }

  (async () => {
    let failures = 0;
    onState("connecting");
    while (!controller.signal.aborted) {
      try {
        if (await connectOnce()) {
          onState("ended");
          return;
        }
        failures = 0;
      } catch (error) {
        if (controller.signal.aborted) break;
        if (error instanceof StreamRefused && error.status === 404 && notFoundRetries > 0) {
          notFoundRetries -= 1;
          await sleep(NOT_YET_MS);
          continue;
        }
        if (error instanceof StreamRefused) {
          onState("refused", error);
          return;
        }
        failures += 1;
      }
      if (controller.signal.aborted) break;
      onState("reconnecting");
      // The server's retry hint first; a server that keeps failing gets asked less often.
      const base = parser.retry ?? DEFAULT_RETRY_MS;
      await sleep(Math.min(base * 2 ** Math.max(0, failures - 1), Math.max(base, MAX_BACKOFF_MS)));
    }
    onState("closed");
  })();

  return { close: () => controller.abort() };
}
