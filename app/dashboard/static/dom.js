// DOM building and formatting. Every piece of data goes in as text (textContent or
// attribute values), never as HTML: questions and model output are untrusted.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "text") el.textContent = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export function clear(el) {
  while (el.firstChild) el.removeChild(el.firstChild);
  return el;
}

export const isFinal = (status) => ["succeeded", "failed", "cancelled"].includes(status);

export function fmtInt(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  return Math.round(n).toLocaleString("en-US");
}

export function fmtCost(c) {
  if (c === null || c === undefined) return "–";
  if (c === 0) return "$0";
  if (Math.abs(c) < 0.01) return `$${c.toPrecision(2)}`;
  return `$${c.toFixed(4)}`;
}

export function fmtMs(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  const a = Math.abs(ms);
  if (a < 1) return `${ms.toFixed(2)} ms`;
  if (a < 1000) return `${ms.toFixed(a < 10 ? 1 : 0)} ms`;
  if (a < 60000) return `${(ms / 1000).toFixed(2)} s`;
  return `${Math.floor(ms / 60000)} m ${Math.round((ms % 60000) / 1000)} s`;
}

export function fmtSigned(value, format) {
  if (value === null || value === undefined) return "–";
  const text = format(value);
  return value > 0 ? `+${text}` : text;
}

// Date and time, always both, in the browser's time zone (lists span days; a bare time
// was ambiguous): "2026-12-05 19:07:08".
export function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return "–";
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${d.toLocaleTimeString("en-GB", { hour12: false })}`;
}

// Timestamps carry microseconds; Date.parse keeps milliseconds only, and sub-millisecond
// model calls (journal hits, the simulator) would collapse onto one pixel column.
const TS = /^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?$/;
export function parseTs(iso) {
  if (!iso) return null;
  const m = TS.exec(iso);
  if (!m) return Date.parse(iso);
  const base = Date.parse(m[1] + (m[3] || "Z"));
  return m[2] ? base + Number.parseFloat(`0${m[2]}`) * 1000 : base;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "–";
}

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, text: status });
}

const ROLE_COLORS = { small: "#0f9d8a", large: "#6b4fd8", verifier: "#e07a1f", router: "#d6336c" };
const PALETTE = ["#1c7ed6", "#2f9e44", "#c2255c", "#e8590c", "#5f3dc4", "#0b7285", "#a61e4d"];
export function roleColor(role) {
  if (!role) return "#868e96";
  if (ROLE_COLORS[role]) return ROLE_COLORS[role];
  let hash = 0;
  for (const ch of role) hash = (hash * 31 + ch.charCodeAt(0)) >>> 0;
  return PALETTE[hash % PALETTE.length];
}

export function jobTokens(job) {
  const u = job.usage;
  return u ? (u.prompt_tokens || 0) + (u.completion_tokens || 0) : null;
}

export function jobLatencyMs(job) {
  if (job.usage && typeof job.usage.wall_s === "number") return job.usage.wall_s * 1000;
  if (job.started_at && job.finished_at) return parseTs(job.finished_at) - parseTs(job.started_at);
  if (job.started_at && !isFinal(job.status)) return Date.now() - parseTs(job.started_at);
  return null;
}

// A short, readable summary of a decision's attributes: the keys strategies use for
// votes, scores and routing first, then whatever else fits.
const PRIORITY = ["answer", "route", "choice", "chosen", "score", "entropy", "confidence",
  "threshold", "votes", "reason", "stopped", "verdict", "index", "samples"];
export function attrSummary(attrs, limit = 4) {
  const keys = Object.keys(attrs || {}).filter((k) => k !== "status");
  keys.sort((a, b) => rank(a) - rank(b));
  const parts = [];
  for (const key of keys.slice(0, limit)) parts.push(`${key}=${brief(attrs[key])}`);
  if (keys.length > limit) parts.push("…");
  return parts.join(" ");
}

function rank(key) {
  const i = PRIORITY.indexOf(key);
  return i === -1 ? PRIORITY.length : i;
}

export function brief(value) {
  if (value === null || value === undefined) return "∅";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(3);
  if (typeof value === "string") return value.length > 24 ? `${value.slice(0, 23)}…` : value;
  if (Array.isArray(value)) return `[${value.length}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value);
    const shown = entries.slice(0, 3).map(([k, v]) => `${k}:${brief(v)}`).join(",");
    return `{${shown}${entries.length > 3 ? ",…" : ""}}`;
  }
  return String(value);
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

// A horizontal bar chart of a {label: count} mapping (votes), the winner marked.
export function voteBars(votes, winner) {
  const entries = Object.entries(votes || {});
  const max = Math.max(1, ...entries.map(([, v]) => Number(v) || 0));
  const total = entries.reduce((s, [, v]) => s + (Number(v) || 0), 0);
  return h("div", { class: "votes" }, entries.map(([label, count]) => {
    const bar = h("span", { class: "vote-fill" });
    bar.style.width = `${(100 * (Number(count) || 0)) / max}%`;
    return h("div", { class: `vote${label === winner ? " winner" : ""}` },
      h("span", { class: "vote-label", text: label, title: label }),
      h("span", { class: "vote-bar" }, bar),
      h("span", { class: "vote-count", text: `${count}${total ? ` (${Math.round((100 * count) / total)}%)` : ""}` }));
  }));
}

export function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.filter(Boolean).map(([k, v]) => [
    h("dt", { text: k }),
    h("dd", {}, v instanceof Node ? v : String(v ?? "–")),
  ]));
}

export function link(href, text, attrs = {}) {
  return h("a", { href, ...attrs, text });
}

export function errorBox(err) {
  const message = err && err.message ? err.message : String(err);
  return h("div", { class: "error-box", role: "alert", text: message });
}
