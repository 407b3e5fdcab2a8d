// Experiments (GET /v1/experiments): eval runs stored by `ponder eval`.
//   #/experiments                      the list, newest first
//   #/experiments/<id>[?axis=tokens]   one experiment: the arms' table, the Pareto chart
//                                      (accuracy with its 95% interval against tokens,
//                                      latency or cost) and the problems × arms grid.
// A grid cell opens its job; shift-click (or "Pick two to diff") picks two cells and
// opens them in the diff view.

import { api, enc, root } from "./api.js";
import { clear, errorBox, fmtCost, fmtInt, fmtTime, h, shortId } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const AXES = {
  tokens: { label: "mean completion tokens per problem", value: (s) => s.mean_tokens, fmt: (v) => fmtInt(v) },
  latency: { label: "p50 latency per problem (s)", value: (s) => s.latency_p50, fmt: (v) => `${v.toFixed(v < 10 ? 2 : 1)} s` },
  cost: { label: "mean cost per problem", value: (s) => s.mean_cost, fmt: (v) => fmtCost(v) },
};

// The view's own stylesheet, linked once (the page's policy allows 'self' styles only).
function ensureStyles() {
  if (document.getElementById("experiments-css")) return;
  document.head.append(h("link", { id: "experiments-css", rel: "stylesheet", href: `${root}/dashboard/static/experiments.css` }));
}

const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`);

export function experimentsView(main, params, shell) {
  ensureStyles();
  let disposed = false;
  let cursor = null;
  const tbody = h("tbody");
  const more = h("button", { type: "button", class: "ghost", text: "Load older", hidden: true });
  const error = h("div");
  clear(main).append(h("section", { class: "view experiments-view" },
    h("div", { class: "view-head" }, h("h1", { text: "Experiments" }),
      h("span", { class: "muted small", text: "stored by `ponder eval` (docs/eval.md)" })),
    error,
    h("div", { class: "card table-card" }, h("table", { class: "jobs experiments" },
      h("thead", {}, h("tr", {}, ["created", "name", "dataset", "problems", "arms", "best accuracy", "from"]
        .map((t) => h("th", { text: t, class: ["problems", "best accuracy"].includes(t) ? "num" : null })))),
      tbody)),
    h("div", { class: "pager" }, more)));

  function row(e) {
    const open = `#/experiments/${e.id}`;
    const best = e.arms.reduce((b, a) => (a.summary && a.summary.accuracy !== null && (b === null || a.summary.accuracy > b.summary.accuracy) ? a : b), null);
    return h("tr", { class: "experiment-row", dataset: { id: e.id } },
      h("td", { class: "nowrap" }, h("a", { href: open, text: fmtTime(e.created_at), title: e.id })),
      h("td", {}, h("a", { href: open, text: e.name })),
      h("td", { text: e.dataset.name || "–", title: e.dataset.sha256 ? `sha256 ${e.dataset.sha256}` : null }),
      h("td", { class: "num", text: fmtInt(e.problems) }),
      h("td", { class: "arms-cell", text: e.arms.map((a) => a.label).join(" · "), title: e.arms.map((a) => a.label).join("\n") }),
      h("td", { class: "num", text: best ? `${pct(best.summary.accuracy)} ${best.label.split(" ")[0]}` : "–" }),
      h("td", {}, e.parent_experiment_id ? h("a", { href: `#/experiments/${e.parent_experiment_id}`, text: `replay of ${shortId(e.parent_experiment_id)}` }) : ""));
  }

  async function load(append) {
    try {
      const page = await api(`/v1/experiments${append && cursor ? `?cursor=${enc(cursor)}` : ""}`);
      if (disposed) return;
      if (!append) clear(tbody);
      for (const e of page.items) tbody.append(row(e));
      if (!tbody.children.length) tbody.append(h("tr", {}, h("td", { colspan: 7, class: "muted empty", text: "No experiments yet — run `ponder eval`." })));
      cursor = page.next_cursor;
      more.hidden = !cursor;
      shell.ready("experiments");
    } catch (err) {
      clear(error).append(errorBox(err));
    }
  }
  more.addEventListener("click", () => load(true));
  load(false);
  return () => { disposed = true; };
}

