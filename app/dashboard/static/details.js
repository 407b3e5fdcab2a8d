// The selected span: what it is, what it cost, its decision's attributes, and for a
// model call its prompt and response (loaded on demand) and the fork form.

import { api, enc } from "./api.js";
import { attrSummary, brief, clear, errorBox, fmtCost, fmtInt, fmtMs, h, json, kv, roleColor, voteBars } from "./dom.js";

const KIND_LABEL = { job: "job", strategy: "strategy", span: "span", model_call: "model call", tool_call: "tool call", decision: "decision" };

export function renderDetails(pane, span, view) {
  clear(pane);
  if (!span) {
    pane.append(h("p", { class: "muted", text: "Select a span in the tree or a bar in the timeline." }));
    return;
  }
  const parent = span.parent_span_id ? view.model.byId.get(span.parent_span_id) : null;
  pane.append(
    h("h3", { class: "details-title" }, h("span", { class: `kind kind-${span.type}`, text: KIND_LABEL[span.type] }), " ",
      span.type === "strategy" ? span.kind : span.name),
    kv([
      ["seq", `#${span.seq}`],
      ["span", h("code", { text: span.span_id })],
      parent && ["parent", h("a", { href: "#", text: `#${parent.seq} ${parent.name}`, onclick: (e) => { e.preventDefault(); view.select(parent.span_id, true); } })],
      ["start", `+${fmtMs(span._start - view.model.t0)}`],
      span.type !== "decision" && ["duration", span.end_ts ? fmtMs(span.duration_ms) : "open"],
      span.status && ["status", span.status],
    ]),
  );
  if (span.type === "model_call") callDetails(pane, span, view);
  else if (span.type === "tool_call") toolDetails(pane, span);
  else if (span.type === "decision") pane.append(attributeView(span.attributes));
  else if (span.type === "strategy") {
    pane.append(kv([
      ["answer", span.answer ?? (span.end_ts ? "∅" : "…")],
      span.budget_exhausted && ["budget", "exhausted"],
    ]), h("h4", { text: "params" }), h("pre", { class: "code", text: json(span.params) }));
  } else if (span.type === "span" && Object.keys(span.attributes).length) {
    pane.append(attributeView(span.attributes));
  }
  pane.append(h("details", { class: "raw" }, h("summary", { text: "raw event" }), h("pre", { class: "code", text: json(stripPrivate(span)) })));
}

// A tool call: journal hit or executed, its arguments (a program is shown as code), and
// what it returned or why it failed.
function toolDetails(pane, span) {
  const a = span.attributes || {};
  pane.append(kv([
    ["tool", span.tool],
    ["journal", span.journal === "hit" ? "hit (nothing executed)" : "miss (executed)"],
    span.latency_ms != null && ["latency", fmtMs(span.latency_ms)],
    ["result", span.ok === false ? "error" : "ok"],
  ]));
  let args = a.arguments;
  try { args = JSON.parse(args); } catch { /* shown as recorded */ }
  const code = args && typeof args === "object" && typeof args.code === "string" ? args.code : null;
  pane.append(h("h4", { text: "arguments" }), h("pre", { class: "code tool-args", text: code ?? json(args) }));
  pane.append(h("h4", { text: "output" }), h("pre", { class: "response tool-output", text: a.output || "" }));
  if (a.error) pane.append(h("h4", { text: "error" }), h("pre", { class: "response tool-error", text: a.error }));
  if (a.details) pane.append(h("h4", { text: "details" }), h("pre", { class: "code", text: json(a.details) }));
}

function stripPrivate(span) {
  return Object.fromEntries(Object.entries(span).filter(([k]) => !k.startsWith("_")));
}

// Votes as bars; numbers (scores, entropies, thresholds) as figures; the rest as text.
function attributeView(attrs) {
  const box = h("div", { class: "attrs" });
  const rest = [];
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "status") continue;
    if (value && typeof value === "object" && !Array.isArray(value) && Object.values(value).every((v) => typeof v === "number")) {
      box.append(h("h4", { text: key }), voteBars(value, attrs.answer));
    } else if (typeof value === "number") {
      box.append(h("span", { class: "figure" }, h("small", { text: key }), h("b", { text: brief(value) })));
    } else {
      rest.push([key, typeof value === "string" ? value : JSON.stringify(value)]);
    }
  }
  if (rest.length) box.append(kv(rest));
  return box;
}

function callDetails(pane, call, view) {
  const swatch = h("i", { class: "swatch" });
  swatch.style.background = roleColor(call.role);
  pane.append(kv([
    ["role", h("span", {}, swatch, call.role || "–")],
    ["model", call.model],
    ["endpoint", call.endpoint || "–"],
    ["journal", call.journal === "hit" ? "hit (answered from the journal)" : call.journal === "miss" ? "miss (live call)" : "–"],
    ["n", call.n ?? 1],
    ["latency", fmtMs(call.latency_ms)],
    ["attempts", call.attempts ?? "–"],
    ["tokens", `${fmtInt(call.prompt_tokens)} prompt → ${fmtInt(call.completion_tokens)} completion` +
      (call.reasoning_tokens ? ` (${call.reasoning_tokens_estimated ? "~" : ""}${fmtInt(call.reasoning_tokens)} reasoning)` : "")],
    ["cost", call.cost_known === false ? "n/a (the pool has no prices)" : fmtCost(call.cost)],
    call.attributes.finish_reasons && ["finish", call.attributes.finish_reasons.join(", ")],
    call.error && ["error", call.error],
  ]));
  const texts = h("div", { class: "call-texts" });
  const forkBox = h("div", { class: "fork-box" });
  const canLoad = !call.error && call.end_ts;
  pane.append(
    h("div", { class: "actions" },
      h("button", { type: "button", class: "load-texts", disabled: !canLoad, text: "Show prompt & response",
        onclick: async (e) => { e.target.disabled = true; await showTexts(texts, view.jobId, call.span_id); } }),
      h("button", { type: "button", class: "fork-open secondary", disabled: !view.canFork(), text: "Fork from this call…",
        title: view.canFork() ? "" : "Fork once the job has finished",
        onclick: (e) => { e.target.disabled = true; forkForm(forkBox, call, view); } })),
    forkBox, texts);
}

