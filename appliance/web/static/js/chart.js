// A line chart in plain SVG (no chart library): points [{t: Date, v: number}] over time, with the
// first and last times and the top value labelled, and each point's value in its tooltip.
const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 640;
const HEIGHT = 160;
const PAD = { left: 70, right: 10, top: 10, bottom: 24 };

function svg(tag, attrs = {}, text = null) {
  const el = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) el.setAttribute(key, String(value));
  if (text !== null) el.textContent = text;
  return el;
}

export function lineChart(points, format, label) {
  const chart = svg("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img", "aria-label": label });
  if (points.length === 0) return chart;
  const t0 = points[0].t.getTime();
  const span = Math.max(points[points.length - 1].t.getTime() - t0, 1);
  const top = Math.max(...points.map((p) => p.v)) || 1;
  const x = (t) => PAD.left + ((t.getTime() - t0) / span) * (WIDTH - PAD.left - PAD.right);
  const y = (v) => HEIGHT - PAD.bottom - (v / top) * (HEIGHT - PAD.top - PAD.bottom);
  chart.append(
    svg("line", { x1: PAD.left, y1: HEIGHT - PAD.bottom, x2: WIDTH - PAD.right, y2: HEIGHT - PAD.bottom, class: "axis" }),
    svg("line", { x1: PAD.left, y1: PAD.top, x2: PAD.left, y2: HEIGHT - PAD.bottom, class: "axis" }),
    svg("text", { x: PAD.left - 6, y: PAD.top + 10, "text-anchor": "end" }, format(top)),
    svg("text", { x: PAD.left - 6, y: HEIGHT - PAD.bottom, "text-anchor": "end" }, format(0)),
    svg("text", { x: PAD.left, y: HEIGHT - 6 }, points[0].t.toLocaleDateString()),
    svg("text", { x: WIDTH - PAD.right, y: HEIGHT - 6, "text-anchor": "end" },
      points[points.length - 1].t.toLocaleDateString()),
    svg("polyline", { class: "series", points: points.map((p) => `${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`).join(" ") }));
  for (const p of points) {
    const dot = svg("circle", { cx: x(p.t).toFixed(1), cy: y(p.v).toFixed(1), r: 3, class: "point" });
    dot.append(svg("title", {}, `${p.t.toLocaleString()}: ${format(p.v)}`));
    chart.append(dot);
  }
  return chart;
}
