// Canvas charts: the model calls on a time axis packed into lanes (one lane per call in
// flight at once, so parallel fan-out is visible as stacked bars), and spend over time
// with the budget as a marker. Canvas, not DOM: 5,000 calls draw in a few milliseconds.

import { fmtInt, fmtMs, h, roleColor } from "./dom.js";

const AXIS_H = 18;
const DECISION_H = 8;
const MAX_LANES = 24;

function setupCanvas(canvas, cssHeight) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth || canvas.parentElement.clientWidth || 600;
  canvas.style.height = `${cssHeight}px`;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(cssHeight * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  return { ctx, width, height: cssHeight };
}

function niceStep(span, target) {
  const raw = span / target;
  const pow = 10 ** Math.floor(Math.log10(raw));
  for (const m of [1, 2, 5, 10]) if (m * pow >= raw) return m * pow;
  return 10 * pow;
}

function drawAxis(ctx, width, y, t0, t1) {
  ctx.fillStyle = "#868e96";
  ctx.font = "10px system-ui, sans-serif";
  ctx.textBaseline = "top";
  const span = t1 - t0;
  const step = niceStep(span, Math.max(2, Math.floor(width / 90)));
  for (let t = 0; t <= span + 1e-9; t += step) {
    const x = (t / span) * (width - 1);
    ctx.fillRect(x, y, 1, 4);
    const label = fmtMs(t);
    const w = ctx.measureText(label).width;
    ctx.fillText(label, Math.min(Math.max(0, x - w / 2), width - w), y + 5);
  }
}

export class CallTimeline {
  constructor(canvas, tooltip, { onPick }) {
    this.canvas = canvas;
    this.tooltip = tooltip;
    this.onPick = onPick;
    this.calls = [];
    this.decisions = [];
    this.lanes = [];
    this.cursor = null;
    this.selected = null;
    canvas.addEventListener("mousemove", (e) => this.hover(e));
    canvas.addEventListener("mouseleave", () => { this.tooltip.hidden = true; });
    canvas.addEventListener("click", (e) => {
      const hit = this.hitTest(e);
      if (hit) this.onPick(hit.span_id);
    });
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(canvas);
  }

  // Greedy interval packing in start order: a call goes to the first lane free at its
  // start, so the number of lanes is the peak number of calls in flight.
  set(calls, decisions, t0, t1) {
    this.t0 = t0;
    this.t1 = t1;
    this.decisions = decisions;
    const sorted = [...calls].sort((a, b) => a._start - b._start || a.seq - b.seq);
    const ends = [];
    this.lanes = [];
    for (const call of sorted) {
      const end = call._end ?? t1;
      let lane = ends.findIndex((e) => e <= call._start);
      if (lane === -1) {
        lane = ends.length;
        ends.push(end);
        this.lanes.push([]);
      } else {
        ends[lane] = end;
      }
      this.lanes[lane].push(call);
    }
    this.peak = this.lanes.length;
    this.draw();
  }

  geometry() {
    const shown = Math.min(this.lanes.length, MAX_LANES);
    const laneH = shown > 12 ? 6 : shown > 6 ? 10 : 14;
    return { shown, laneH, top: DECISION_H + 4 };
  }

  draw() {
    if (this.t0 === null || this.t0 === undefined) return;
    const { shown, laneH, top } = this.geometry();
    const height = top + Math.max(1, shown) * (laneH + 2) + AXIS_H;
    const { ctx, width } = setupCanvas(this.canvas, height);
    this.width = width;
    const span = this.t1 - this.t0;
    const x = (t) => ((t - this.t0) / span) * (width - 1);
    ctx.clearRect(0, 0, width, height);
    for (const d of this.decisions) {
      if (this.cursor !== null && d._start > this.cursor) continue;
      ctx.fillStyle = "#f59f00";
      ctx.fillRect(x(d._start) - 1, 1, 2, DECISION_H);
    }
    for (let lane = 0; lane < this.lanes.length; lane++) {
      const row = Math.min(lane, MAX_LANES - 1);
      const y = top + row * (laneH + 2);
      for (const call of this.lanes[lane]) {
        if (this.cursor !== null && call._start > this.cursor) continue;
        const end = call._end === null ? this.t1 : call._end;
        const shownEnd = this.cursor === null ? end : Math.min(end, this.cursor);
        const x0 = x(call._start);
        const w = Math.max(1.5, x(shownEnd) - x0);
        ctx.globalAlpha = call.journal === "hit" ? 0.45 : 1;
        ctx.fillStyle = call.error ? "#e03131" : roleColor(call.role);
        ctx.fillRect(x0, y, w, laneH);
        if (call.span_id === this.selected) {
          ctx.globalAlpha = 1;
          ctx.strokeStyle = "#212529";
          ctx.lineWidth = 1.5;
          ctx.strokeRect(x0 - 1, y - 1, w + 2, laneH + 2);
        }
      }
    }
    ctx.globalAlpha = 1;
    if (this.cursor !== null) {
      ctx.fillStyle = "#e03131";
      ctx.fillRect(x(this.cursor), 0, 1.5, height - AXIS_H);
    }
    drawAxis(ctx, width, height - AXIS_H + 2, this.t0, this.t1);
  }

  hitTest(event) {
    if (!this.lanes.length) return null;
    const rect = this.canvas.getBoundingClientRect();
    const px = event.clientX - rect.left;
    const py = event.clientY - rect.top;
    const { shown, laneH, top } = this.geometry();
    const row = Math.floor((py - top) / (laneH + 2));
    if (row < 0 || row >= shown) return null;
    const t = this.t0 + (px / (this.width - 1)) * (this.t1 - this.t0);
    const slack = (3 / this.width) * (this.t1 - this.t0); // 3 px either side
    const lanes = row === MAX_LANES - 1 ? this.lanes.slice(row) : [this.lanes[row]];
    for (const lane of lanes) {
      for (const call of lane) {
        const end = call._end ?? this.t1;
        if (t >= call._start - slack && t <= end + slack) return call;
      }
    }
    return null;
  }