async function loadCall(jobId, spanId) {
  return api(`/dashboard/api/jobs/${enc(jobId)}/calls/${enc(spanId)}`);
}

export async function showTexts(box, jobId, spanId) {
  clear(box).append(h("p", { class: "muted", text: "Loading…" }));
  try {
    const call = await loadCall(jobId, spanId);
    clear(box).append(callTexts(call));
  } catch (err) {
    clear(box).append(errorBox(err));
  }
}

export function callTexts(call) {
  const req = call.request || {};
  const prompt = req.messages
    ? req.messages.map((m) => h("div", { class: `msg msg-${m.role}` }, h("small", { text: m.role }), h("pre", { text: m.content ?? "" })))
    : [h("div", { class: "msg" }, h("small", { text: "prompt" }), h("pre", { text: req.prompt ?? "" }))];
  const settings = Object.entries(req).filter(([k]) => k !== "messages" && k !== "prompt");
  return h("div", { class: "texts" },
    h("h4", { text: "Prompt" }), prompt,
    settings.length ? h("p", { class: "muted small", text: settings.map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" · ") }) : null,
    h("h4", { text: call.choices.length > 1 ? `Response (${call.choices.length} choices)` : "Response" }),
    call.choices.map((c) => h("div", { class: "choice" },
      h("small", { text: `choice ${c.index} · ${c.finish_reason || "?"}` }),
      c.tokens ? tokenText(c) : h("pre", { class: "response", text: c.text }))),
    call.copied_from ? h("p", { class: "muted small", text: `journal entry copied from job ${call.copied_from}` }) : null);
}

// Sampled tokens shaded by probability; hover shows the logprob and the alternatives.
function tokenText(choice) {
  const pre = h("pre", { class: "response tokens" });
  for (const t of choice.tokens) {
    const p = Math.exp(t.logprob);
    const span = h("span", { class: p < 0.5 ? "tok low" : p < 0.9 ? "tok mid" : "tok", text: t.token,
      title: `logprob ${t.logprob.toFixed(3)} (p=${p.toFixed(3)})${t.top.length ? `\n${t.top.map(([a, lp]) => `${JSON.stringify(a)} ${lp.toFixed(3)}`).join("\n")}` : ""}` });
    pre.append(span);
  }
  if (choice.tokens_truncated) pre.append(h("span", { class: "muted", text: " … (more tokens not shown)" }));
  return pre;
}

async function forkForm(box, call, view) {
  clear(box).append(h("p", { class: "muted", text: "Finding the call's place in the journal…" }));
  let entry;
  try {
    entry = await loadCall(view.jobId, call.span_id);
  } catch (err) {
    clear(box).append(errorBox(err));
    return;
  }
  const keep = h("input", { type: "number", min: 0, value: entry.fork_from, name: "fork_from", required: true });
  const mode = h("select", { name: "mode" }, h("option", { value: "live", text: "live: call the model on a miss" }),
    h("option", { value: "strict", text: "strict: fail on a journal miss" }));
  const strategy = h("textarea", { name: "strategy", rows: 3, spellcheck: "false", placeholder: '{"temperature": 1.0}' });
  const roles = h("textarea", { name: "roles", rows: 2, spellcheck: "false", placeholder: '{"small": "large"}' });
  const error = h("div", { class: "form-error", role: "alert" });
  const submit = h("button", { type: "submit", class: "fork-submit", text: "Start fork" });
  const form = h("form", { class: "fork-form" },
    h("p", { class: "muted small", text: `The child gets the first N of this job's journal entries (in recording order). ` +
      `N = ${entry.fork_from} keeps everything recorded before this call, so the child runs this call and all later ones again.` }),
    h("label", {}, "Keep journal entries", keep),
    h("label", {}, "Mode", mode),
    h("label", {}, h("span", {}, "Strategy overrides (JSON, merged into ", h("code", { text: attrSummary(view.job.strategy, 6) }), ")"), strategy),
    h("label", {}, "Roles (JSON, live mode: role → pool)", roles),
    error, submit);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const body = { mode: mode.value, fork_from: Number(keep.value) };
    for (const [name, area] of [["strategy", strategy], ["roles", roles]]) {
      if (!area.value.trim()) continue;
      try {
        body[name] = JSON.parse(area.value);
      } catch (err) {
        error.textContent = `${name}: not valid JSON (${err.message})`;
        return;
      }
    }
    submit.disabled = true;
    try {
      const child = await api(`/v1/jobs/${enc(view.jobId)}/replay`, { method: "POST", body });
      location.hash = `#/jobs/${child.id}`;
    } catch (err) {
      error.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
      submit.disabled = false;
    }
  });
  clear(box).append(form);
}
