// Line charts drawn as SVG by our own code: axes with ticks, one polyline per series, optional markers and
// reference lines. Used for the risk-coverage curve and the monitoring time series.
import { h, s } from "./dom.js";

const W = 640, H = 300, M = { left: 56, right: 16, top: 14, bottom: 44 };

function ticks(lo, hi, n = 5) {
  if (hi <= lo) return [lo];
  return Array.from({ length: n + 1 }, (_, i) => lo + ((hi - lo) * i) / n);
}

function extent(values, fallback) {
  const finite = values.filter((v) => Number.isFinite(v));
  if (!finite.length) return fallback;
  let lo = Math.min(...finite), hi = Math.max(...finite);
  if (lo === hi) { lo -= 0.5; hi += 0.5; }
  return [lo, hi];
}

/**
 * lineChart({title, x: {label, domain, format}, y: {label, domain, format}, series: [{name, points: [[x, y]]}],
 *            markers: [{x, y, label}], refs: [{y, label}]}) -> figure element
 */
export function lineChart({ title, x, y, series, markers = [], refs = [], description }) {
  const xs = series.flatMap((se) => se.points.map((p) => p[0]));
  const ys = series.flatMap((se) => se.points.map((p) => p[1])).concat(refs.map((r) => r.y));
  const [x0, x1] = x.domain || extent(xs, [0, 1]);
  const [y0, y1] = y.domain || extent(ys, [0, 1]);
  const px = (v) => M.left + ((v - x0) / (x1 - x0 || 1)) * (W - M.left - M.right);
  const py = (v) => H - M.bottom - ((v - y0) / (y1 - y0 || 1)) * (H - M.top - M.bottom);
  const xf = x.format || ((v) => v.toFixed(2));
  const yf = y.format || ((v) => v.toFixed(2));
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title });
  svg.append(s("title", {}, title));
  for (const t of ticks(y0, y1)) {
    svg.append(s("line", { class: "grid-line", x1: M.left, x2: W - M.right, y1: py(t), y2: py(t) }));
    svg.append(s("text", { x: M.left - 6, y: py(t) + 4, "text-anchor": "end" }, yf(t)));
  }
  for (const t of ticks(x0, x1)) {
    svg.append(s("text", { x: px(t), y: H - M.bottom + 16, "text-anchor": "middle" }, xf(t)));
  }
  svg.append(s("line", { class: "axis", x1: M.left, x2: W - M.right, y1: H - M.bottom, y2: H - M.bottom }));
  svg.append(s("line", { class: "axis", x1: M.left, x2: M.left, y1: M.top, y2: H - M.bottom }));
  svg.append(s("text", { x: (M.left + W - M.right) / 2, y: H - 8, "text-anchor": "middle" }, x.label));
  svg.append(s("text", { x: 14, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle",
    transform: `rotate(-90 14 ${(M.top + H - M.bottom) / 2})` }, y.label));
  for (const ref of refs) {
    svg.append(s("line", { class: "ref", x1: M.left, x2: W - M.right, y1: py(ref.y), y2: py(ref.y) }));
    svg.append(s("text", { x: W - M.right, y: py(ref.y) - 4, "text-anchor": "end" }, ref.label));
  }
  series.forEach((se, i) => {
    const pts = se.points.filter((p) => Number.isFinite(p[0]) && Number.isFinite(p[1]));
    if (pts.length === 1) svg.append(s("circle", { class: `series s${i}`, cx: px(pts[0][0]), cy: py(pts[0][1]), r: 3 }));
    else svg.append(s("polyline", { class: `series s${i}`, points: pts.map((p) => `${px(p[0])},${py(p[1])}`).join(" ") }));
  });
  for (const m of markers) {
    svg.append(s("circle", { class: "marker", cx: px(m.x), cy: py(m.y), r: 5 }, s("title", {}, m.label)));
  }
  const legend = h("ul", { class: "legend" },
    series.map((se, i) => h("li", {}, h("span", { class: `swatch s${i}`, "aria-hidden": "true" }), se.name)),
    markers.map((m) => h("li", {}, "● ", m.label)));
  return h("figure", { class: "figure" }, svg, legend, description ? h("figcaption", { class: "muted small" }, description) : null);
}
