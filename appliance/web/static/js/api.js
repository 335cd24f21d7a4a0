// The console's only way to the appliance: the public /api/v1 API, with the session token sent as a
// bearer header (never a cookie: see appliance/web/__init__.py). The token lives in sessionStorage,
// so it dies with the tab, and is dropped at its expiry or the first 401.
const SESSION_KEY = "cairn.session";

export class ApiError extends Error {
  constructor(status, code, message, details) {
    super(message);
    this.status = status;
    this.code = code;
    this.details = details;
  }
}

// The app sets this: what to do when the server says the session is over.
export const hooks = { sessionLost: (_message) => {} };

export const session = {
  get() {
    const saved = JSON.parse(sessionStorage.getItem(SESSION_KEY) || "null");
    return saved && new Date(saved.expires_at) > new Date() ? saved : null;
  },
  save(login) {
    sessionStorage.setItem(SESSION_KEY, JSON.stringify({ token: login.token, expires_at: login.expires_at,
                                                          user: login.user }));
  },
  clear() { sessionStorage.removeItem(SESSION_KEY); },
};

function headers(extra = {}) {
  const current = session.get();
  return current ? { ...extra, Authorization: `Bearer ${current.token}` } : extra;
}

async function failure(response) {
  const body = await response.json().catch(() => null);
  const error = body?.error ?? {};
  const failed = new ApiError(response.status, error.code ?? `HTTP${response.status}`,
                              error.message ?? response.statusText, error.details);
  if (response.status === 401 && session.get()) hooks.sessionLost(failed.message);
  return failed;
}

export async function call(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`/api/v1${path}`, init);
  if (!response.ok) throw await failure(response);
  return response.status === 204 ? null : response.json();
}

export const get = (path) => call("GET", path);

// A download through the API (it needs the bearer header, so no plain link): the answer as a Blob.
export async function download(path) {
  const response = await fetch(`/api/v1${path}`, { headers: headers() });
  if (!response.ok) throw await failure(response);
  return response.blob();
}

// Server-sent events read through fetch, because EventSource cannot send the bearer header.
// Calls onEvent(kind, data) for each event until the stream ends or `signal` aborts.
export async function follow(path, onEvent, signal) {
  const response = await fetch(`/api/v1${path}`, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) throw await failure(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer = (buffer + value).replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let kind = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) kind = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
}
