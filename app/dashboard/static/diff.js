// Two jobs side by side (GET /v1/jobs/{a}/diff/{b}): whether the answers differ and
// whether the paths (the calls) differ, told apart; the parameter overrides between the
// two specs; a line diff of the first divergent call's prompt and response; token/cost/
// latency deltas; and the calls (model and tool) in issue order, the first divergent one
// marked. Selecting a pair of calls loads both prompts and responses.

import { api, enc } from "./api.js";
import { callTexts } from "./details.js";
import { clear, errorBox, fmtCost, fmtInt, fmtMs, fmtSigned, h, shortId, statusBadge } from "./dom.js";
import { TraceModel } from "./trace.js";
import { VirtualList } from "./vlist.js";

export function diffView(main, a, b, shell) {
  if (!a || !b) return picker(main, a, shell);
  let disposed = false;
  let list = null;
  clear(main).append(h("p", { class: "loading", text: "Comparing…" }));
  (async () => {
    let diff, left, right;
    try {
      [diff, left, right] = await Promise.all([
        api(`/v1/jobs/${enc(a)}/diff/${enc(b)}`),
        api(`/dashboard/api/jobs/${enc(a)}/spans`),
        api(`/dashboard/api/jobs/${enc(b)}/spans`),
      ]);
    } catch (err) {
      clear(main).append(errorBox(err));
      return;
    }
    if (disposed) return;
    list = render(main, diff, side(left), side(right));
    shell.ready("diff");
  })();
  return () => { disposed = true; if (list) list.destroy(); };
}

// The calls in issue (seq) order, tool calls included: the indexes the diff API uses.
function side(data) {
  const model = new TraceModel();
  model.load(data.events);
  return { job: data.job, calls: model.spans.filter((s) => s.type === "model_call" || s.type === "tool_call") };
}

