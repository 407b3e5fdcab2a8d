// The tenant's jobs: search and filters (status, strategy, time, model, date, cost and
// latency ranges, tenant for admin keys) kept in the URL and run by the server over every
// job (GET /v1/jobs), cursor paging, live refresh while any job shown is queued or
// running, a submit form, and picking two jobs to diff.

import { api, enc } from "./api.js";
import {
  clear, errorBox, fmtCost, fmtInt, fmtMs, fmtTime, h, isFinal, jobLatencyMs, jobTokens,
  shortId, statusBadge,
} from "./dom.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const SINCE = [["", "any time"], ["15m", "last 15 min"], ["1h", "last hour"], ["24h", "last 24 h"], ["7d", "last 7 days"]];
const SINCE_MS = { "15m": 9e5, "1h": 3.6e6, "24h": 8.64e7, "7d": 6.048e8 };
const POLL_ACTIVE_MS = 1000;
const POLL_IDLE_MS = 2500;
const JOB_ID = /^[0-9a-f]{32}$/;

// Filters sent to GET /v1/jobs besides status, strategy and `since`: [state key, query
// parameter, label, input attributes]. They apply to every job in the database.
const MORE = [
  ["model", "model", "Model", { type: "text", placeholder: "e.g. sim-large", spellcheck: "false" }],
  ["from", "created_after", "Created after", { type: "datetime-local" }],
  ["to", "created_before", "Created before", { type: "datetime-local" }],
  ["minCost", "min_cost", "Min cost ($)", { type: "number", min: 0, step: "any" }],
  ["maxCost", "max_cost", "Max cost ($)", { type: "number", min: 0, step: "any" }],
  ["minMs", "min_latency_ms", "Min latency (ms)", { type: "number", min: 0, step: "any" }],
  ["maxMs", "max_latency_ms", "Max latency (ms)", { type: "number", min: 0, step: "any" }],
  ["tenant", "tenant", "Tenant (admin keys; * = all)", { type: "text", spellcheck: "false" }],
];
const SEARCH_DELAY_MS = 250;

