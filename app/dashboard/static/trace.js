// A job's trace as state: span events keyed by span_id (a container arrives open, then
// again closed), ordered by seq, with the tree, the model calls and running totals
// derived from them on demand.

import { parseTs } from "./dom.js";

const SPAN_TYPES = new Set(["job", "strategy", "span", "model_call", "tool_call", "decision"]);

export class TraceModel {
  constructor() {
    this.reset();
  }

  reset() {
    this.byId = new Map();
    this.dirty = true;
    this.spans = [];
    this.calls = [];
    this.decisions = [];
    this.children = new Map();
    this.roots = [];
    this.bySeq = new Map();
    this.t0 = null;
    this.t1 = null;
  }

  // A span event (open or closed state); other event types are ignored here.
  upsert(event) {
    if (!SPAN_TYPES.has(event.type)) return false;
    event._start = parseTs(event.ts);
    event._end = event.end_ts ? parseTs(event.end_ts) : null;
    this.byId.set(event.span_id, event);
    this.dirty = true;
    return true;
  }

  load(events) {
    this.reset();
    for (const event of events) this.upsert(event);
    this.build();
  }

  build() {
    if (!this.dirty) return;
    this.dirty = false;
    this.spans = [...this.byId.values()].sort((a, b) => a.seq - b.seq);
    this.children = new Map();
    this.roots = [];
    this.bySeq = new Map();
    this.calls = [];
    this.decisions = [];
    let t0 = Infinity;
    let t1 = -Infinity;
    for (const span of this.spans) {
      this.bySeq.set(span.seq, span);
      const parent = span.parent_span_id && this.byId.has(span.parent_span_id) ? span.parent_span_id : null;
      if (parent) {
        if (!this.children.has(parent)) this.children.set(parent, []);
        this.children.get(parent).push(span);
      } else {
        this.roots.push(span);
      }
      if (span.type === "model_call") this.calls.push(span);
      else if (span.type === "decision") this.decisions.push(span);
      t0 = Math.min(t0, span._start);
      t1 = Math.max(t1, span._end ?? span._start);
    }
    this.t0 = Number.isFinite(t0) ? t0 : null;
    this.t1 = Number.isFinite(t1) ? Math.max(t1, t0 + 1) : null;
    this.buildReplay();
  }

  // Prefix arrays for the step-through player: after step k (1-based, seq order), the
  // time reached and what has been spent.
  buildReplay() {
    const n = this.spans.length;
    this.asOf = new Float64Array(n + 1);
    this.spent = { tokens: new Float64Array(n + 1), completion: new Float64Array(n + 1),
      prompt: new Float64Array(n + 1), reasoning: new Float64Array(n + 1),
      cost: new Float64Array(n + 1), calls: new Uint32Array(n + 1), hits: new Uint32Array(n + 1) };
    let reached = this.t0 ?? 0;
    this.asOf[0] = reached;
    for (let i = 0; i < n; i++) {
      const span = this.spans[i];
      // A model call's event is written when the call ends: stepping onto it means it has
      // answered. A container's step is its opening.
      const at = span.type === "model_call" ? (span._end ?? span._start) : span._start;
      reached = Math.max(reached, at);
      this.asOf[i + 1] = reached;
      const isCall = span.type === "model_call";
      this.spent.completion[i + 1] = this.spent.completion[i] + (isCall ? span.completion_tokens : 0);
      this.spent.tokens[i + 1] = this.spent.tokens[i] + (isCall ? span.prompt_tokens + span.completion_tokens : 0);
      this.spent.cost[i + 1] = this.spent.cost[i] + (isCall ? span.cost : 0);
      this.spent.calls[i + 1] = this.spent.calls[i] + (isCall ? 1 : 0);
      this.spent.prompt[i + 1] = this.spent.prompt[i] + (isCall ? span.prompt_tokens : 0);
      this.spent.reasoning[i + 1] = this.spent.reasoning[i] + (isCall ? span.reasoning_tokens || 0 : 0);
      this.spent.hits[i + 1] = this.spent.hits[i] + (isCall && span.journal === "hit" ? 1 : 0);
    }
  }

  // The visible rows: depth-first in seq order, skipping collapsed subtrees, spans after
  // `maxSeq` (replay) and, with a filter, everything that neither matches nor leads to
  // a match.
  flatten({ collapsed = new Set(), maxSeq = Infinity, filter = "" } = {}) {
    this.build();
    const keep = filter ? this.matching(filter) : null;
    const rows = [];
    const stack = [];
    for (let i = this.roots.length - 1; i >= 0; i--) stack.push([this.roots[i], 0]);
    while (stack.length) {
      const [span, depth] = stack.pop();
      if (span.seq > maxSeq || (keep && !keep.has(span.span_id))) continue;
      const kids = this.children.get(span.span_id) || [];
      rows.push({ span, depth, kids: kids.length });
      if (kids.length && !collapsed.has(span.span_id)) {
        for (let i = kids.length - 1; i >= 0; i--) stack.push([kids[i], depth + 1]);
      }
    }
    return rows;
  }

  matching(filter) {
    const needle = filter.toLowerCase();
    const keep = new Set();
    for (const span of this.spans) {
      if (span._text === undefined) {
        const attrs = span.attributes ? JSON.stringify(span.attributes) : "";
        span._text = `${span.type} ${span.name} ${span.role || ""} ${span.model || ""} ${span.span_id} ${attrs}`.toLowerCase();
      }
      if (!span._text.includes(needle)) continue;
      for (let s = span; s && !keep.has(s.span_id); s = this.byId.get(s.parent_span_id)) keep.add(s.span_id);
    }
    return keep;
  }

  // Index of a span in seq order (the player's step that reveals it), 1-based.
  stepOf(spanId) {
    const span = this.byId.get(spanId);
    if (!span) return 0;
    let lo = 0;
    let hi = this.spans.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (this.spans[mid].seq === span.seq) return mid + 1;
      if (this.spans[mid].seq < span.seq) lo = mid + 1;
      else hi = mid - 1;
    }
    return 0;
  }

  // Cumulative spend over time from the model calls, in the order they ended.
  spendSeries() {
    this.build();
    const ended = this.calls.filter((c) => c._end !== null).sort((a, b) => a._end - b._end);
    const points = [];
    let completion = 0;
    let cost = 0;
    for (const call of ended) {
      completion += call.completion_tokens;
      cost += call.cost;
      points.push({ t: call._end, completion, cost, calls: points.length + 1 });
    }
    return points;
  }
}
