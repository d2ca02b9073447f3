// A job's log on screen. Only the rows in view (and a few around them) are nodes: the rest is
// a spacer of the right height, so a log of millions of lines scrolls like a short one.
// Auto-scroll follows the end only while the reader is at the bottom; scrolling up stops it,
// and scrolling back down (or the "Follow" button) resumes it. Line numbers are links to their
// line (`…/L123`), and the search box finds lines anywhere in the log, not only those in view.

import { AnsiRenderer } from "./ansi.js";
import { h } from "./dom.js";
import { LogLines } from "./loglines.js";

// How close to the bottom (in pixels) still counts as "at the bottom": zoom and rounding.
const BOTTOM_SLACK = 8;
const ROW_HEIGHT = 19; // px; style.css gives .log-row the same height, so row i is at i * ROW_HEIGHT
const PADDING = 12; // px above the first row and below the last
const OVERSCAN = 30; // rows drawn beyond each edge, so a wheel turn does not show a blank
// Browsers cap an element's height (Chromium near 16.7 million px, about 880,000 rows); a
// longer log gets a shorter spacer, and the scroll position maps onto it in proportion.
const MAX_SPACER = 8_000_000;
// A line longer than this is cut on screen (the raw download has it whole): one line of many
// megabytes would cost the browser seconds to lay out.
const LONG_LINE = 4000;
const SEARCH_DELAY_MS = 250;

/** The last index of the sorted `values` that is <= target, or -1. */
function indexAtOrBefore(values, target) {
  let low = 0;
  let high = values.length - 1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    if (values[middle] <= target) low = middle + 1;
    else high = middle - 1;
  }
  return high;
}

const escapeRegExp = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

/** Wraps each match of `pattern` in the text nodes under `element` in a <mark>. */
function markMatches(element, pattern) {
  const walker = document.createTreeWalker(element, NodeFilter.SHOW_TEXT);
  const nodes = [];
  while (walker.nextNode()) nodes.push(walker.currentNode);
  for (const node of nodes) {
    const text = node.nodeValue;
    const parts = [];
    let at = 0;
    for (const match of text.matchAll(pattern)) {
      if (!match[0]) break;
      parts.push(text.slice(at, match.index), h("mark", {}, match[0]));
      at = match.index + match[0].length;
    }
    if (parts.length) node.replaceWith(...parts, text.slice(at));
  }
}

