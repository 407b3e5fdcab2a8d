// Step-through replay of a finished job's recorded events, in seq (program) order.
// Position null: not replaying, everything shown. Position k: the first k events shown.

import { h } from "./dom.js";

const SPEEDS = [["0.5×", 1000], ["1×", 500], ["4×", 125], ["16×", 30], ["max", 0]];

export class Player {
  constructor(container, { total, onStep }) {
    this.total = total;
    this.onStep = onStep;
    this.position = null;
    this.timer = 0;
    this.delay = 500;
    this.buttons = {
      first: h("button", { type: "button", class: "ghost", title: "Back to the start (Home)", text: "|◀", onclick: () => this.go(0) }),
      prev: h("button", { type: "button", class: "ghost", title: "Step back (←)", text: "◀", onclick: () => this.step(-1) }),
      play: h("button", { type: "button", class: "play", title: "Play / pause (space)", text: "▶ Replay", onclick: () => this.toggle() }),
      next: h("button", { type: "button", class: "ghost", title: "Step (→)", text: "▶|", onclick: () => this.step(1) }),
      exit: h("button", { type: "button", class: "ghost", title: "Leave replay: show the whole trace (Esc)", text: "✕", onclick: () => this.exit() }),
    };
    this.speed = h("select", { title: "Playback speed", onchange: () => { this.delay = Number(this.speed.value); if (this.timer) this.resume(); } },
      SPEEDS.map(([label, ms]) => h("option", { value: ms, selected: ms === 500, text: label })));
    this.range = h("input", { type: "range", min: 0, max: total, value: total, "aria-label": "Replay position",
      oninput: () => this.go(Number(this.range.value)) });
    this.label = h("span", { class: "player-pos" });
    this.info = h("span", { class: "player-info" });
    this.el = h("div", { class: "player", role: "toolbar", "aria-label": "Replay" },
      this.buttons.first, this.buttons.prev, this.buttons.play, this.buttons.next, this.speed,
      this.range, this.label, this.buttons.exit, this.info);
    container.append(this.el);
    this.render();
  }

  setTotal(total) {
    this.total = total;
    this.range.max = String(total);
    if (this.position !== null && this.position > total) this.position = total;
    this.render();
  }

  setEnabled(enabled, reason = "") {
    for (const b of Object.values(this.buttons)) b.disabled = !enabled;
    this.range.disabled = !enabled;
    this.speed.disabled = !enabled;
    this.el.classList.toggle("disabled", !enabled);
    this.el.title = enabled ? "" : reason;
    if (!enabled) this.info.textContent = reason;
  }

  setInfo(text) {
    this.info.textContent = text;
  }

  go(position) {
    this.position = Math.max(0, Math.min(this.total, position));
    if (this.position === this.total && this.timer) this.pause();
    this.render();
    this.onStep(this.position);
  }

  step(delta) {
    const from = this.position === null ? (delta > 0 ? 0 : this.total) : this.position;
    this.pause();
    this.go(from + delta);
  }

  toggle() {
    if (this.timer) this.pause();
    else this.play();
  }

  play() {
    if (this.position === null || this.position >= this.total) this.go(0);
    this.resume();
  }

  resume() {
    clearInterval(this.timer);
    // "max" still yields to the browser between steps, so the page stays responsive.
    this.timer = setInterval(() => this.go((this.position ?? 0) + 1), this.delay || 4);
    this.render();
  }

  pause() {
    clearInterval(this.timer);
    this.timer = 0;
    this.render();
  }

  exit() {
    this.pause();
    this.position = null;
    this.render();
    this.onStep(null);
  }

  render() {
    const replaying = this.position !== null;
    this.buttons.play.textContent = this.timer ? "‖ Pause" : replaying ? "▶ Play" : "▶ Replay";
    this.buttons.exit.hidden = !replaying;
    this.range.value = String(replaying ? this.position : this.total);
    this.label.textContent = replaying ? `step ${this.position} / ${this.total}` : `${this.total} events`;
    this.el.classList.toggle("active", replaying);
  }

  // Space, arrows, Home, Esc — unless the user is typing.
  key(event) {
    const tag = (event.target && event.target.tagName) || "";
    if (["INPUT", "TEXTAREA", "SELECT"].includes(tag) || this.buttons.play.disabled) return;
    if (event.key === " " && tag === "BUTTON") return; // the button's own click handles it
    const actions = {
      " ": () => this.toggle(), ArrowRight: () => this.step(1), ArrowLeft: () => this.step(-1),
      Home: () => this.go(0), Escape: () => this.exit(),
    };
    const action = actions[event.key];
    if (!action || (event.key === "Escape" && this.position === null)) return;
    event.preventDefault();
    action();
  }

  destroy() {
    clearInterval(this.timer);
  }
}