export function jobsView(main, params, shell) {
  const state = {
    status: params.get("status") || "", strategy: params.get("strategy") || "", since: params.get("since") || "",
    q: params.get("q") || "", jobs: [], cursor: null, selected: new Set(), timer: 0, disposed: false,
    generation: 0, searchTimer: 0, searching: false,
  };
  for (const [key] of MORE) state[key] = params.get(key) || "";
  const statusSel = h("select", { "aria-label": "Status", name: "status" }, h("option", { value: "", text: "all statuses" }),
    STATUSES.map((s) => h("option", { value: s, text: s, selected: s === state.status })));
  const strategySel = h("select", { "aria-label": "Strategy", name: "strategy" }, h("option", { value: "", text: "all strategies" }));
  const sinceSel = h("select", { "aria-label": "Created", name: "since" }, SINCE.map(([v, t]) => h("option", { value: v, text: t, selected: v === state.since })));
  const search = h("input", { type: "search", name: "q", value: state.q, placeholder: "Search all jobs: question, answer or id (Enter opens an id)", "aria-label": "Search" });
  const inputs = Object.fromEntries(MORE.map(([key, param, , attrs]) => [key, h("input", { name: param, value: state[key], ...attrs })]));
  const moreBox = h("details", { class: "more-filters", open: MORE.some(([key]) => state[key]) },
    h("summary", { text: "More filters" }),
    h("div", { class: "more-grid" }, MORE.map(([key, , label]) => h("label", {}, label, inputs[key])),
      h("button", { type: "button", class: "ghost clear-filters", text: "Clear filters", onclick: () => clearMore() })));
  const diffButton = h("button", { type: "button", class: "secondary", disabled: true, text: "Diff selected (pick 2)" });
  const tbody = h("tbody");
  const more = h("button", { type: "button", class: "ghost", text: "Load older", hidden: true });
  const status = h("p", { class: "muted small list-status" });
  const error = h("div");
  const form = submitForm();

  const section = h("section", { class: "view jobs-view" },
    h("div", { class: "view-head" }, h("h1", { text: "Jobs" }), form.toggle),
    form.el,
    h("div", { class: "filters" }, statusSel, strategySel, sinceSel, search, diffButton),
    moreBox,
    error,
    h("div", { class: "card table-card" }, h("table", { class: "jobs" },
      h("thead", {}, h("tr", {}, ["", "created", "status", "strategy", "question", "answer", "tokens", "cost", "latency", "from"]
        .map((t) => h("th", { text: t, class: ["tokens", "cost", "latency"].includes(t) ? "num" : null })))),
      tbody)),
    h("div", { class: "pager" }, more, status));
  clear(main).append(section);

  // A datetime-local value is the browser's local time; the API takes ISO 8601.
  const iso = (local) => {
    const d = new Date(local);
    return Number.isNaN(d.getTime()) ? local : d.toISOString();
  };

  function query(cursor) {
    const q = new URLSearchParams();
    if (state.status) q.set("status", state.status);
    if (state.strategy) q.set("strategy", state.strategy);
    if (state.q) q.set("q", state.q);
    let after = state.from ? iso(state.from) : "";
    if (state.since) {
      const since = new Date(Date.now() - SINCE_MS[state.since]).toISOString();
      if (!after || since > after) after = since;
    }
    if (after) q.set("created_after", after);
    for (const [key, param] of MORE) {
      if (!state[key] || key === "from") continue;
      q.set(param, key === "to" ? iso(state[key]) : state[key]);
    }
    if (cursor) q.set("cursor", cursor);
    return `/v1/jobs?${q}`;
  }

  function filtered() {
    return Boolean(state.status || state.strategy || state.since || state.q || MORE.some(([key]) => state[key]));
  }

  function syncUrl() {
    const q = new URLSearchParams();
    for (const k of ["status", "strategy", "since", "q", ...MORE.map(([key]) => key)]) if (state[k]) q.set(k, state[k]);
    const s = q.toString();
    history.replaceState(null, "", `#/jobs${s ? `?${s}` : ""}`);
  }

  function showError(err) {
    for (const input of section.querySelectorAll("[aria-invalid]")) input.removeAttribute("aria-invalid");
    if (!err) {
      clear(error);
      return;
    }
    const input = err.field ? section.querySelector(`[name="${CSS.escape(err.field)}"]`) : null;
    if (input) input.setAttribute("aria-invalid", "true");
    clear(error).append(errorBox(err.field ? `${err.field}: ${err.message}` : err));
  }

  // `generation` tells an answer to the current filters from one to filters since
  // changed (a slow search answering after the user typed on).
  async function load(append) {
    const generation = append ? state.generation : ++state.generation;
    state.searching = !append;
    if (!append) section.dataset.pending = "";
    if (!append) render();
    try {
      const page = await api(query(append ? state.cursor : null));
      if (state.disposed || generation !== state.generation) return;
      state.jobs = append ? state.jobs.concat(page.items) : page.items;
      state.cursor = page.next_cursor;
      state.searching = false;
      delete section.dataset.pending;
      showError(null);
      render();
      shell.ready("jobs");
    } catch (err) {
      if (generation !== state.generation) return;
      state.searching = false;
      delete section.dataset.pending;
      if (!append) state.jobs = [];
      state.cursor = null;
      render();
      showError(err);
    }
    schedulePoll();
  }

  // Live: re-read the newest page and every unfinished job further down, merging by id.
  async function poll() {
    if (state.disposed || document.hidden || state.searching) return schedulePoll();
    const generation = state.generation;
    try {
      const fresh = await api(query(null));
      if (generation !== state.generation) return;
      const byId = new Map(state.jobs.map((j) => [j.id, j]));
      const newest = fresh.items.filter((j) => !byId.has(j.id) && (!state.jobs.length || j.created_at >= state.jobs[0].created_at));
      for (const job of fresh.items) if (byId.has(job.id)) byId.set(job.id, job);
      const rest = [...byId.values()].filter((j) => !isFinal(j.status) && !fresh.items.some((f) => f.id === j.id)).slice(0, 20);
      for (const job of await Promise.all(rest.map((j) => api(`/v1/jobs/${enc(j.id)}`).catch(() => j)))) byId.set(job.id, job);
      if (generation !== state.generation) return;
      state.jobs = newest.concat(state.jobs.map((j) => byId.get(j.id)));
      render();
    } catch { /* keep what is shown; the next poll retries */ }
    schedulePoll();
  }

  function schedulePoll() {
    clearTimeout(state.timer);
    if (state.disposed) return;
    const active = state.jobs.some((j) => !isFinal(j.status));
    // Unfinished jobs: refresh quickly; otherwise watch for new jobs more slowly.
    state.timer = setTimeout(poll, active ? POLL_ACTIVE_MS : POLL_IDLE_MS);
  }

  // While the server searches, the loaded rows are narrowed at once by the same rule
  // (question or answer substring, id prefix); the server's answer then covers all jobs.
  function matches(job) {
    if (!state.q) return true;
    const q = state.q.toLowerCase();
    const answer = job.result && job.result.answer ? String(job.result.answer) : "";
    return job.id.startsWith(q) || job.question.toLowerCase().includes(q) || answer.toLowerCase().includes(q);
  }

  function render() {
    clear(tbody);
    const shown = state.jobs.filter(matches);
    for (const job of shown) tbody.append(row(job));
    if (!shown.length) tbody.append(h("tr", {}, h("td", { colspan: 10, class: "muted empty", text: emptyText() })));
    more.hidden = !state.cursor;
    const live = state.jobs.filter((j) => !isFinal(j.status)).length;
    status.textContent = `${fmtInt(shown.length)} shown${state.cursor ? " (older pages: “Load older”)" : ""}` +
      (filtered() ? " · search and filters cover all jobs" : "") + (state.searching ? " · searching…" : "") +
      (live ? ` · ${live} unfinished, refreshing live` : "");
    diffButton.disabled = state.selected.size !== 2;
    diffButton.textContent = state.selected.size === 2 ? "Diff selected" : `Diff selected (pick ${2 - state.selected.size || 2})`;
  }

  function emptyText() {
    if (state.searching) return "Searching…";
    if (filtered()) return "No job matches these filters.";
    return "No jobs yet — submit one with “New job”.";
  }

  function row(job) {
    const pick = h("input", { type: "checkbox", "aria-label": `select ${job.id}`, checked: state.selected.has(job.id),
      onchange: (e) => {
        if (e.target.checked) state.selected.add(job.id);
        else state.selected.delete(job.id);
        while (state.selected.size > 2) state.selected.delete(state.selected.values().next().value);
        render();
      } });
    const open = `#/jobs/${job.id}`;
    const answer = job.result ? job.result.answer ?? "∅" : job.error ? job.error.code : "";
    return h("tr", { class: `job-row status-${job.status}`, dataset: { id: job.id } },
      h("td", {}, pick),
      h("td", { class: "nowrap created-cell" }, h("a", { href: open, text: fmtTime(job.created_at), title: job.id })),
      h("td", {}, statusBadge(job.status)),
      h("td", { text: job.strategy.kind }),
      h("td", { class: "question-cell" }, h("a", { href: open, text: job.question, title: job.question })),
      h("td", { class: "answer-cell", text: answer, title: answer }),
      h("td", { class: "num", text: fmtInt(jobTokens(job)) }),
      h("td", { class: "num", text: !job.usage ? "–" : job.usage.cost_known === false ? "n/a" : fmtCost(job.usage.cost) }),
      h("td", { class: "num", text: fmtMs(jobLatencyMs(job)) }),
      h("td", {}, job.parent_job_id ? h("a", { href: `#/jobs/${job.parent_job_id}`, text: `${job.fork_point !== null ? "fork" : "replay"} of ${shortId(job.parent_job_id)}` }) : ""));
  }

  const reload = () => { clearTimeout(state.searchTimer); state.cursor = null; syncUrl(); load(false); };
  // data-pending on the view: filters changed and the server's answer is not shown yet.
  const reloadSoon = () => {
    clearTimeout(state.searchTimer);
    section.dataset.pending = "";
    state.searchTimer = setTimeout(reload, SEARCH_DELAY_MS);
  };
  function clearMore() {
    for (const [key] of MORE) { state[key] = ""; inputs[key].value = ""; }
    reload();
  }
  statusSel.addEventListener("change", () => { state.status = statusSel.value; reload(); });
  strategySel.addEventListener("change", () => { state.strategy = strategySel.value; reload(); });
  sinceSel.addEventListener("change", () => { state.since = sinceSel.value; reload(); });
  search.addEventListener("input", () => { state.q = search.value.trim(); syncUrl(); render(); reloadSoon(); });
  search.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && JOB_ID.test(search.value.trim())) location.hash = `#/jobs/${search.value.trim()}`;
  });
  for (const [key] of MORE) {
    const input = inputs[key];
    input.addEventListener(input.type === "text" ? "input" : "change", () => {
      state[key] = input.value.trim();
      if (input.type === "text") reloadSoon();
      else reload();
    });
  }
  more.addEventListener("click", () => load(true));
  diffButton.addEventListener("click", () => {
    const [a, b] = state.jobs.filter((j) => state.selected.has(j.id)).reverse().map((j) => j.id); // older first
    location.hash = `#/diff/${a}/${b}`;
  });

  api("/v1/strategies").then((list) => {
    for (const s of list) strategySel.append(h("option", { value: s.kind, text: s.kind, selected: s.kind === state.strategy }));
    form.setStrategies(list);
  }).catch(() => {});
  load(false);
  return () => { state.disposed = true; clearTimeout(state.timer); clearTimeout(state.searchTimer); };
}

