// One job: header and summary, the call timeline, budget over time, the span tree with a
// Gantt column (virtualised), the decisions, the selected span's details, live updates
// from the event stream, and step-through replay.

import { ApiError, api, enc, followEvents } from "./api.js";
import { BudgetChart, CallTimeline, legend } from "./charts.js";
import { renderDetails } from "./details.js";
import {
  attrSummary, clear, errorBox, fmtCost, fmtInt, fmtMs, fmtTime, h, isFinal, jobLatencyMs,
  roleColor, shortId, statusBadge, voteBars,
} from "./dom.js";
import { Player } from "./player.js";
import { TraceModel } from "./trace.js";
import { VirtualList } from "./vlist.js";

const ROW_H = 24;
const ICON = { job: "J", strategy: "S", span: "▢", model_call: "●", tool_call: "⚙", decision: "◆" };

export function jobView(main, jobId, params, shell) {
  const view = new JobView(main, jobId, params, shell);
  view.start();
  return () => view.destroy();
}

class JobView {
  constructor(main, jobId, params, shell) {
    Object.assign(this, { main, jobId, shell });
    this.model = new TraceModel();
    this.collapsed = new Set();
    this.filter = "";
    this.selected = params.get("span");
    this.position = null; // replay step; null = the whole trace
    this.rows = [];
    this.follow = true;
    this.frame = 0;
    this.onKey = (e) => this.player && this.player.key(e);
  }

  async start() {
    clear(this.main).append(h("p", { class: "loading", text: "Loading job…" }));
    try {
      const data = await api(`/dashboard/api/jobs/${enc(this.jobId)}/spans`);
      this.job = data.job;
      this.model.load(data.events);
      performance.mark("ponder:job:data"); // fetched, parsed and indexed (for the TTI bench)
    } catch (err) {
      clear(this.main).append(errorBox(err instanceof ApiError && err.status === 404 ? `Job ${this.jobId} not found for this key.` : err));
      return;
    }
    if (this.disposed) return;
    this.layout();
    this.render();
    if (this.selected) this.select(this.selected, true);
    window.addEventListener("keydown", this.onKey);
    if (!isFinal(this.job.status)) this.goLive();
    this.shell.ready("job");
  }

  // -- live ------------------------------------------------------------------------
  goLive() {
    // Resume after the longest gap-free prefix: a later span may already be stored while
    // an earlier call is still in flight, and the stream sends only seqs after `after`.
    let after = 0;
    while (this.model.bySeq.has(after + 1)) after++;
    this.stopLive = followEvents(this.jobId, {
      after,
      onEvent: (event) => this.onEvent(event),
      onState: (state, err) => {
        this.shell.liveState(state === "done" ? null : state);
        if (err) this.notice(err.message);
      },
    });
  }