function render(main, diff, A, B) {
  const first = diff.first_divergence;
  const n = Math.max(A.calls.length, B.calls.length);
  const byIndex = new Map(diff.calls.map((c) => [c.index, c]));
  const totals = (s) => ({
    calls: s.calls.length,
    live: s.calls.filter((c) => c.journal === "miss").length,
    prompt: s.calls.reduce((t, c) => t + c.prompt_tokens, 0),
    completion: s.calls.reduce((t, c) => t + c.completion_tokens, 0),
    cost: s.calls.reduce((t, c) => t + c.cost, 0),
    latency: s.calls.reduce((t, c) => t + (c.duration_ms || 0), 0),
    wall: A.job.usage && s.job.usage ? s.job.usage.wall_s : null,
  });
  const ta = totals(A);
  const tb = totals(B);
  const d = diff.deltas;
  const deltaRows = [
    ["calls", ta.calls, tb.calls, d.calls, fmtInt],
    ["live calls", ta.live, tb.live, d.live_calls, fmtInt],
    ["prompt tokens", ta.prompt, tb.prompt, d.prompt_tokens, fmtInt],
    ["completion tokens", ta.completion, tb.completion, d.completion_tokens, fmtInt],
    ["cost", ta.cost, tb.cost, d.cost, fmtCost],
    ["call latency (sum)", ta.latency, tb.latency, d.call_latency_ms, fmtMs],
    ["wall time", ta.wall === null ? null : ta.wall * 1000, B.job.usage ? B.job.usage.wall_s * 1000 : null, d.wall_s === null ? null : d.wall_s * 1000, fmtMs],
  ];
  const texts = h("div", { class: "pair-texts" });
  const rows = h("div", { class: "diff-rows" });
  const [answerA, answerB] = diff.answers;
  const answersDiffer = answerA !== answerB;
  const verdict = verdictOf(answersDiffer, first);
  const textDiff = h("div", { class: "card text-diff", hidden: !first });

  const section = h("section", { class: "view diff-view" },
    h("div", { class: "view-head" }, h("h1", { text: "Diff" }),
      h("a", { class: "button ghost", href: `#/diff/${diff.b}/${diff.a}`, text: "⇄ swap" })),
    h("div", { class: "diff-sides" }, jobCard("A", A.job), jobCard("B", B.job)),
    h("div", { class: "cards" },
      h("div", { class: `card verdict ${verdict.css}`, dataset: { answers: answersDiffer ? "differ" : "same", paths: first ? "differ" : "same" } },
        h("h3", { text: verdict.title }),
        h("p", { class: "verdict-detail muted small", text: verdict.detail }),
        h("div", { class: "answers" },
          h("div", {}, h("small", { text: "A answered" }), h("b", { class: "answer-a", text: answerA ?? "∅" })),
          h("div", {}, h("small", { text: "B answered" }), h("b", { class: `answer-b${answersDiffer ? " changed" : ""}`, text: answerB ?? "∅" }))),
        first
          ? h("p", { class: "divergence" }, `First divergence at call #${first.index + 1}: `, h("b", { text: reasonText(first.reason) }),
            ` (${first.differences.join(", ")})`)
          : h("p", { class: "muted", text: "Every call has the same request and the same response." })),
      h("div", { class: "card deltas-card" }, h("h3", { text: "Deltas (B − A)" }),
        h("table", { class: "deltas" }, h("thead", {}, h("tr", {}, ["", "A", "B", "Δ"].map((t) => h("th", { text: t })))),
          h("tbody", {}, deltaRows.map(([label, va, vb, delta, fmt]) => h("tr", {},
            h("td", { text: label }), h("td", { class: "num", text: va === null ? "–" : fmt(va) }),
            h("td", { class: "num", text: vb === null ? "–" : fmt(vb) }),
            h("td", { class: `num ${delta > 0 ? "up" : delta < 0 ? "down" : ""}`, text: fmtSigned(delta, fmt) }))))))),
    overridesCard(A.job, B.job),
    textDiff,
    h("div", { class: "card calls-card" },
      h("div", { class: "card-head" }, h("h3", { text: "Model calls in issue order" }),
        h("span", { class: "muted small", text: "select a row to compare the two calls' prompts and responses" })),
      h("div", { class: "diff-row diff-header" }, h("span", { text: "#" }), h("span", { text: `A · ${shortId(diff.a)}` }),
        h("span", { text: "" }), h("span", { text: `B · ${shortId(diff.b)}` })),
      rows),
    texts);
  clear(main).append(section);

  let selected = first ? first.index : null;
  const list = new VirtualList(rows, {
    rowHeight: 28,
    maxHeight: () => Math.max(120, Math.min(window.innerHeight * 0.45, 420)),
    render(el, i) {
      const cmp = byIndex.get(i);
      const diverged = first && i === first.index;
      el.className = `vrow diff-row${diverged ? " divergent" : ""}${first && i > first.index ? " after" : ""}${i === selected ? " selected" : ""}`;
      clear(el).append(h("span", { class: "seq", text: String(i + 1) }), callCell(A.calls[i]), h("span", { class: "match", text: matchText(cmp, A.calls[i], B.calls[i]), title: diverged ? first.differences.join(", ") : "" }), callCell(B.calls[i]));
    },
  });
  list.setCount(n);
  rows.addEventListener("click", (event) => {
    const el = event.target.closest(".vrow");
    if (!el) return;
    selected = Number(el.dataset.index);
    list.refresh();
    showPair(texts, diff, A.calls[selected], B.calls[selected], selected);
  });
  if (first) {
    list.reveal(first.index);
    showPair(texts, diff, A.calls[first.index], B.calls[first.index], first.index);
    showTextDiff(textDiff, diff, A.calls[first.index], B.calls[first.index], first.index);
  }
  return list;
}

// "Answers differ" and "paths differ" are separate facts: two jobs can reach one answer
// by different calls (a fork, another seed), or differ in answer on the same calls (a
// what-if on how votes are counted).
function verdictOf(answersDiffer, first) {
  if (answersDiffer) {
    return { css: "different", title: "Answers differ",
      detail: first ? "The answers differ, and so do the paths (the calls made)." : "The answers differ on the same path: every call is the same." };
  }
  if (first) return { css: "paths", title: "Same answer, paths differ", detail: "Both jobs answered the same; the calls they made differ." };
  return { css: "same", title: "Identical", detail: "Same answer, same calls." };
}

// Leaves of a JSON value as dotted paths: {"n": 3, "judge": {"t": 0.5}} -> n, judge.t.
function flatten(value, prefix, out = new Map()) {
  if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.set(prefix, JSON.stringify(value));
  }
  return out;
}

// What differs between the two jobs' validated strategy specs (defaults filled in, so a
// parameter one job set and the other left at its default still shows), role bindings,
// budgets and seeds.
export function overrides(a, b) {
  const left = flatten({ strategy: a.strategy, roles: a.roles, budget: a.budget, seed: a.seed }, "");
  const right = flatten({ strategy: b.strategy, roles: b.roles, budget: b.budget, seed: b.seed }, "");
  const keys = [...new Set([...left.keys(), ...right.keys()])];
  return keys.filter((k) => left.get(k) !== right.get(k)).sort()
    .map((k) => ({ param: k.replace(/^strategy\./, ""), a: left.get(k), b: right.get(k) }));
}

