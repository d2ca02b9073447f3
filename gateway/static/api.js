// The token and the JSON API. The token lives in localStorage so a shared link opens signed in;
// every call sends it, and a refused token signs the page out.

const TOKEN_KEY = "ledgerci.token";

export const session = {
  get token() {
    return localStorage.getItem(TOKEN_KEY);
  },
  signIn(token) {
    localStorage.setItem(TOKEN_KEY, token);
  },
  signOut() {
    localStorage.removeItem(TOKEN_KEY);
  },
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

/** Fires when the gateway refuses the token, wherever that happens; the app shows the sign-in. */
export const UNAUTHORIZED = "ledgerci:unauthorized";

export function refused(status) {
  if (status === 401) window.dispatchEvent(new CustomEvent(UNAUTHORIZED));
}

/** The answer to a call, once it is a success; a failure throws an ApiError. */
export async function send(method, path, { params, token = session.token, signal } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const headers = { Authorization: `Bearer ${token}` };
  const response = await fetch(url, { method, headers, cache: "no-store", signal });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    if (token === session.token) refused(response.status); // not while a new token is being tried
    throw new ApiError(response.status, body.detail);
  }
  return response;
}

export async function request(method, path, options) {
  return (await send(method, path, options)).json();
}

/** Save a response's body as a file named `filename` (the token stays in the header, never a link). */
export async function download(response, filename) {
  const url = URL.createObjectURL(await response.blob());
  const link = Object.assign(document.createElement("a"), { href: url, download: filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000); // the download has its own copy long before
}

const job = (jobId) => `/api/v1/jobs/${encodeURIComponent(jobId)}`;
// `attempt` null: the job's current attempt.
const attemptQuery = (attempt) => (attempt === null || attempt === undefined ? "" : `?attempt=${attempt}`);

export const api = {
  runs: (params, token) => request("GET", "/api/v1/runs", { params, token }),
  run: (runId) => request("GET", `/api/v1/runs/${encodeURIComponent(runId)}`),
  events: (runId) => request("GET", `/api/v1/runs/${encodeURIComponent(runId)}/events`),
  cancel: (runId) => request("POST", `/api/v1/runs/${encodeURIComponent(runId)}/cancel`),
  rerun: (runId) => request("POST", `/api/v1/runs/${encodeURIComponent(runId)}/rerun`),
  artifacts: (runId) => request("GET", `/api/v1/runs/${encodeURIComponent(runId)}/artifacts`),
  /** One artifact's bytes (a Response), by its name `<job>/<path>`. */
  artifact: (runId, name) => send("GET", `/api/v1/runs/${encodeURIComponent(runId)}/artifacts/${
    name.split("/").map(encodeURIComponent).join("/")}`),
  schedules: (repositoryId) => request("GET", `/api/v1/repositories/${encodeURIComponent(repositoryId)}/schedules`),
  /** The log as plain text (a Response: its headers say the attempt, the run and the size). */
  log: (jobId, attempt, signal) => send("GET", `${job(jobId)}/log`, { params: { attempt }, signal }),
  runStream: (runId) => `/api/v1/runs/${encodeURIComponent(runId)}/stream`,
  logStream: (jobId, attempt) => `${job(jobId)}/log/stream${attemptQuery(attempt)}`,
};
