// ANSI SGR colours to DOM nodes. Log text only ever becomes text nodes (never markup), so a
// line like `<script>` shows as itself. The style carries over from chunk to chunk, and an
// escape sequence cut in half by a chunk boundary waits for its other half.

// CSI sequences (colours, cursor moves), OSC sequences (window titles, links) and two-byte escapes.
const ESCAPE = /\x1b(?:\[([0-9;:?]*)[ -\/]*([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])/g;
// What an escape sequence can look like before it is complete.
const UNFINISHED = /\x1b(?:\[[0-9;:?]*[ -\/]*|\][^\x07\x1b]*\x1b?)?$/;
const MAX_PENDING = 256;

export function blankStyle() {
  return { fg: null, bg: null, bold: false, dim: false, italic: false, underline: false };
}

export function sameStyle(a, b) {
  return a.fg === b.fg && a.bg === b.bg && a.bold === b.bold && a.dim === b.dim && a.italic === b.italic
    && a.underline === b.underline;
}

/** The text without its escape sequences: what a reader sees, and what search looks through. */
export function plainText(text) {
  return text.replace(ESCAPE, "");
}

/** Colour 0-15 for a 256-colour index below 16; a CSS colour for the rest of the palette. */
function xterm256(n) {
  if (n < 16) return n;
  if (n >= 232) {
    const level = 8 + (n - 232) * 10;
    return `rgb(${level},${level},${level})`;
  }
  const cube = n - 16;
  const level = (v) => (v === 0 ? 0 : 55 + v * 40);
  return `rgb(${level(Math.floor(cube / 36))},${level(Math.floor(cube / 6) % 6)},${level(cube % 6)})`;
}

export class AnsiRenderer {
  constructor() {
    this.reset();
  }

  /** Starts afresh, in `style` (a line in the middle of a log starts in the style before it). */
  reset(style = blankStyle()) {
    this.style = { ...style };
    this.pending = "";
  }

  /** Only what `text` does to the style, without building nodes: for lines nobody looks at yet. */
  advance(text) {
    for (const match of text.matchAll(ESCAPE)) if (match[2] === "m") this.#apply(match[1]);
  }

  /** The nodes for `text`, styled by the SGR codes in it and before it. */
  render(text) {
    text = this.pending + text;
    this.pending = "";
    const unfinished = text.match(UNFINISHED);
    if (unfinished && unfinished[0].length <= MAX_PENDING) {
      this.pending = unfinished[0];
      text = text.slice(0, text.length - unfinished[0].length);
    }
    const fragment = document.createDocumentFragment();
    let at = 0;
    for (const match of text.matchAll(ESCAPE)) {
      this.#append(fragment, text.slice(at, match.index));
      if (match[2] === "m") this.#apply(match[1]);
      at = match.index + match[0].length;
    }
    this.#append(fragment, text.slice(at));
    return fragment;
  }

  #append(fragment, text) {
    if (!text) return;
    const s = this.style;
    const classes = [];
    if (typeof s.fg === "number") classes.push(`ansi-fg-${s.fg}`);
    if (typeof s.bg === "number") classes.push(`ansi-bg-${s.bg}`);
    if (s.bold) classes.push("ansi-bold");
    if (s.dim) classes.push("ansi-dim");
    if (s.italic) classes.push("ansi-italic");
    if (s.underline) classes.push("ansi-underline");
    if (!classes.length && s.fg === null && s.bg === null) {
      fragment.append(document.createTextNode(text));
      return;
    }
    const span = document.createElement("span");
    span.className = classes.join(" ");
    // Set through the CSSOM, which the page's Content-Security-Policy allows (markup styles it does not).
    if (typeof s.fg === "string") span.style.color = s.fg;
    if (typeof s.bg === "string") span.style.backgroundColor = s.bg;
    span.textContent = text;
    fragment.append(span);
  }

  #apply(parameters) {
    const codes = parameters === "" ? [0] : parameters.split(/[;:]/).map((p) => (p === "" ? 0 : Number(p)));
    for (let i = 0; i < codes.length; i++) {
      const code = codes[i];
      if (code === 0) this.style = blankStyle();
      else if (code === 1) this.style.bold = true;
      else if (code === 2) this.style.dim = true;
      else if (code === 3) this.style.italic = true;
      else if (code === 4) this.style.underline = true;
      else if (code === 22) Object.assign(this.style, { bold: false, dim: false });
      else if (code === 23) this.style.italic = false;
      else if (code === 24) this.style.underline = false;
      else if (code >= 30 && code <= 37) this.style.fg = code - 30;
      else if (code >= 90 && code <= 97) this.style.fg = code - 90 + 8;
      else if (code >= 40 && code <= 47) this.style.bg = code - 40;
      else if (code >= 100 && code <= 107) this.style.bg = code - 100 + 8;
      else if (code === 39) this.style.fg = null;
      else if (code === 49) this.style.bg = null;
      else if (code === 38 || code === 48) {
        // 38;5;n (256 colours) or 38;2;r;g;b: consume the parameters so they are not read as codes.
        const key = code === 38 ? "fg" : "bg";
        if (codes[i + 1] === 5 && i + 2 < codes.length) {
          this.style[key] = xterm256(codes[i + 2]);
          i += 2;
        } else if (codes[i + 1] === 2 && i + 4 < codes.length) {
          this.style[key] = `rgb(${codes[i + 2]},${codes[i + 3]},${codes[i + 4]})`;
          i += 4;
        }
      }
    }
  }
}
