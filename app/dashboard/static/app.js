// The dashboard's entry: hash routes, the API-key dialog, the live indicator.
//   #/jobs[?status=&strategy=&since=&q=]   the job list
//   #/jobs/<id>[?span=<span id>]           one job (a span selected)
//   #/diff[/<a>/<b>]                       two jobs side by side
//   #/experiments[/<id>]                   stored evals (experiments.js)

import { getKey, setKey } from "./api.js";
import { diffView } from "./diff.js";
import { experimentsView, experimentView } from "./experiments.js";
import { jobView } from "./job.js";
import { jobsView } from "./jobs.js";

const main = document.getElementById("main");
const dialog = document.getElementById("key-dialog");
const keyInput = document.getElementById("key-input");
const keyReason = document.getElementById("key-reason");
const keyButton = document.getElementById("key-button");
const liveEl = document.getElementById("live-state");
let dispose = () => {};

// What views may tell the page around them.
const shell = {
  // The view has rendered and is interactive: tests and the TTI benchmark wait for it.
  // Marked after the next frame, so the time includes layout and the first paint.
  ready(view) {
    requestAnimationFrame(() => setTimeout(() => {
      performance.mark(`ponder:ready:${view}`);
      document.body.dataset.ready = view;
      window.dispatchEvent(new CustomEvent("ponder:ready", { detail: view }));
    }, 0));
  },
  liveState(state) {
    liveEl.hidden = !state;
    liveEl.textContent = state === "live" ? "● live" : state === "reconnecting" ? "reconnecting…" : state || "";
    liveEl.className = `live-state ${state || ""}`;
  },
};

function route() {
  dispose();
  delete document.body.dataset.ready;
  const hash = location.hash.replace(/^#/, "") || "/jobs";
  const [path, query = ""] = hash.split("?");
  const params = new URLSearchParams(query);
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.toggle("active", a.dataset.nav === parts[0]);
  if (parts[0] === "jobs" && parts[1]) {
    document.title = `Job ${parts[1].slice(0, 8)} · Ponder`;
    dispose = jobView(main, parts[1], params, shell);
  } else if (parts[0] === "experiments") {
    document.title = parts[1] ? `Experiment ${parts[1].slice(0, 8)} · Ponder` : "Experiments · Ponder";
    dispose = parts[1] ? experimentView(main, parts[1], params, shell) : experimentsView(main, params, shell);
  } else if (parts[0] === "diff") {
    document.title = "Diff · Ponder";
    dispose = diffView(main, parts[1], parts[2], shell);
  } else {
    document.title = "Jobs · Ponder";
    dispose = jobsView(main, params, shell);
  }
  window.scrollTo(0, 0);
}

function showKeyState() {
  keyButton.textContent = getKey() ? "API key ✓" : "API key";
}

function openKeyDialog(reason) {
  if (dialog.open) return;
  keyReason.dataset.default ??= keyReason.textContent;
  keyReason.textContent = reason ? `${reason}. ${keyReason.dataset.default}` : keyReason.dataset.default;
  keyInput.value = getKey();
  dialog.showModal();
  keyInput.focus();
}

dialog.addEventListener("close", () => {
  if (dialog.returnValue === "save") setKey(keyInput.value.trim());
  else if (dialog.returnValue === "clear") setKey("");
  else return;
  showKeyState();
  route();
});
keyButton.addEventListener("click", () => openKeyDialog(""));
window.addEventListener("ponder:unauthorized", (e) => openKeyDialog(e.detail));
window.addEventListener("hashchange", route);
showKeyState();
route();