export function experimentView(main, id, params, shell) {
  ensureStyles();
  let disposed = false;
  clear(main).append(h("p", { class: "loading", text: "Loading experiment…" }));
  (async () => {
    let experiment, grid;
    try {
      [experiment, grid] = await Promise.all([api(`/v1/experiments/${enc(id)}`), api(`/v1/experiments/${enc(id)}/rows`)]);
    } catch (err) {
      clear(main).append(errorBox(err));
      return;
    }
    if (disposed) return;
    render(main, experiment, grid, params.get("axis") in AXES ? params.get("axis") : "tokens");
    shell.ready("experiment");
  })();
  return () => { disposed = true; };
}

function render(main, e, grid, axis) {
  const chart = h("div", { class: "pareto-wrap" });
  const axisSel = h("select", { name: "axis", "aria-label": "Pareto x axis" },
    Object.entries(AXES).map(([k, a]) => h("option", { value: k, text: `accuracy vs ${k}`, title: a.label, selected: k === axis })));
  const draw = () => clear(chart).append(pareto(e.arms, axisSel.value));
  axisSel.addEventListener("change", () => {
    history.replaceState(null, "", `#/experiments/${e.id}?axis=${axisSel.value}`);
    draw();
  });
  const what = e.params ? Object.entries(e.params.by_arm || {}).map(([arm, c]) => `${arm}: ${Object.entries(c).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")}`).join(" · ") : "";
  clear(main).append(h("section", { class: "view experiment-view" },
    h("div", { class: "view-head" }, h("h1", { text: e.name }),
      e.interrupted ? h("span", { class: "badge warn", text: "interrupted" }) : null),
    h("p", { class: "meta muted" },
      `${e.dataset.name || "dataset ?"} · ${fmtInt(e.problems)} problems × ${e.arms.length} arms · ${fmtTime(e.created_at)} · `,
      `model calls: ${fmtInt(e.calls.live)} live, ${fmtInt(e.calls.replayed)} from journals`,
      e.parent_experiment_id ? [" · replay of ", h("a", { href: `#/experiments/${e.parent_experiment_id}`, text: shortId(e.parent_experiment_id) })] : null,
      what ? ` · what-if (${e.params.mode || "live"}): ${what}` : null),
    h("div", { class: "card" }, summaryTable(e.arms)),
    h("div", { class: "card" }, h("div", { class: "card-head" }, h("h3", { text: "Pareto" }), axisSel,
      h("span", { class: "muted small", text: "whiskers: 95% Wilson interval · red: the frontier (no arm is as accurate for less)" })), chart),
    problemGrid(e, grid)));
  draw();
}

function summaryTable(arms) {
  const head = ["arm", "n", "accuracy", "95% CI", "mean tokens", "p50 s", "p90 s", "mean cost", "failed"];
  return h("table", { class: "jobs arm-summary" },
    h("thead", {}, h("tr", {}, head.map((t) => h("th", { text: t, class: t === "arm" ? null : "num" })))),
    h("tbody", {}, arms.map((a) => {
      const s = a.summary || {};
      return h("tr", { dataset: { arm: a.position } },
        h("td", { class: "arm-label", text: a.label }),
        h("td", { class: "num", text: fmtInt(s.n) }),
        h("td", { class: "num", text: pct(s.accuracy) }),
        h("td", { class: "num", text: s.ci_low === null || s.ci_low === undefined ? "–" : `${pct(s.ci_low)} – ${pct(s.ci_high)}` }),
        h("td", { class: "num", text: s.mean_tokens === null ? "–" : (s.mean_tokens ?? 0).toFixed(1) }),
        h("td", { class: "num", text: s.latency_p50 === null || s.latency_p50 === undefined ? "–" : s.latency_p50.toFixed(2) }),
        h("td", { class: "num", text: s.latency_p90 === null || s.latency_p90 === undefined ? "–" : s.latency_p90.toFixed(2) }),
        h("td", { class: "num", text: s.cost_known === false ? "n/a" : fmtCost(s.mean_cost) }),
        h("td", { class: "num", text: fmtInt(s.failed) }));
    })));
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, String(v));
  for (const c of children.flat()) if (c) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

// Points no other arm beats: at most the spend and at least the accuracy, better on one.
export function frontier(points) {
  return points.filter((p) => !points.some((o) => o !== p && o.x <= p.x && o.y >= p.y && (o.x < p.x || o.y > p.y)))
    .sort((a, b) => a.x - b.x || b.y - a.y);
}

