// A log as rows, without any DOM: a log of 16 MiB is two million lines, and only the few on
// screen ever become nodes (log.js). Rows are the log's lines (escape sequences kept) and our own
// notes between them. Lines are numbered per attempt, as in the raw log of that attempt, so
// `L123` names the same line here and in the download.
//
// Colours carry over from line to line, so the style at each line's start is needed to draw it
// alone: it is kept only where it changes (most logs: never), found by binary search.

import { AnsiRenderer, blankStyle, plainText, sameStyle } from "./ansi.js";

const BLANK = Object.freeze(blankStyle());

/** A line of our own: where an attempt starts, how the job ended. */
export class Note {
  constructor(text, kind) {
    this.text = text;
    this.kind = kind;
  }
}

/** The last index `i` of the sorted `values` with values[i] <= target, or -1. */
function lastAtOrBefore(values, target) {
  let low = 0;
  let high = values.length - 1;
  let found = -1;
  while (low <= high) {
    const middle = (low + high) >> 1;
    if (values[middle] <= target) {
      found = middle;
      low = middle + 1;
    } else {
      high = middle - 1;
    }
  }
  return found;
}

export class LogLines {
  constructor() {
    this.tracker = new AnsiRenderer();
    this.clear();
  }

  clear() {
    this.rows = []; // finished rows: strings (lines, without their "\n") and Notes
    this.partial = ""; // the line being written, until its "\n" comes
    this.sections = []; // {row, attempt}: where each attempt's lines start; numbering restarts there
    this.styleRows = []; // rows where the style at a line's start changes, ascending
    this.styles = []; // the style from that row on
    this.style = blankStyle(); // the style after the last finished row
  }

  get rowCount() {
    return this.rows.length + (this.partial ? 1 : 0);
  }

  get attempt() {
    return this.sections.length ? this.sections[this.sections.length - 1].attempt : null;
  }

  hasAttempt(attempt) {
    return this.sections.some((section) => section.attempt === attempt);
  }

  /** Lines from here on are `attempt`'s; a note says so when another attempt's lines are above. */
  startAttempt(attempt) {
    if (this.sections.length && this.attempt === attempt) return;
    if (this.rowCount) this.note(`attempt ${attempt}`);
    this.sections.push({ row: this.rows.length, attempt });
  }

  append(text) {
    if (!this.sections.length) this.sections.push({ row: 0, attempt: null });
    const pieces = text.split("\n");
    pieces[0] = this.partial + pieces[0];
    this.partial = pieces.pop();
    // Most chunks have no escape sequence at all: then no line can change the style.
    const styled = pieces[0].includes("\x1b") || text.includes("\x1b");
    for (const line of pieces) this.#finish(line, styled);
  }

  note(text, kind = "info") {
    if (this.partial) this.#finish(this.partial, true);
    this.partial = "";
    this.rows.push(new Note(text, kind));
    this.#setStyle(blankStyle()); // a note starts its own lines afresh, as a terminal would not know
  }

  #finish(line, styled) {
    this.rows.push(line);
    if (!styled) return;
    const last = line.lastIndexOf("\x1b");
    if (last < 0) return;
    // Most coloured lines end with a reset, after which the style is blank whatever came before.
    if (line.startsWith("\x1b[0m", last) || line.startsWith("\x1b[m", last)) {
      this.#setStyle(BLANK);
      return;
    }
    this.tracker.reset(this.style);
    this.tracker.advance(line);
    this.#setStyle(this.tracker.style);
  }

  #setStyle(style) {
    if (sameStyle(style, this.style)) return;
    this.style = { ...style };
    this.styleRows.push(this.rows.length);
    this.styles.push(this.style);
  }

  /** Row `index`: {note} or {text, number, attempt, style} (the style at the line's start). */
  row(index) {
    const value = index < this.rows.length ? this.rows[index] : this.partial;
    if (value instanceof Note) return { note: value };
    const section = this.sections[lastAtOrBefore(this.sections.map((s) => s.row), index)] || this.sections[0];
    const changed = lastAtOrBefore(this.styleRows, index);
    return {
      text: value, number: index - section.row + 1, attempt: section.attempt,
      style: changed < 0 ? blankStyle() : this.styles[changed],
    };
  }

  /** The row of line `number` of `attempt` (null: the last attempt shown), or -1 if not (yet) here. */
  rowOf(attempt, number) {
    const at = attempt === null ? this.sections.length - 1 : this.sections.findIndex((s) => s.attempt === attempt);
    if (at < 0 || number < 1) return -1;
    const index = this.sections[at].row + number - 1;
    const end = at + 1 < this.sections.length ? this.sections[at + 1].row - 1 : this.rowCount; // before its note
    if (index >= end || this.rows[index] instanceof Note) return -1;
    return index;
  }

  /** The rows whose line matches `pattern` (a RegExp without the g flag), ascending. */
  search(pattern) {
    const found = [];
    const count = this.rowCount;
    for (let i = 0; i < count; i++) {
      const value = i < this.rows.length ? this.rows[i] : this.partial;
      if (value instanceof Note) continue;
      if (pattern.test(value.includes("\x1b") ? plainText(value) : value)) found.push(i);
    }
    return found;
  }
}
