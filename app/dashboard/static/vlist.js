// A virtualised list of fixed-height rows: only the rows in view (plus a margin) exist
// in the DOM, so 5,000 spans cost what 40 do. Row elements are recycled.

import { h } from "./dom.js";

export class VirtualList {
  // render(el, index) fills a recycled row element for item `index`.
  // maxHeight (px or a function returning px): the viewport shrinks to fit few rows.
  constructor(viewport, { rowHeight, render, overscan = 10, maxHeight = null }) {
    this.viewport = viewport;
    this.maxHeight = maxHeight;
    this.rowHeight = rowHeight;
    this.render = render;
    this.overscan = overscan;
    this.count = 0;
    this.rows = new Map(); // index -> element
    this.spare = [];
    this.frame = 0;
    viewport.classList.add("vlist");
    this.spacer = h("div", { class: "vlist-spacer", role: "presentation" });
    viewport.append(this.spacer);
    viewport.addEventListener("scroll", () => this.schedule(), { passive: true });
    this.resize = new ResizeObserver(() => this.schedule());
    this.resize.observe(viewport);
  }

  setCount(count) {
    this.count = count;
    this.spacer.style.height = `${count * this.rowHeight}px`;
    if (this.maxHeight !== null) {
      const max = typeof this.maxHeight === "function" ? this.maxHeight() : this.maxHeight;
      this.viewport.style.height = `${Math.max(this.rowHeight, Math.min(max, count * this.rowHeight + 2))}px`;
    }
    this.refresh();
  }

  // Re-render every row in view (the data behind them changed).
  refresh() {
    for (const [index, el] of this.rows) {
      if (index >= this.count) {
        this.rows.delete(index);
        el.remove();
        this.spare.push(el);
      } else {
        this.render(el, index);
      }
    }
    this.update();
  }

  schedule() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.update();
    });
  }

  update() {
    const top = this.viewport.scrollTop;
    const height = this.viewport.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / this.rowHeight) - this.overscan);
    const last = Math.min(this.count - 1, Math.ceil((top + height) / this.rowHeight) + this.overscan);
    for (const [index, el] of this.rows) {
      if (index < first || index > last) {
        this.rows.delete(index);
        el.remove();
        this.spare.push(el);
      }
    }
    for (let index = first; index <= last; index++) {
      if (this.rows.has(index)) continue;
      const el = this.spare.pop() || h("div", { class: "vrow" });
      el.style.transform = `translateY(${index * this.rowHeight}px)`;
      el.style.height = `${this.rowHeight}px`;
      el.dataset.index = String(index);
      this.render(el, index);
      this.rows.set(index, el);
      this.spacer.append(el);
    }
  }

  // Scroll so that row `index` is visible (centred when it was out of view).
  reveal(index) {
    const top = index * this.rowHeight;
    const view = this.viewport;
    if (top >= view.scrollTop && top + this.rowHeight <= view.scrollTop + view.clientHeight) return;
    view.scrollTop = Math.max(0, top - view.clientHeight / 2);
    this.update();
  }

  destroy() {
    this.resize.disconnect();
    if (this.frame) cancelAnimationFrame(this.frame);
  }
}