export class LogView {
  /** `lineLink(attempt, number)`: the link of a line, or null for numbers that link nowhere. */
  constructor({ lineLink = null } = {}) {
    this.lines = new LogLines();
    this.lineLink = lineLink;
    this.renderer = new AnsiRenderer();
    this.rowsBox = h("div", { class: "log-rows" });
    this.spacer = h("div", { class: "log-spacer" }, this.rowsBox);
    this.output = h("div", { class: "log", tabindex: "0", role: "log", "aria-live": "off" }, this.spacer);
    this.follow = h("button", { type: "button", class: "follow", hidden: true }, "↓ Follow");
    this.searchBox = h("input", { type: "search", class: "log-search", placeholder: "Search the log",
      "aria-label": "search the log" });
    this.searchCount = h("span", { class: "log-search-count", "aria-live": "polite" });
    this.tools = h("div", { class: "log-tools" }, this.searchBox, this.searchCount,
      h("button", { type: "button", class: "secondary", title: "previous match (Shift+Enter)",
        onclick: () => this.#nextMatch(-1) }, "↑"),
      h("button", { type: "button", class: "secondary", title: "next match (Enter)",
        onclick: () => this.#nextMatch(1) }, "↓"));
    this.element = h("div", { class: "log-frame" }, this.tools,
      h("div", { class: "log-body" }, this.output, this.follow));
    this.sticky = true;
    this.target = -1; // the row a line link points at
    this.wanted = null; // a line asked for before it arrived: {attempt, number}
    this.search = { query: "", pattern: null, rows: [], current: -1, searchedRows: 0 };
    this.emptyText = "waiting for output…";
    this.painting = false;

    this.output.addEventListener("scroll", () => {
      this.sticky = this.#atBottom();
      this.follow.hidden = this.sticky;
      this.#paint();
    });
    this.follow.addEventListener("click", () => this.#scrollToEnd());
    this.element.addEventListener("keydown", (event) => {
      // The browser's own find sees only the rows in view: ours searches the whole log.
      if ((event.ctrlKey || event.metaKey) && event.key === "f") {
        event.preventDefault();
        this.searchBox.focus();
        this.searchBox.select();
      }
    });
    let timer = null;
    this.searchBox.addEventListener("input", () => {
      clearTimeout(timer);
      timer = setTimeout(() => this.#runSearch(), SEARCH_DELAY_MS);
    });
    this.searchBox.addEventListener("keydown", (event) => {
      if (event.key === "Enter") {
        clearTimeout(timer);
        this.#nextMatch(event.shiftKey ? -1 : 1);
      } else if (event.key === "Escape") {
        this.searchBox.value = "";
        this.#runSearch();
      }
    });
    this.#layout();
  }

  /** The attempt whose lines are at the end (null before any). */
  get attempt() {
    return this.lines.attempt;
  }

  hasAttempt(attempt) {
    return this.lines.hasAttempt(attempt);
  }

  startAttempt(attempt) {
    this.lines.startAttempt(attempt);
    this.#changed();
  }

  append(text, attempt = null) {
    if (attempt !== null) this.lines.startAttempt(attempt);
    this.lines.append(text);
    this.#changed();
  }

  /** A line of our own (not the job's output): where an attempt starts, how the job ended. */
  note(text, kind = "info") {
    this.lines.note(text, kind);
    this.#changed();
  }

  clear() {
    this.lines.clear();
    this.target = -1;
    this.wanted = null;
    // What the box says is kept: Enter searches the new log for it.
    this.search = { query: "", pattern: null, rows: [], current: -1, searchedRows: 0 };
    this.searchCount.textContent = "";
    this.sticky = true;
    this.follow.hidden = true;
    this.#changed();
  }

  /** What the empty pane says (a finished run with no jobs has no output to wait for). */
  setEmptyText(text) {
    this.emptyText = text;
    this.#layout();
  }

  /** Shows line `number` of `attempt` (null: the last attempt) now, or as soon as it arrives. */
  goToLine(attempt, number) {
    const row = this.lines.rowOf(attempt, number);
    this.wanted = row < 0 ? { attempt, number } : null;
    if (row < 0) return;
    this.target = row;
    this.#scrollToRow(row);
  }

  #changed() {
    this.#layout(); // first: a line asked for can only be scrolled to once the spacer has its room
    if (this.wanted) {
      const { attempt, number } = this.wanted;
      if (this.lines.rowOf(attempt, number) >= 0) this.goToLine(attempt, number);
    }
    if (this.sticky) this.#scrollToEnd();
    this.#schedulePaint();
  }

  // ----- geometry: the spacer stands for every row; only the rows in view are drawn -----

  #layout() {
    const count = this.lines.rowCount;
    if (count) delete this.output.dataset.empty;
    else this.output.dataset.empty = this.emptyText;
    this.fullHeight = count * ROW_HEIGHT + 2 * PADDING;
    this.spacer.style.height = `${Math.min(this.fullHeight, MAX_SPACER)}px`;
    // Room for the largest line number, so the text does not move as the log grows.
    this.output.style.setProperty("--digits", String(Math.max(3, String(count).length)));
  }

  /** How many px of the full log one px of the spacer stands for (1 unless the log is huge). */
  #ratio() {
    const view = this.output.clientHeight;
    const spacer = Math.min(this.fullHeight, MAX_SPACER);
    return spacer - view > 0 ? Math.max(1, (this.fullHeight - view) / (spacer - view)) : 1;
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

  #scrollToRow(row) {
    const top = PADDING + row * ROW_HEIGHT - this.output.clientHeight / 3;
    this.output.scrollTop = Math.max(0, top / this.#ratio());
    this.sticky = this.#atBottom();
    this.follow.hidden = this.sticky;
    this.#paint();
  }

  #schedulePaint() {
    if (this.painting) return;
    this.painting = true;
    requestAnimationFrame(() => this.#paint());
  }

  #paint() {
    this.painting = false;
    const count = this.lines.rowCount;
    const view = this.output.clientHeight;
    const top = this.output.scrollTop * this.#ratio(); // in the full log's px
    const first = Math.max(0, Math.floor((top - PADDING) / ROW_HEIGHT) - OVERSCAN);
    const last = Math.min(count, Math.ceil((top + view - PADDING) / ROW_HEIGHT) + OVERSCAN);
    const rows = document.createDocumentFragment();
    for (let i = first; i < last; i++) rows.append(this.#rowElement(i));
    this.rowsBox.replaceChildren(rows);
    this.rowsBox.style.transform = `translateY(${this.output.scrollTop + PADDING + first * ROW_HEIGHT - top}px)`;
  }

  #rowElement(index) {
    const row = this.lines.row(index);
    if (row.note) return h("div", { class: `log-row log-note log-note-${row.note.kind}` }, row.note.text, "\n");
    let text = row.text;
    // A progress bar rewrites its line with "\r": a terminal shows what was written last.
    if (text.includes("\r")) text = text.replace(/\r+$/, "").split("\r").pop();
    const cut = text.length > LONG_LINE ? text.length - LONG_LINE : 0;
    this.renderer.reset(row.style);
    const content = h("span", { class: "log-text" }, this.renderer.render(cut ? text.slice(0, LONG_LINE) : text));
    if (cut) content.append(h("span", { class: "log-cut" }, ` … ${cut.toLocaleString()} more characters in the raw log`));
    const classes = ["log-row"];
    const match = this.search.pattern ? indexAtOrBefore(this.search.rows, index) : -1;
    if (match >= 0 && this.search.rows[match] === index) {
      classes.push(match === this.search.current ? "log-match log-current-match" : "log-match");
      markMatches(content, this.search.pattern);
    }
    if (index === this.target) classes.push("log-target");
    const link = this.lineLink?.(row.attempt, row.number);
    const number = h(link ? "a" : "span", { class: "log-number", "data-n": row.number, href: link,
      "aria-label": `line ${row.number}` });
    return h("div", { class: classes.join(" "), "data-line": row.number }, number, content, "\n");
  }

  // ----- search: through every line, not only the rows drawn -----

  #runSearch() {
    const query = this.searchBox.value;
    const pattern = query ? new RegExp(escapeRegExp(query), "i") : null;
    this.search = { query, pattern: pattern && new RegExp(pattern.source, "gi"), current: -1,
      rows: pattern ? this.lines.search(pattern) : [], searchedRows: this.lines.rowCount };
    if (this.search.rows.length) {
      // The first match from where the reader is, not from the top of a long log.
      const from = Math.floor((this.output.scrollTop * this.#ratio() - PADDING) / ROW_HEIGHT);
      const next = this.search.rows.findIndex((row) => row >= from);
      this.#showMatch(next < 0 ? 0 : next);
    } else {
      this.#showCount();
      this.#paint();
    }
  }

  #nextMatch(step) {
    // Lines that arrived since the last search are searched too.
    if (this.searchBox.value !== this.search.query || this.lines.rowCount !== this.search.searchedRows) {
      const current = this.search.rows[this.search.current];
      this.#runSearch();
      if (current === undefined || step < 0) return;
      const next = this.search.rows.findIndex((row) => row > current);
      if (next >= 0) this.#showMatch(next);
      return;
    }
    const total = this.search.rows.length;
    if (total) this.#showMatch((this.search.current + step + total) % total);
  }

  #showMatch(index) {
    this.search.current = index;
    this.#showCount();
    this.#scrollToRow(this.search.rows[index]);
  }

  #showCount() {
    const { query, rows, current } = this.search;
    this.searchCount.textContent = !query ? "" : rows.length
      ? `${(current + 1).toLocaleString()} of ${rows.length.toLocaleString()}` : "no match";
  }
}