// Labels placed beside their points, then pushed apart vertically so none overlap.
function placeLabels(points, minGap, top, bottom) {
  const sorted = [...points].sort((a, b) => a.py - b.py);
  let last = -Infinity;
  for (const p of sorted) {
    p.ly = Math.max(p.py, last + minGap);
    last = p.ly;
  }
  const overflow = last - bottom;
  if (overflow > 0) {
    let next = Infinity;
    for (const p of sorted.reverse()) {
      p.ly = Math.min(p.ly - overflow, next - minGap);
      next = p.ly;
    }
  }
  for (const p of points) p.ly = Math.max(top, p.ly);
}

function pareto(arms, axisName) {
  const axis = AXES[axisName];
  const W = 760, H = 340, L = 56, R = 230, T = 14, B = 42;
  const pw = W - L - R, ph = H - T - B;
  const points = arms.filter((a) => a.summary && a.summary.accuracy !== null && axis.value(a.summary) !== null && axis.value(a.summary) !== undefined)
    .map((a) => ({ arm: a, x: axis.value(a.summary), y: a.summary.accuracy, lo: a.summary.ci_low ?? a.summary.accuracy, hi: a.summary.ci_high ?? a.summary.accuracy }));
  if (!points.length) return h("p", { class: "muted", text: "No arm has numbers on this axis yet." });
  const xmax = Math.max(...points.map((p) => p.x));
  const span = xmax > 0 ? xmax * 1.08 : 1;
  const X = (v) => L + (v / span) * pw;
  const Y = (v) => T + (1 - v) * ph;
  const ticks = [];
  for (let i = 0; i <= 5; i++) ticks.push(svg("g", { class: "tick" },
    svg("line", { x1: L, x2: L + pw, y1: Y(i / 5), y2: Y(i / 5) }),
    svg("text", { x: L - 6, y: Y(i / 5) + 3, "text-anchor": "end" }, `${i * 20}%`)));
  for (let i = 0; i <= 4; i++) ticks.push(svg("text", { class: "xtick", x: X((span * i) / 4), y: T + ph + 14, "text-anchor": "middle" }, axis.fmt((span * i) / 4)));
  const front = frontier(points);
  const onFront = new Set(front);
  for (const p of points) { p.px = X(p.x); p.py = Y(p.y); p.text = p.arm.label.length > 34 ? `${p.arm.label.slice(0, 33)}…` : p.arm.label; }
  placeLabels(points, 15, T + 4, T + ph);
  // Beside its point only when the label's run is clear of every other point (~6.5 px a
  // character at 11 px); else in the right margin with a leader line. Labels are drawn
  // after every point and whisker, with a halo, so no marker hides a letter.
  for (const p of points) {
    const run = p.px + 9 + 6.5 * p.text.length;
    const blocked = points.some((o) => o !== p && o.px >= p.px - 6 && o.px - 6 <= run && Math.abs(o.py - p.ly) < 12);
    p.aside = Math.abs(p.ly - p.py) > 8 || blocked;
  }
  const step = front.length > 1
    ? svg("path", { class: "frontier", d: front.map((p, i) => (i ? `H${X(p.x)}V${Y(p.y)}` : `M${X(p.x)},${Y(p.y)}`)).join("") })
    : null;
  return svg("svg", { class: "pareto", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `accuracy against ${axis.label}`, "data-axis": axisName },
    ticks,
    svg("line", { class: "axis", x1: L, x2: L + pw, y1: T + ph, y2: T + ph }),
    svg("line", { class: "axis", x1: L, x2: L, y1: T, y2: T + ph }),
    svg("text", { class: "axis-label", x: L + pw / 2, y: H - 6, "text-anchor": "middle" }, axis.label),
    svg("text", { class: "axis-label", x: 12, y: T + ph / 2, "text-anchor": "middle", transform: `rotate(-90 12 ${T + ph / 2})` }, "accuracy"),
    xmax === 0 ? svg("text", { class: "axis-label", x: L + 8, y: T + 12 }, `every arm's ${axisName} is 0`) : null,
    step,
    points.map((p) => svg("g", { class: `point${onFront.has(p) ? " front" : ""}`, "data-arm": p.arm.position },
      svg("title", {}, `${p.arm.label}\naccuracy ${pct(p.y)} (95% CI ${pct(p.lo)} – ${pct(p.hi)})\n${axis.label}: ${axis.fmt(p.x)}`),
      svg("line", { class: "whisker", x1: p.px, x2: p.px, y1: Y(p.hi), y2: Y(p.lo) }),
      svg("line", { class: "whisker", x1: p.px - 4, x2: p.px + 4, y1: Y(p.hi), y2: Y(p.hi) }),
      svg("line", { class: "whisker", x1: p.px - 4, x2: p.px + 4, y1: Y(p.lo), y2: Y(p.lo) }),
      svg("circle", { cx: p.px, cy: p.py, r: 5 }),
      // A label moved off its point goes to the right margin, with a leader line.
      p.aside ? svg("line", { class: "leader", x1: p.px + 6, y1: p.py, x2: L + pw + 6, y2: p.ly - 4 }) : null)),
    svg("g", { class: "labels" }, points.map((p) => svg("text", { class: "point-label", "data-arm": p.arm.position, x: p.aside ? L + pw + 8 : p.px + 9, y: p.ly + 3 }, p.text))));
}