// The form opens on a spec that is valid on any server: self_consistency samples the
// `small` role, which every deployment binds (beam_search, first in the alphabet, needs
// a reward-model role many servers lack).
const DEFAULT_KIND = "self_consistency";
const DEFAULT_PARAMS = '{"n": 5}';

function submitForm() {
  const question = h("textarea", { name: "question", rows: 2, required: true, placeholder: "What is 17 * 23?" });
  const kind = h("select", { name: "kind", "aria-label": "Strategy kind" });
  const params = h("input", { type: "text", name: "params", value: DEFAULT_PARAMS, placeholder: "{} = the strategy's defaults", spellcheck: "false" });
  const budget = h("input", { type: "text", name: "budget", placeholder: '{"max_tokens": 4000}', spellcheck: "false" });
  const seed = h("input", { type: "number", name: "seed", min: 0, placeholder: "random" });
  const hint = h("p", { class: "muted small wide kind-doc" });
  const error = h("div", { class: "form-error", role: "alert" });
  const el = h("form", { class: "card submit-form", hidden: true },
    h("label", { class: "wide" }, "Question", question),
    h("label", {}, "Strategy", kind), h("label", {}, "Params (JSON)", params),
    h("label", {}, "Budget (JSON)", budget), h("label", {}, "Seed", seed), hint,
    h("div", { class: "wide actions" }, h("button", { type: "submit", text: "Submit job" }), error));
  const toggle = h("button", { type: "button", class: "secondary", text: "New job", onclick: () => { el.hidden = !el.hidden; if (!el.hidden) question.focus(); } });
  const docs = new Map();
  const showDoc = () => { hint.textContent = docs.get(kind.value) || ""; };
  kind.addEventListener("change", () => {
    // The example params are self_consistency's: another kind starts from its defaults.
    if (params.value.trim() === DEFAULT_PARAMS) params.value = "";
    showDoc();
  });
  el.addEventListener("submit", async (e) => {
    e.preventDefault();
    error.textContent = "";
    const body = { question: question.value };
    try {
      const extra = params.value.trim() ? JSON.parse(params.value) : {};
      body.strategy = { kind: kind.value, ...extra };
      if (budget.value.trim()) body.budget = JSON.parse(budget.value);
    } catch (err) {
      error.textContent = `Not valid JSON: ${err.message}`;
      return;
    }
    if (seed.value !== "") body.seed = Number(seed.value);
    try {
      const job = await api("/v1/jobs", { method: "POST", body });
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      error.textContent = err.field ? `${err.field}: ${err.message}` : err.message;
    }
  });
  return {
    el, toggle,
    setStrategies(list) {
      for (const s of list) {
        const doc = s.doc.split("\n")[0];
        docs.set(s.kind, doc);
        kind.append(h("option", { value: s.kind, text: s.kind, title: doc, selected: s.kind === DEFAULT_KIND }));
      }
      if (!docs.has(DEFAULT_KIND)) params.value = "";
      showDoc();
    },
  };
}
