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

export async function request(method, path, { params, token = session.token } = {}) {
  const url = new URL(path, window.location.origin);
  for (const [name, value] of Object.entries(params || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const response = await fetch(url, { method, headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    if (token === session.token) refused(response.status); // not while a new token is being tried
    throw new ApiError(response.status, body.detail);
  }
  return response.json();
}

export const api = {
  runs: (params, token) => request("GET", "/api/v1/runs", { params, token }),
  events: (runId) => request("GET", `/api/v1/runs/${encodeURIComponent(runId)}/events`),
  cancel: (runId) => request("POST", `/api/v1/runs/${encodeURIComponent(runId)}/cancel`),
  rerun: (runId) => request("POST", `/api/v1/runs/${encodeURIComponent(runId)}/rerun`),
  runStream: (runId) => `/api/v1/runs/${encodeURIComponent(runId)}/stream`,
  logStream: (jobId) => `/api/v1/jobs/${encodeURIComponent(jobId)}/log/stream`,
};