function problemGrid(e, grid) {
  const picked = [];
  let picking = false;
  const status = h("span", { class: "muted small", text: "click a cell to open its job; shift-click two cells to diff them" });
  const pickButton = h("button", { type: "button", class: "secondary pick-toggle", text: "Pick two to diff" });
  const byCell = new Map(grid.rows.map((r) => [`${r.arm}:${r.problem_index}`, r]));
  const table = h("table", { class: "exp-grid" });

  function pick(cell, row) {
    const at = picked.findIndex((p) => p.row === row);
    if (at >= 0) {
      picked.splice(at, 1)[0].cell.classList.remove("picked");
    } else {
      picked.push({ cell, row });
      cell.classList.add("picked");
    }
    status.textContent = picked.length === 1 ? `picked ${e.arms[row.arm].label} on ${row.problem_id}; pick one more` : "click a cell to open its job; shift-click two cells to diff them";
    if (picked.length === 2) location.hash = `#/diff/${picked[0].row.job_id}/${picked[1].row.job_id}`;
  }

  pickButton.addEventListener("click", () => {
    picking = !picking;
    pickButton.classList.toggle("active", picking);
    pickButton.textContent = picking ? "Picking: click two cells" : "Pick two to diff";
  });

  const head = h("tr", {}, h("th", { text: "problem" }), e.arms.map((a) => h("th", { class: "arm-head", title: a.label, text: a.label })));
  const body = h("tbody", {}, grid.problems.map((p) => h("tr", {},
    h("th", { class: "problem", text: p.id, title: `problem ${p.index}` }),
    e.arms.map((a) => {
      const row = byCell.get(`${a.position}:${p.index}`);
      if (!row) return h("td", { class: "cell missing", text: "·", title: "not run" });
      const mark = row.status !== "succeeded" ? "!" : row.correct ? "✓" : "✗";
      const kind = row.status !== "succeeded" ? "failed" : row.correct ? "ok" : "wrong";
      const tip = `${a.label} · ${p.id}\nanswer ${row.answer ?? "∅"} · expected ${row.expected}\n${fmtInt(row.completion_tokens)} tok · ${row.latency_s.toFixed(2)} s · ${fmtCost(row.cost)}` +
        (row.error ? `\n${row.error.message || row.error.code}` : "");
      if (!row.job_id) return h("td", { class: `cell ${kind}`, text: mark, title: tip });
      const cell = h("a", { class: `cell ${kind}`, href: `#/jobs/${row.job_id}`, text: mark, title: tip,
        dataset: { arm: a.position, problem: p.index, job: row.job_id } });
      cell.addEventListener("click", (event) => {
        if (!(picking || event.shiftKey)) return; // a plain click follows the link
        event.preventDefault();
        pick(cell, row);
      });
      return h("td", {}, cell);
    }))));
  const foot = h("tr", {}, h("th", { text: "correct" }), e.arms.map((a) => h("td", { class: "num", text: a.summary ? `${a.summary.correct}/${a.summary.n}` : "–" })));
  table.append(h("thead", {}, head), body, h("tfoot", {}, foot));
  return h("div", { class: "card" },
    h("div", { class: "card-head" }, h("h3", { text: "Problems × arms" }), pickButton, status),
    h("div", { class: "grid-scroll" }, table));
}
