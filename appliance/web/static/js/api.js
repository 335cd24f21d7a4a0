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

// How many changes this tab has made (requests other than GET that succeeded). A page drawn from
// lists fetched while a change was made may show what was there before it: live() (ui.js) then
// draws it again.
let changes = 0;
export const changesMade = () => changes;

async function request(method, path, body) {
  const init = { method, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(`/api/v1${path}`, init);
  if (!response.ok) throw await failure(response);
  if (method !== "GET") changes += 1;
  return response;
}

export async function call(method, path, body) {
  const response = await request(method, path, body);
  return response.status === 204 ? null : response.json();
}

export const get = (path) => call("GET", path);

// A list's path with its query (docs/api.md, "Lists"): listPath("/vms", { limit: 100, filters: ["state:eq:running"] }).
export function listPath(path, { filters = [], ...params } = {}) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) if (value !== undefined && value !== null) query.set(key, value);
  for (const filter of filters) query.append("filter", filter);
  const text = query.toString();
  return text ? `${path}?${text}` : path;
}

// One page of a list: its items, and how many items match in all (the X-Total-Count header).
export async function getPage(path) {
  const response = await request("GET", path);
  return { items: await response.json(), total: Number(response.headers.get("X-Total-Count")) };
}

// How many items match a list's filters: one item asked for, the total read.
export const count = async (path, filters) => (await getPage(listPath(path, { limit: 1, filters }))).total;

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

// A file sent as the request body (PUT), through XMLHttpRequest because fetch cannot report how much
// of a body has gone: onProgress(sentBytes, totalBytes) as it goes; resolves with the JSON answer.
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", `/api/v1${path}`);
    for (const [key, value] of Object.entries(headers({ "Content-Type": "application/octet-stream" }))) {
      xhr.setRequestHeader(key, value);
    }
    xhr.upload.addEventListener("progress", (e) => onProgress(e.loaded, e.total));
    xhr.addEventListener("load", () => {
      const answer = new Response(xhr.responseText, { status: xhr.status, statusText: xhr.statusText });
      if (xhr.status >= 200 && xhr.status < 300) resolve(answer.json());
      else failure(answer).then(reject);
    });
    xhr.addEventListener("error", () => reject(new ApiError(0, "NetworkError", "the upload was cut off")));
    xhr.send(file);
  });
}