function overridesCard(a, b) {
  const rows = overrides(a, b);
  return h("div", { class: "card overrides-card" },
    h("div", { class: "card-head" }, h("h3", { text: "Parameter overrides" }),
      h("span", { class: "muted small", text: "where B's strategy spec, roles, budget or seed differ from A's" })),
    rows.length
      ? h("table", { class: "overrides" }, h("thead", {}, h("tr", {}, ["parameter", "A", "B"].map((t) => h("th", { text: t })))),
        h("tbody", {}, rows.map((r) => h("tr", { dataset: { param: r.param } },
          h("td", {}, h("code", { text: r.param })), h("td", {}, h("code", { text: r.a ?? "—" })), h("td", {}, h("code", { text: r.b ?? "—" }))))))
      : h("p", { class: "muted no-overrides", text: "None: the same strategy spec, roles, budget and seed." }));
}

// The call's texts as plain lines: the request's settings, then each message under its
// role; the response's choices (a tool call: its arguments and output).
function promptLines(call) {
  const req = call.request || {};
  const lines = Object.entries(req).filter(([k]) => k !== "messages" && k !== "prompt")
    .sort(([x], [y]) => (x < y ? -1 : 1)).map(([k, v]) => `${k}: ${JSON.stringify(v)}`);
  for (const m of req.messages || []) {
    const content = typeof m.content === "string" ? m.content : JSON.stringify(m.content ?? "");
    lines.push(`[${m.role}]`, ...content.split("\n"));
  }
  if (typeof req.prompt === "string") lines.push(...req.prompt.split("\n"));
  return lines.join("\n");
}

function responseLines(call) {
  if (call.choices.length === 1) return call.choices[0].text;
  return call.choices.map((c) => `[choice ${c.index}]\n${c.text}`).join("\n");
}

async function callSides(jobId, call) {
  if (!call) return { prompt: "", response: "" };
  if (call.type === "tool_call") {
    const a = call.attributes || {};
    return { prompt: `tool: ${call.tool}\n${typeof a.arguments === "string" ? a.arguments : JSON.stringify(a.arguments ?? "")}`, response: `${a.output || ""}${a.error ? `\n${a.error}` : ""}` };
  }
  const texts = await api(`/dashboard/api/jobs/${enc(jobId)}/calls/${enc(call.span_id)}`);
  return { prompt: promptLines(texts), response: responseLines(texts) };
}

// A line diff by longest common subsequence: [[" " | "-" | "+", line]], A's lines "-".
export function lineDiff(a, b) {
  const x = a === "" ? [] : a.split("\n");
  const y = b === "" ? [] : b.split("\n");
  const n = x.length;
  const m = y.length;
  if (n * m > 4e6) return [...x.map((l) => ["-", l]), ...y.map((l) => ["+", l])];
  const lcs = new Uint32Array((n + 1) * (m + 1));
  const at = (i, j) => i * (m + 1) + j;
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[at(i, j)] = x[i] === y[j] ? lcs[at(i + 1, j + 1)] + 1 : Math.max(lcs[at(i + 1, j)], lcs[at(i, j + 1)]);
    }
  }
  const out = [];
  let i = 0;
  let j = 0;
  while (i < n && j < m) {
    if (x[i] === y[j]) { out.push([" ", x[i]]); i++; j++; }
    else if (lcs[at(i + 1, j)] >= lcs[at(i, j + 1)]) out.push(["-", x[i++]]);
    else out.push(["+", y[j++]]);
  }
  while (i < n) out.push(["-", x[i++]]);
  while (j < m) out.push(["+", y[j++]]);
  return out;
}

function diffBlock(label, a, b) {
  const lines = lineDiff(a, b);
  const changed = lines.filter(([op]) => op !== " ").length;
  const css = { " ": "same", "-": "del", "+": "add" };
  return h("div", { class: `diff-block diff-${label}` },
    h("h4", { text: `${label[0].toUpperCase()}${label.slice(1)} (${changed ? `${changed} line${changed === 1 ? "" : "s"} changed` : "the same"})` }),
    h("pre", {}, lines.map(([op, line]) => h("span", { class: `line ${css[op]}`, text: `${op} ${line}` }))));
}