  hover(event) {
    const call = this.hitTest(event);
    if (!call) {
      this.tooltip.hidden = true;
      this.canvas.style.cursor = "default";
      return;
    }
    this.canvas.style.cursor = "pointer";
    this.tooltip.textContent = `#${call.seq} ${call.name} · ${call.model || ""} · ` +
      `${fmtInt(call.prompt_tokens)}→${fmtInt(call.completion_tokens)} tok · ` +
      `${fmtMs(call.duration_ms)} · ${call.journal === "hit" ? "journal hit" : "live"}`;
    this.tooltip.hidden = false;
    const rect = this.canvas.getBoundingClientRect();
    this.tooltip.style.left = `${Math.min(event.clientX - rect.left + 12, rect.width - 260)}px`;
    this.tooltip.style.top = `${event.clientY - rect.top + 12}px`;
  }

  destroy() {
    this.resize.disconnect();
  }
}

export class BudgetChart {
  constructor(canvas) {
    this.canvas = canvas;
    this.points = [];
    this.cursor = null;
    this.resize = new ResizeObserver(() => this.draw());
    this.resize.observe(canvas);
  }

  // points: [{t, completion}] cumulative; limit: the budget's max_tokens (or null).
  set(points, limit, t0, t1) {
    Object.assign(this, { points, limit, t0, t1 });
    this.draw();
  }

  // Scaled to what the job used, not to the budget: a job that spent 40 of 4,000
  // tokens draws a readable curve, not a flat line at the bottom. The budget is a dashed
  // marker: at its height when it is near the usage, else pinned to the plot's top edge
  // (above the scale). A strip above the plot names both, so no text covers the curve.
  // The scale is on the canvas's data-* for tests and tools.
  draw() {
    if (this.t0 === null || this.t0 === undefined) return;
    const { ctx, width, height } = setupCanvas(this.canvas, 96);
    const strip = 14;
    const plotH = height - AXIS_H - 4 - strip;
    ctx.clearRect(0, 0, width, height);
    const total = this.points.length ? this.points[this.points.length - 1].completion : 0;
    const used = Math.max(1, total);
    const limitNear = Boolean(this.limit) && this.limit <= used * 1.5;
    const top = limitNear ? Math.max(used, this.limit) * 1.08 : used * 1.12;
    const x = (t) => ((t - this.t0) / (this.t1 - this.t0)) * (width - 1);
    const y = (v) => strip + 4 + plotH - (Math.min(v, top) / top) * plotH;
    Object.assign(this.canvas.dataset, {
      scaleMax: String(Math.round(top)), used: String(total),
      budget: this.limit ? String(this.limit) : "", budgetMarker: !this.limit ? "none" : limitNear ? "line" : "above",
    });
    ctx.font = "10px system-ui, sans-serif";
    // The strip: tokens so far on the left, the budget on the right (its share used
    // dropped when the card is too narrow for both).
    let reached = 0;
    for (const p of this.points) if (this.cursor === null || p.t <= this.cursor) reached = p.completion;
    const generated = this.cursor !== null && reached !== total ? `${fmtInt(reached)} of ${fmtInt(total)} tokens` : `${fmtInt(total)} tokens`;
    ctx.textBaseline = "top";
    ctx.fillStyle = "#1c7ed6";
    ctx.fillText(generated, 4, 1);
    if (this.limit) {
      const at = limitNear ? y(this.limit) : strip + 3;
      ctx.strokeStyle = "#e03131";
      ctx.setLineDash([4, 3]);
      ctx.beginPath();
      ctx.moveTo(0, at);
      ctx.lineTo(width, at);
      ctx.stroke();
      ctx.setLineDash([]);
      ctx.fillStyle = "#e03131";
      const share = (100 * total) / this.limit;
      let label = `${limitNear ? "" : "↑ "}max_tokens ${fmtInt(this.limit)} (${share < 1 ? share.toFixed(1) : Math.round(share)}% used)`;
      if (ctx.measureText(generated).width + ctx.measureText(label).width + 16 > width) label = `${limitNear ? "" : "↑ "}max ${fmtInt(this.limit)}`;
      ctx.fillText(label, width - ctx.measureText(label).width - 4, 1);
    }
    ctx.strokeStyle = "#1c7ed6";
    ctx.fillStyle = "rgba(28,126,214,0.12)";
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    ctx.moveTo(0, y(0));
    let last = 0;
    for (const p of this.points) {
      if (this.cursor !== null && p.t > this.cursor) break;
      ctx.lineTo(x(p.t), y(last));
      ctx.lineTo(x(p.t), y(p.completion));
      last = p.completion;
    }
    const endX = this.cursor !== null ? x(this.cursor) : width;
    ctx.lineTo(endX, y(last));
    ctx.stroke();
    ctx.lineTo(endX, y(0));
    ctx.closePath();
    ctx.fill();
    if (this.cursor !== null) {
      ctx.fillStyle = "#e03131";
      ctx.fillRect(x(this.cursor), strip, 1.5, plotH + 4);
    }
    drawAxis(ctx, width, height - AXIS_H + 2, this.t0, this.t1);
  }

  destroy() {
    this.resize.disconnect();
  }
}

export function legend(roles) {
  return h("span", { class: "legend" }, roles.map((role) => {
    const swatch = h("i");
    swatch.style.background = roleColor(role);
    return h("span", {}, swatch, role);
  }), h("span", { class: "muted" }, "faded = journal hit · ", h("i", { class: "tick" }), " decision"));
}
