// Building DOM nodes from data without ever parsing data as markup: children are nodes or
// strings (which become text nodes), attributes are set one by one.

/** h("a", {href: "#/"}, "Runs", childNode) */
export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === false || value === null || value === undefined) continue;
    if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? "" : String(value));
  }
  return fill(element, ...children);
}

/** Replaces `element`'s children, leaving out the null/false ones that conditionals give. */
export function fill(element, ...children) {
  element.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

/** A status as a coloured badge; the tests and the styles read `data-status`. */
export function badge(status) {
  return setStatus(h("span"), status);
}

export function setStatus(badgeElement, status) {
  badgeElement.className = `badge status-${status}`;
  badgeElement.dataset.status = status;
  badgeElement.textContent = status;
  return badgeElement;
}

/** "1h 02m", "3m 05s", "12s" */
export function formatDuration(ms) {
  const seconds = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(seconds / 3600);
  const m = Math.floor((seconds % 3600) / 60);
  const s = seconds % 60;
  if (h) return `${h}h ${String(m).padStart(2, "0")}m`;
  if (m) return `${m}m ${String(s).padStart(2, "0")}s`;
  return `${s}s`;
}

/** "just now", "5 min ago", "3 h ago", then the date. */
export function formatAgo(iso, now = Date.now()) {
  const seconds = (now - Date.parse(iso)) / 1000;
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

/**
 * A duration from `since` to `until`, or to now while `until` is null: the page's one ticker
 * (tick() below) moves every open one forward each second without asking the server anything.
 */
export function duration(since, until) {
  if (!since) return h("span", { class: "duration muted" }, "–");
  const attributes = { class: "duration", "data-since": since, title: `started ${new Date(since).toLocaleString()}` };
  if (until) attributes["data-until"] = until;
  else attributes.class += " ticking";
  return h("span", attributes, formatDuration(Date.parse(until || new Date().toISOString()) - Date.parse(since)));
}

export function ago(iso) {
  return h("time", { datetime: iso, "data-ago": iso, title: new Date(iso).toLocaleString() }, formatAgo(iso));
}

export function tick(root = document) {
  const now = Date.now();
  for (const element of root.querySelectorAll(".duration.ticking[data-since]")) {
    element.textContent = formatDuration(now - Date.parse(element.dataset.since));
  }
  for (const element of root.querySelectorAll("[data-ago]")) element.textContent = formatAgo(element.dataset.ago, now);
}

export const shortSha = (commit) => (commit || "").slice(0, 7);
export const shortRef = (ref) => (ref || "").replace(/^refs\/(heads|tags)\//, "");
export const FINAL = new Set(["succeeded", "failed", "cancelled", "skipped"]);

export function jobLabel(job) {
  return job.attempt > 1 ? `${job.name} (attempt ${job.attempt})` : job.name;
}

/** The commit's subject line and author, when the run has them (older runs do not). */
export function commitSubject(run, tag = "p") {
  if (!run.commit_subject && !run.commit_author) return null;
  return h(tag, { class: "commit-subject" },
    run.commit_subject ? h("span", { class: "subject", title: run.commit_subject }, run.commit_subject) : null,
    run.commit_author ? h("span", { class: "author muted" }, run.commit_author) : null);
}
