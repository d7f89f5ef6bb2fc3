/* bitttt Studio: a small SVG line chart (no library).
 *   const c = new LineChart(el, {title: "loss", height: 180, xLabel: "step"});
 *   c.add("train", x, y); c.set("val", [[x, y], ...], {dashed: true}); c.clear();
 * Draws on the next animation frame; the <svg> carries data-points = the number of points drawn. */
"use strict";

const PALETTE = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];
const SVGNS = "http://www.w3.org/2000/svg";

function niceTicks(lo, hi, n) {
  if (!(hi > lo)) { hi = lo + 1; }
  const raw = (hi - lo) / Math.max(1, n);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map(m => m * mag).find(s => s >= raw) || 10 * mag;
  const out = [];
  for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
  return out;
}

function fmt(v) {
  const a = Math.abs(v);
  if (a === 0) return "0";
  if (a >= 1e6) return (v / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
  if (a >= 1e4) return (v / 1e3).toFixed(a >= 1e5 ? 0 : 1) + "k";
  if (a >= 100) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2).replace(/\.?0+$/, "");
  if (a >= 0.01) return v.toFixed(3).replace(/\.?0+$/, "");
  return v.toExponential(1);
}

function el(tag, attrs, parent) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  if (parent) parent.appendChild(e);
  return e;
}

class LineChart {
  constructor(container, opts) {
    this.box = container;
    this.opts = Object.assign({height: 180, title: "", xLabel: "step", unit: ""}, opts || {});
    this.series = new Map();
    this.pending = false;
    this.hoverX = null;
    this.box.classList.add("chart");
    this.render();
    if (window.ResizeObserver) new ResizeObserver(() => this.draw()).observe(this.box);
  }
  _s(name, style) {
    if (!this.series.has(name)) {
      const color = (style && style.color) || PALETTE[this.series.size % PALETTE.length];
      this.series.set(name, {points: [], color, dashed: false, dots: false});
    }
    const s = this.series.get(name);
    if (style) Object.assign(s, style);
    return s;
  }
  add(name, x, y, style) {
    if (!Number.isFinite(x) || !Number.isFinite(y)) return;
    this._s(name, style).points.push([x, y]);
    this.draw();
  }
  set(name, points, style) {
    this._s(name, style).points = points.filter(p => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    this.draw();
  }
  clear() { this.series.clear(); this.draw(); }
  count() { let n = 0; for (const s of this.series.values()) n += s.points.length; return n; }
  draw() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.render(); });
  }
  render() {
    const W = Math.max(220, this.box.clientWidth || 360), H = this.opts.height;
    const m = {l: 46, r: 12, t: 24, b: 24};
    const svg = el("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img",
                           "aria-label": this.opts.title, "data-points": this.count()});
    el("text", {x: m.l, y: 15, class: "chart-title"}, svg).textContent = this.opts.title;
    let xs = [], ys = [];
    for (const s of this.series.values()) for (const [x, y] of s.points) { xs.push(x); ys.push(y); }
    if (!xs.length) {
      el("text", {x: W / 2, y: H / 2 + 4, class: "chart-empty", "text-anchor": "middle"}, svg).textContent = "no data yet";
      this.box.replaceChildren(svg);
      return;
    }
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (x1 === x0) { x1 = x0 + 1; }
    if (y1 === y0) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const pad = (y1 - y0) * 0.06; y0 -= pad; y1 += pad;
    if (this.opts.zero && y0 > 0) y0 = 0;
    const sx = x => m.l + (x - x0) / (x1 - x0) * (W - m.l - m.r);
    const sy = y => H - m.b - (y - y0) / (y1 - y0) * (H - m.t - m.b);
    for (const t of niceTicks(y0, y1, 4)) {
      el("line", {x1: m.l, x2: W - m.r, y1: sy(t), y2: sy(t), class: "chart-grid"}, svg);
      el("text", {x: m.l - 6, y: sy(t) + 4, "text-anchor": "end", class: "chart-tick"}, svg).textContent = fmt(t);
    }
    for (const t of niceTicks(x0, x1, Math.max(3, Math.floor(W / 80)))) {
      el("text", {x: sx(t), y: H - 6, "text-anchor": "middle", class: "chart-tick"}, svg).textContent = fmt(t);
    }
    el("line", {x1: m.l, x2: W - m.r, y1: H - m.b, y2: H - m.b, class: "chart-axis"}, svg);
    let lx = W - m.r;
    const names = [...this.series.keys()].reverse();
    for (const name of names) {
      const s = this.series.get(name);
      if (!s.points.length) continue;
      const d = s.points.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join("");
      el("path", {d, fill: "none", stroke: s.color, "stroke-width": 1.8, "stroke-dasharray": s.dashed ? "5 3" : "none",
                  class: "chart-line", "data-series": name}, svg);
      if (s.dots || s.points.length < 3) for (const p of s.points) el("circle", {cx: sx(p[0]), cy: sy(p[1]), r: 2.6, fill: s.color}, svg);
      const last = s.points[s.points.length - 1];
      el("circle", {cx: sx(last[0]), cy: sy(last[1]), r: 3.2, fill: s.color}, svg);
      if (this.series.size > 1 || this.opts.legend) {
        const label = `${name} ${fmt(last[1])}`;
        lx -= label.length * 6.2 + 16;
        el("rect", {x: lx, y: 8, width: 9, height: 3, fill: s.color}, svg);
        el("text", {x: lx + 12, y: 13, class: "chart-legend"}, svg).textContent = label;
      } else {
        el("text", {x: W - m.r, y: 15, "text-anchor": "end", class: "chart-legend"}, svg).textContent =
          fmt(last[1]) + (this.opts.unit ? " " + this.opts.unit : "");
      }
    }
    // hover: a vertical rule and the nearest values
    const hover = el("g", {class: "chart-hover"}, svg);
    const overlay = el("rect", {x: m.l, y: m.t, width: W - m.l - m.r, height: H - m.t - m.b, fill: "transparent"}, svg);
    overlay.addEventListener("mousemove", ev => {
      const r = svg.getBoundingClientRect();
      const x = x0 + (ev.clientX - r.left - m.l) / (W - m.l - m.r) * (x1 - x0);
      hover.replaceChildren();
      const parts = [];
      for (const [name, s] of this.series) {
        if (!s.points.length) continue;
        let best = s.points[0];
        for (const p of s.points) if (Math.abs(p[0] - x) < Math.abs(best[0] - x)) best = p;
        parts.push(`${name} ${fmt(best[1])}`);
        el("circle", {cx: sx(best[0]), cy: sy(best[1]), r: 4, fill: "none", stroke: s.color}, hover);
      }
      el("line", {x1: sx(x), x2: sx(x), y1: m.t, y2: H - m.b, class: "chart-rule"}, hover);
      const t = el("text", {x: m.l + 4, y: m.t + 12, class: "chart-readout"}, hover);
      t.textContent = `${this.opts.xLabel} ${fmt(x)}: ${parts.join(", ")}`;
    });
    overlay.addEventListener("mouseleave", () => hover.replaceChildren());
    this.box.replaceChildren(svg);
  }
}
window.LineChart = LineChart;
window.chartFmt = fmt;
