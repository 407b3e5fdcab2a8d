// The v1 API as any client uses it: the tenant's bearer key (kept in localStorage) on
// every request, errors in the API's one shape.

const KEY = "ponder.apiKey";
export const root = document.body.dataset.root || "";

export function getKey() {
  return localStorage.getItem(KEY) || "";
}

export function setKey(key) {
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code || null;
    this.field = error.field || null;
  }
}

function headers(extra = {}) {
  const out = { Accept: "application/json", ...extra };
  const key = getKey();
  if (key) out.Authorization = `Bearer ${key}`;
  return out;
}

function unauthorized(err) {
  window.dispatchEvent(new CustomEvent("ponder:unauthorized", { detail: err.message }));
}

export async function api(path, { method = "GET", body, signal } = {}) {
  const init = { method, signal, headers: headers(body === undefined ? {} : { "Content-Type": "application/json" }) };
  if (body !== undefined) init.body = JSON.stringify(body);
  const response = await fetch(root + path, init);
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = { error: { message: text.slice(0, 200) } };
  }
  if (!response.ok) {
    const err = new ApiError(response.status, data);
    if (response.status === 401) unauthorized(err);
    throw err;
  }
  return data;
}

export const enc = encodeURIComponent;

// GET /v1/jobs/{id}/events as a Server-Sent Events stream. EventSource cannot send an
// Authorization header, so this reads the stream with fetch and parses it; like
// EventSource it reconnects with Last-Event-ID, so no event is lost or repeated.
// Returns a function that stops following.
export function followEvents(jobId, { after = 0, onEvent, onState = () => {} }) {
  const controller = new AbortController();
  let lastId = after;
  let retryMs = 1000;
  let stopped = false;

  async function once() {
    const extra = { Accept: "text/event-stream" };
    if (lastId) extra["Last-Event-ID"] = String(lastId);
    const response = await fetch(`${root}/v1/jobs/${enc(jobId)}/events`, {
      headers: headers(extra), signal: controller.signal, cache: "no-store",
    });
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch { /* not JSON */ }
      throw new ApiError(response.status, body);
    }
    onState("live");
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let message = { event: "message", data: [], id: null };
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return false;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) >= 0) {
        let line = buffer.slice(0, newline);
        buffer = buffer.slice(newline + 1);
        if (line.endsWith("\r")) line = line.slice(0, -1);
        if (line === "") {
          if (message.id !== null) lastId = Number(message.id) || lastId;
          if (message.data.length) {
            const event = JSON.parse(message.data.join("\n"));
            onEvent(event);
            if (event.type === "job_finished") return true;
          }
          message = { event: "message", data: [], id: null };
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let data = colon < 0 ? "" : line.slice(colon + 1);
        if (data.startsWith(" ")) data = data.slice(1);
        if (field === "data") message.data.push(data);
        else if (field === "event") message.event = data;
        else if (field === "id") message.id = data;
        else if (field === "retry" && /^\d+$/.test(data)) retryMs = Number(data);
      }
    }
  }

  (async () => {
    while (!stopped) {
      try {
        if (await once()) {
          onState("done");
          return;
        }
      } catch (err) {
        if (stopped || err.name === "AbortError") return;
        if (err instanceof ApiError && err.status < 500) {
          if (err.status === 401) unauthorized(err);
          onState("error", err);
          return;
        }
      }
      if (stopped) return;
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, retryMs));
    }
  })();

  return () => {
    stopped = true;
    controller.abort();
  };
}