  onEvent(event) {
    if (event.type === "job_finished") {
      Object.assign(this.job, { status: event.status, result: event.result, usage: event.usage, error: event.error });
      api(`/v1/jobs/${enc(this.jobId)}`).then((job) => { this.job = job; this.schedule(); }).catch(() => {});
    } else if (event.type === "job_restarted") {
      this.model.reset();
      this.notice(`A worker restarted the job (attempt ${event.attempt}): the trace is rebuilt.`);
    } else {
      this.model.upsert(event);
      if (this.job.status === "queued") this.job.status = "running";
    }
    this.schedule();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.render();
    });
  }

  notice(text) {
    this.els.notice.textContent = text;
    this.els.notice.hidden = !text;
  }

  canFork() {
    return isFinal(this.job.status);
  }

  // -- layout ----------------------------------------------------------------------
  layout() {
    const e = (this.els = {});
    e.head = h("div", { class: "job-head" });
    e.notice = h("div", { class: "notice", hidden: true });
    e.cards = h("div", { class: "cards" });
    e.answer = h("div", { class: "card answer-card" });
    e.votes = h("div", { class: "card votes-card" });
    e.usage = h("div", { class: "card usage-card" });
    e.budgetText = h("div", { class: "budget-meters" });
    e.budgetCanvas = h("canvas", { class: "budget-chart", "aria-label": "Generated tokens over time" });
    e.budget = h("div", { class: "card budget-card" }, h("h3", { text: "Budget over time" }), e.budgetText, e.budgetCanvas);
    e.cards.append(e.answer, e.votes, e.usage, e.budget);
    e.timelineCanvas = h("canvas", { class: "timeline", "aria-label": "Model calls over time" });
    e.tooltip = h("div", { class: "tooltip", hidden: true });
    e.timelineInfo = h("span", { class: "muted" });
    e.legend = h("span");
    e.timeline = h("div", { class: "card timeline-card" },
      h("div", { class: "card-head" }, h("h3", { text: "Model calls over time" }), e.timelineInfo, e.legend),
      h("div", { class: "canvas-wrap" }, e.timelineCanvas, e.tooltip));
    e.playerBox = h("div", { class: "player-box" });
    e.filter = h("input", { type: "search", placeholder: "Filter spans (name, role, attribute…)", "aria-label": "Filter spans",
      oninput: () => { this.filter = e.filter.value.trim(); this.render(); } });
    e.count = h("span", { class: "muted small" });
    e.followBox = h("input", { type: "checkbox", checked: true, onchange: () => { this.follow = e.followBox.checked; } });
    e.rows = h("div", { class: "trace-rows", tabindex: 0, "aria-label": "Span tree" });
    e.axis = h("span", { class: "axis-label" });
    e.details = h("aside", { class: "card details-pane", "aria-label": "Span details" });
    e.trace = h("div", { class: "trace-layout" },
      h("div", { class: "card trace-pane" },
        h("div", { class: "trace-tools" }, e.filter,
          h("button", { type: "button", class: "ghost", text: "Expand all", onclick: () => { this.collapsed.clear(); this.render(); } }),
          h("button", { type: "button", class: "ghost", text: "Collapse calls", onclick: () => this.collapseGroups() }),
          (e.followLabel = h("label", { class: "follow", title: "Keep the newest span in view" }, e.followBox, "follow")), e.count),
        h("div", { class: "trace-header" }, h("span", { text: "Span" }), e.axis),
        e.rows),
      e.details);
    e.decisionRows = h("div", { class: "decision-rows" });
    e.decisions = h("div", { class: "card decisions-card" },
      h("div", { class: "card-head" }, h("h3", { text: "Decisions" }), h("span", { class: "muted small", text: "votes, scores, routing, budget events — in order" })),
      e.decisionRows);
    const section = h("section", { class: "view job-view" }, e.head, e.notice, e.cards, e.timeline, e.playerBox, e.trace, e.decisions);
    clear(this.main).append(section);

    this.list = new VirtualList(e.rows, { rowHeight: ROW_H, render: (el, i) => this.renderRow(el, i),
      maxHeight: () => Math.max(240, Math.min(window.innerHeight * 0.62, 640)) });
    e.rows.addEventListener("click", (event) => this.onRowClick(event));
    this.decisionList = new VirtualList(e.decisionRows, { rowHeight: 26, render: (el, i) => this.renderDecision(el, i), maxHeight: 260 });
    e.decisionRows.addEventListener("click", (event) => {
      const row = event.target.closest(".vrow");
      if (row) this.select(this.decisionItems[Number(row.dataset.index)].span_id, true);
    });
    this.timeline = new CallTimeline(e.timelineCanvas, e.tooltip, { onPick: (id) => this.select(id, true) });
    this.budgetChart = new BudgetChart(e.budgetCanvas);
    this.player = new Player(e.playerBox, { total: this.model.spans.length, onStep: (k) => this.onStep(k) });
  }

  collapseGroups() {
    for (const [id] of this.model.children) {
      const span = this.model.byId.get(id);
      if (span && span.type !== "job" && span.type !== "strategy") this.collapsed.add(id);
    }
    this.render();
  }

  // -- rendering -------------------------------------------------------------------
  render() {
    if (this.disposed || !this.els) return;
    const m = this.model;
    m.build();
    const step = this.position;
    const maxSeq = step === null ? Infinity : step === 0 ? 0 : m.spans[step - 1].seq;
    this.asOf = step === null ? null : m.asOf[step];
    this.rows = m.flatten({ collapsed: this.collapsed, maxSeq, filter: this.filter });
    this.list.setCount(this.rows.length);
    this.decisionItems = m.decisions.filter((d) => d.seq <= maxSeq);
    this.decisionList.setCount(this.decisionItems.length);
    this.els.decisions.hidden = m.decisions.length === 0;
    this.els.count.textContent = `${fmtInt(this.rows.length)} of ${fmtInt(m.spans.length)} spans`;
    this.els.followLabel.hidden = isFinal(this.job.status);
    this.els.axis.textContent = m.t0 === null ? "" : `timeline · 0 – ${fmtMs(m.t1 - m.t0)}`;
    this.renderHead();
    this.renderSummary(step);
    const roles = [...new Set(m.calls.map((c) => c.role))];
    this.timeline.cursor = this.asOf;
    this.timeline.selected = this.selected;
    if (m.t0 !== null) this.timeline.set(m.calls, m.decisions, m.t0, m.t1);
    this.els.timelineInfo.textContent = `${fmtInt(m.calls.length)} calls · peak ${this.timeline.peak || 0} in flight`;
    clear(this.els.legend).append(legend(roles));
    this.budgetChart.cursor = this.asOf;
    if (m.t0 !== null) this.budgetChart.set(m.spendSeries(), this.job.budget.max_tokens ?? null, m.t0, m.t1);
    this.player.setTotal(m.spans.length);
    this.player.setEnabled(isFinal(this.job.status), "Replay opens when the job has finished; it is updating live now.");
    if (step === null && this.follow && !isFinal(this.job.status) && this.rows.length) this.list.reveal(this.rows.length - 1);
    this.showDetails(this.selected ? m.byId.get(this.selected) : null);
  }

  // Re-rendered only when the span's state or the job's finality changed: a live update
  // must not throw away prompt texts or a fork form the user has open.
  showDetails(span) {
    const key = `${isFinal(this.job.status)}`;
    if (span === this.detailsSpan && key === this.detailsKey && this.els.details.firstChild) return;
    this.detailsSpan = span;
    this.detailsKey = key;
    renderDetails(this.els.details, span, this);
  }

  renderHead() {
    const job = this.job;
    const head = clear(this.els.head);
    const actions = h("div", { class: "actions" });
    if (!isFinal(job.status)) {
      actions.append(h("button", { type: "button", class: "ghost", text: "Cancel", onclick: () => this.act(`/v1/jobs/${enc(job.id)}/cancel`, {}, false) }));
    } else {
      actions.append(h("button", { type: "button", class: "secondary", text: "Replay (strict)", title: "A child job that reproduces this one from the journal, with zero model calls",
        onclick: () => this.act(`/v1/jobs/${enc(job.id)}/replay`, { mode: "strict" }, true) }));
    }
    if (job.parent_job_id) actions.append(h("a", { class: "button ghost", href: `#/diff/${job.parent_job_id}/${job.id}`, text: "Diff with parent" }));
    const other = h("input", { type: "text", placeholder: "job id", "aria-label": "Job to diff with", size: 12 });
    actions.append(h("form", { class: "inline", onsubmit: (e) => { e.preventDefault(); if (other.value.trim()) location.hash = `#/diff/${job.id}/${other.value.trim()}`; } },
      other, h("button", { type: "submit", class: "ghost", text: "Diff with…" })));
    const live = !isFinal(job.status) ? h("span", { class: "live-dot", title: "Updating live from the event stream", text: "live" }) : null;
    head.append(
      h("div", { class: "title-line" }, h("h1", {}, "Job ", h("code", { text: shortId(job.id), title: job.id })), statusBadge(job.status), live,
        h("span", { class: "chip", text: job.strategy.kind }), actions),
      job.conversation ? conversationBlock(job.conversation) : h("p", { class: "question", text: job.question }),
      h("p", { class: "meta muted" },
        `created ${fmtTime(job.created_at)} · seed ${job.seed} · ${job.priority} priority · id ${job.id}`,
        job.parent_job_id ? [" · ", job.replay_mode === "live" || job.fork_point !== null ? "forked" : "replayed", " from ",
          h("a", { href: `#/jobs/${job.parent_job_id}`, class: "parent-link", text: shortId(job.parent_job_id) }),
          job.fork_point !== null ? ` at journal entry ${job.fork_point}` : "", ` (${job.replay_mode})`] : null));
  }

  async act(path, body, navigate) {
    try {
      const job = await api(path, { method: "POST", body });
      if (navigate) location.hash = `#/jobs/${job.id}`;
      else { this.job = job; this.render(); }
    } catch (err) {
      this.notice(err.message);
    }
  }

  renderSummary(step) {
    const { job, model: m } = this;
    const result = job.result || {};
    const answer = clear(this.els.answer);
    answer.append(h("h3", { text: "Final answer" }));
    if (step !== null) answer.append(h("p", { class: "muted small", text: "(the job's final answer; the replay is at an earlier step)" }));
    if (job.error) answer.append(errorBox(`${job.error.code}: ${job.error.message}`));
    answer.append(h("div", { class: "answer-big", text: job.result ? (result.answer ?? "∅ (no answer)") : isFinal(job.status) ? "–" : "…" }));
    if (result.budget_exhausted) answer.append(h("span", { class: "badge warn", text: "budget exhausted" }));
    for (const call of result.tool_calls || []) answer.append(h("code", { class: "tool-call", text: `${call.name}(${call.arguments})` }));
    if (result.text) answer.append(h("details", {}, h("summary", { text: "answer text" }), h("pre", { class: "response", text: result.text })));

    const votes = clear(this.els.votes);
    const voteEvent = [...m.decisions].reverse().find((d) => d.attributes && d.attributes.votes && (step === null || d.seq <= m.spans[step - 1]?.seq));
    const shownVotes = step === null && result.votes ? result.votes : voteEvent ? voteEvent.attributes.votes : null;
    votes.append(h("h3", { text: "Votes" }));
    const none = step === null ? "No vote in this trace." : "No vote yet at this step.";
    votes.append(shownVotes && Object.keys(shownVotes).length ? voteBars(shownVotes, result.answer) : h("p", { class: "muted", text: none }));
    votes.hidden = !shownVotes && !m.decisions.length;

    // At a replay step every figure is what the job had spent by then, from the trace's
    // prefix sums; the elapsed time too (it read the finished job's wall time before).
    const u = job.usage;
    const spent = step === null ? null : this.spentAt(step);
    const liveCalls = m.calls.length;
    const liveTokens = m.calls.reduce((s, c) => s + c.prompt_tokens + c.completion_tokens, 0);
    const liveCost = m.calls.reduce((s, c) => s + c.cost, 0);
    // A call on a pool without prices has no known cost: the sum would understate it.
    const costUnknown = u ? u.cost_known === false : m.calls.some((c) => c.cost_known === false);
    const reasoning = spent ? spent.reasoning : u ? u.reasoning_tokens || 0 : m.calls.reduce((s, c) => s + (c.reasoning_tokens || 0), 0);
    const ofWhich = reasoning ? ` (${fmtInt(reasoning)} reasoning)` : "";
    const calls = spent ? fmtInt(spent.calls) : u ? `${fmtInt(u.calls)} (${fmtInt(u.live_calls)} live, ${fmtInt(u.journal_hits)} from journal)` : fmtInt(liveCalls);
    const tokens = spent ? `${fmtInt(spent.prompt)} prompt + ${fmtInt(spent.completion)} completion${ofWhich}`
      : u ? `${fmtInt(u.prompt_tokens)} prompt + ${fmtInt(u.completion_tokens)} completion${ofWhich}` : `${fmtInt(liveTokens)}${ofWhich}`;
    clear(this.els.usage).append(h("h3", { text: spent ? `Usage at step ${step}` : "Usage" }), h("dl", { class: "kv" },
      h("dt", { text: "calls" }), h("dd", { class: "usage-calls", text: calls, title: spent ? `${fmtInt(spent.hits)} of them from the journal` : null }),
      h("dt", { text: "tokens" }), h("dd", { class: "usage-tokens", text: tokens }),
      h("dt", { text: "cost" }), h("dd", { class: "usage-cost", text: costUnknown ? "n/a" : fmtCost(spent ? spent.cost : u ? u.cost : liveCost), title: costUnknown ? "a pool used has no prices" : null }),
      h("dt", { text: spent ? "elapsed" : "latency" }), h("dd", { class: "usage-latency", text: fmtMs(spent ? spent.elapsedMs : jobLatencyMs(job)) })));
    this.renderBudget(step);
    if (step !== null) {
      const span = step ? m.spans[step - 1] : null;
      this.player.setInfo(span ? `#${span.seq} ${span.type} ${span.type === "strategy" ? span.kind : span.name} ${span.type === "decision" ? attrSummary(span.attributes, 3) : ""}` : "start");
    } else if (isFinal(job.status)) {
      this.player.setInfo("Step through the recorded events in order (space, ←, →).");
    }
  }

  // What the job had spent after `step` events (seq order) and the time reached.
  spentAt(step) {
    const { spent, asOf, t0 } = this.model;
    return {
      calls: spent.calls[step], hits: spent.hits[step], prompt: spent.prompt[step], completion: spent.completion[step],
      tokens: spent.tokens[step], reasoning: spent.reasoning[step], cost: spent.cost[step],
      elapsedMs: t0 === null ? 0 : asOf[step] - t0,
    };
  }

  renderBudget(step) {
    const { job, model: m } = this;
    const b = job.budget || {};
    const last = m.spendSeries().at(-1) || { completion: 0, cost: 0, calls: 0 };
    const at = step === null ? null : this.spentAt(step);
    const used = at === null
      ? { tokens: last.completion, calls: m.calls.length, cost: last.cost, seconds: (jobLatencyMs(job) || 0) / 1000 }
      : { tokens: at.completion, calls: at.calls, cost: at.cost, seconds: at.elapsedMs / 1000 };
    const meters = [["generated tokens", used.tokens, b.max_tokens, fmtInt], ["calls", used.calls, b.max_calls, fmtInt],
      ["cost", used.cost, b.max_cost, fmtCost]];
    if (b.max_seconds) meters.push(["seconds", used.seconds, b.max_seconds, (v) => v.toFixed(1)]);
    clear(this.els.budgetText).append(...meters.map(([label, value, limit, fmt]) => {
      const fill = h("span", { class: "fill" });
      fill.style.width = limit ? `${Math.min(100, (100 * value) / limit)}%` : "0";
      return h("div", { class: `meter${limit && value >= limit ? " full" : ""}` },
        h("span", { class: "meter-label", text: label }), h("span", { class: "meter-bar" }, fill),
        h("span", { class: "meter-value", text: limit ? `${fmt(value)} / ${fmt(limit)}` : `${fmt(value)} (no limit)` }));
    }));
  }

  renderRow(el, index) {
    const row = this.rows[index];
    if (!row) return;
    const { span, depth, kids } = row;
    const m = this.model;
    const current = this.position && m.spans[this.position - 1] === span;
    el.className = `vrow trace-row type-${span.type}${span.span_id === this.selected ? " selected" : ""}${current ? " current" : ""}${span.error ? " failed" : ""}`;
    el.dataset.span = span.span_id;
    const name = h("div", { class: "cell-name" },
      kids ? h("button", { type: "button", class: "twisty", "aria-label": "toggle", text: this.collapsed.has(span.span_id) ? "▸" : "▾" }) : h("span", { class: "twisty" }),
      h("span", { class: `icon kind-${span.type}`, text: ICON[span.type] || "·" }),
      h("span", { class: "label", text: span.type === "strategy" ? span.kind : span.name }),
      h("span", { class: "meta", text: rowMeta(span) }));
    name.style.paddingLeft = `${4 + depth * 14}px`;
    clear(el).append(name, this.bar(span));
  }

  bar(span) {
    const m = this.model;
    const cell = h("div", { class: "cell-bar" });
    if (m.t0 === null) return cell;
    const total = m.t1 - m.t0;
    const left = ((span._start - m.t0) / total) * 100;
    if (span.type === "decision") {
      const mark = h("span", { class: "mark" });
      mark.style.left = `${left}%`;
      cell.append(mark);
      return cell;
    }
    let end = span._end ?? m.t1;
    const open = span._end === null || (this.asOf !== null && end > this.asOf);
    if (this.asOf !== null) end = Math.min(end, this.asOf);
    const bar = h("span", { class: `bar bar-${span.type}${open ? " open" : ""}${span.journal === "hit" ? " hit" : ""}` });
    bar.style.left = `${left}%`;
    bar.style.width = `${Math.max(0.15, ((end - span._start) / total) * 100)}%`;
    if (span.type === "model_call") bar.style.background = roleColor(span.role);
    cell.append(bar);
    return cell;
  }

  renderDecision(el, index) {
    const d = this.decisionItems[index];
    if (!d) return;
    el.className = `vrow decision-row${d.span_id === this.selected ? " selected" : ""}`;
    clear(el).append(h("span", { class: "seq", text: `#${d.seq}` }), h("span", { class: "label", text: d.name }),
      h("span", { class: "meta", text: attrSummary(d.attributes, 6) }));
  }

  onRowClick(event) {
    const el = event.target.closest(".vrow");
    if (!el) return;
    const row = this.rows[Number(el.dataset.index)];
    if (!row) return;
    if (event.target.classList.contains("twisty") && row.kids) {
      if (this.collapsed.has(row.span.span_id)) this.collapsed.delete(row.span.span_id);
      else this.collapsed.add(row.span.span_id);
      this.render();
      return;
    }
    this.select(row.span.span_id, false);
  }

  // Select a span: expand its ancestors, scroll it into view, show its details.
  select(spanId, reveal) {
    const span = this.model.byId.get(spanId);
    if (!span) return;
    this.selected = spanId;
    history.replaceState(null, "", `#/jobs/${this.jobId}?span=${spanId}`);
    if (reveal) {
      for (let p = this.model.byId.get(span.parent_span_id); p; p = this.model.byId.get(p.parent_span_id)) this.collapsed.delete(p.span_id);
    }
    this.showDetails(span);
    this.rows = this.model.flatten({ collapsed: this.collapsed, maxSeq: this.position === null ? Infinity : this.position ? this.model.spans[this.position - 1].seq : 0, filter: this.filter });
    this.list.setCount(this.rows.length);
    this.decisionList.refresh();
    this.timeline.selected = spanId;
    this.timeline.draw();
    if (reveal) {
      const index = this.rows.findIndex((r) => r.span === span);
      if (index >= 0) this.list.reveal(index);
    }
  }

  onStep(step) {
    this.position = step;
    const span = step ? this.model.spans[step - 1] : null;
    if (span) this.selected = span.span_id;
    this.render();
    const index = span ? this.rows.findIndex((r) => r.span === span) : -1;
    if (index >= 0) this.list.reveal(index);
  }

  destroy() {
    this.disposed = true;
    if (this.stopLive) this.stopLive();
    this.shell.liveState(null);
    window.removeEventListener("keydown", this.onKey);
    if (this.frame) cancelAnimationFrame(this.frame);
    for (const part of [this.list, this.decisionList, this.timeline, this.budgetChart, this.player]) if (part) part.destroy();
  }
}