async function showTextDiff(box, diff, a, b, index) {
  clear(box).append(h("h3", { text: `Text diff of call #${index + 1} (A → B)` }), h("p", { class: "muted", text: "Loading both calls…" }));
  let left, right;
  try {
    [left, right] = await Promise.all([callSides(diff.a, a), callSides(diff.b, b)]);
  } catch (err) {
    clear(box).append(h("h3", { text: `Text diff of call #${index + 1}` }), errorBox(err));
    return;
  }
  clear(box).append(
    h("div", { class: "card-head" }, h("h3", { text: `Text diff of call #${index + 1} (A → B)` }),
      h("span", { class: "muted small", text: "the first divergent call: − only in A, + only in B" })),
    diffBlock("prompt", left.prompt, right.prompt), diffBlock("response", left.response, right.response));
}

function reasonText(reason) {
  return { request: "the requests differ", response: "same request, different response", only_in_a: "only A made this call", only_in_b: "only B made this call" }[reason] || reason;
}

function matchText(cmp, a, b) {
  if (!a || !b) return a ? "only A" : "only B";
  if (!cmp) return "";
  if (!cmp.same_request) return "≠ request";
  if (cmp.same_response === false) return "≠ response";
  return "=";
}

function jobCard(label, job) {
  return h("div", { class: "card side" },
    h("div", { class: "title-line" }, h("b", { text: label }), h("a", { href: `#/jobs/${job.id}`, class: `job-link-${label.toLowerCase()}` }, h("code", { text: shortId(job.id), title: job.id })),
      statusBadge(job.status), h("span", { class: "chip", text: job.strategy.kind })),
    h("p", { class: "question small", text: job.question }),
    job.parent_job_id ? h("p", { class: "muted small", text: `child of ${shortId(job.parent_job_id)} · ${job.replay_mode}${job.fork_point !== null ? ` · fork at ${job.fork_point}` : ""}` }) : null);
}

function callCell(call) {
  if (!call) return h("span", { class: "call empty", text: "—" });
  if (call.type === "tool_call") {
    return h("span", { class: `call tool${call.journal === "hit" ? " hit" : ""}` },
      `tool ${call.tool} · ${call.ok === false ? "error" : "ok"} · ${fmtMs(call.latency_ms ?? call.duration_ms)}${call.journal === "hit" ? " · journal" : ""}`);
  }
  return h("span", { class: `call${call.journal === "hit" ? " hit" : ""}` },
    `${call.role} · ${call.model} · ${fmtInt(call.prompt_tokens)}→${fmtInt(call.completion_tokens)} tok · ${fmtMs(call.duration_ms)}${call.journal === "hit" ? " · journal" : ""}`);
}

async function showPair(box, diff, a, b, index) {
  const column = async (jobId, call, label) => {
    const col = h("div", { class: "card pair-col" }, h("h3", { text: `${label} · call #${index + 1}` }));
    if (!call) {
      col.append(h("p", { class: "muted", text: "This job made no such call." }));
      return col;
    }
    if (call.type === "tool_call") {
      const sides = await callSides(jobId, call);
      col.append(h("div", { class: "texts" }, h("h4", { text: "Tool call" }), h("pre", { text: sides.prompt }),
        h("h4", { text: "Output" }), h("div", { class: "choice" }, h("pre", { class: "response", text: sides.response }))));
      return col;
    }
    try {
      col.append(callTexts(await api(`/dashboard/api/jobs/${enc(jobId)}/calls/${enc(call.span_id)}`)));
    } catch (err) {
      col.append(errorBox(err));
    }
    return col;
  };
  clear(box).append(h("p", { class: "muted", text: "Loading both calls…" }));
  const cols = await Promise.all([column(diff.a, a, "A"), column(diff.b, b, "B")]);
  clear(box).append(...cols);
  // Mark the choices whose text differs from the other side's choice of the same index.
  const [left, right] = cols.map((c) => [...c.querySelectorAll(".choice")]);
  for (let i = 0; i < Math.max(left.length, right.length); i++) {
    if (left[i]?.textContent === right[i]?.textContent) continue;
    left[i]?.classList.add("differs");
    right[i]?.classList.add("differs");
  }
}

function picker(main, a, shell) {
  const left = h("input", { type: "text", name: "a", value: a || "", placeholder: "job id A", required: true });
  const right = h("input", { type: "text", name: "b", placeholder: "job id B", required: true });
  clear(main).append(h("section", { class: "view" }, h("h1", { text: "Diff two jobs" }),
    h("form", { class: "card inline-form", onsubmit: (e) => { e.preventDefault(); location.hash = `#/diff/${left.value.trim()}/${right.value.trim()}`; } },
      left, right, h("button", { type: "submit", text: "Compare" })),
    h("p", { class: "muted", text: "Or tick two jobs in the list, or use “Diff with parent” on a replay or fork." })));
  shell.ready("diff-picker");
  return () => {};
}