// A job given a conversation: its turns (tool calls and results included), the tools it
// was offered, and the answer's kind and format. Open by default when short.
function conversationBlock(conv) {
  const turns = conv.messages.map((m) => {
    const calls = (m.tool_calls || []).map((c) => h("code", { class: "tool-call", text: `${c.function.name}(${c.function.arguments})` }));
    const who = m.role === "tool" ? `tool result (${m.tool_call_id})` : m.role;
    return h("li", { class: `turn role-${m.role}` }, h("span", { class: "turn-role", text: who }),
      m.content ? h("span", { class: "turn-text", text: m.content }) : null, ...calls);
  });
  const tools = (conv.tools || []).map((t) => h("li", {},
    h("code", { text: t.function.name }), t.function.description ? ` — ${t.function.description}` : "",
    t.function.parameters ? h("details", {}, h("summary", { text: "parameters" }), h("pre", { text: JSON.stringify(t.function.parameters, null, 2) })) : null));
  const format = conv.response_format ? JSON.stringify(conv.response_format) : null;
  const choice = conv.tool_choice ? (typeof conv.tool_choice === "string" ? conv.tool_choice : `function ${conv.tool_choice.function.name}`) : null;
  return h("details", { class: "conversation", open: conv.messages.length <= 6 },
    h("summary", {}, `Conversation: ${conv.messages.length} message${conv.messages.length === 1 ? "" : "s"}`,
      h("span", { class: "chip", text: `answer: ${conv.answer_kind}` }),
      tools.length ? h("span", { class: "chip", text: `${tools.length} tool${tools.length === 1 ? "" : "s"}` }) : null),
    h("ol", { class: "turns" }, ...turns),
    tools.length ? h("div", { class: "tools" }, h("h4", { text: choice ? `Tools (choice: ${choice})` : "Tools" }), h("ul", {}, ...tools)) : null,
    format ? h("p", { class: "muted small" }, "response format ", h("code", { text: format })) : null);
}

function rowMeta(span) {
  const dur = span.end_ts ? fmtMs(span.duration_ms) : "open";
  switch (span.type) {
    case "model_call":
      return `${span.role || ""} · ${span.model || ""} · ${fmtInt(span.prompt_tokens)}→${fmtInt(span.completion_tokens)} tok · ${span.end_ts ? fmtMs(span.duration_ms) : "…"}${span.journal === "hit" ? " · journal" : ""}${span.error ? ` · ${span.error}` : ""}`;
    case "tool_call":
      return `${span.tool || ""} · ${span.ok === false ? "error" : "ok"} · ${span.end_ts ? fmtMs(span.latency_ms ?? span.duration_ms) : "…"}${span.journal === "hit" ? " · journal" : ""}`;
    case "decision":
      return attrSummary(span.attributes);
    case "strategy":
      return `${span.end_ts ? `answer=${span.answer ?? "∅"}` : "running"}${span.budget_exhausted ? " · budget exhausted" : ""} · ${dur}`;
    case "job":
      return `${span.mode || "run"} · ${dur}`;
    default:
      return `${attrSummary(span.attributes, 3)} · ${dur}`;
  }
}
