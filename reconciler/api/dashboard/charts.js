// Small charts of a site's last hour (a point a minute): inline SVG lines, no library.

import { el } from "./ui.js";

const WIDTH = 240;
const HEIGHT = 48;

function format(value, unit) {
  if (value === null || value === undefined) return "–";
  if (unit === "bytes") return `${(value / 1048576).toFixed(value < 10485760 ? 1 : 0)} MiB`;
  if (unit === "%") return `${(value * 100).toFixed(value < 0.1 ? 2 : 1)}%`;
  if (unit === "ms") return `${value.toFixed(value < 10 ? 1 : 0)} ms`;
  if (unit === "cpu") return `${value.toFixed(1)}%`;
  return value < 10 ? value.toFixed(2) : value.toFixed(0);
}

// one chart: its title, its latest value, a line over the hour (gaps where no value)
export function chart(title, values, unit, kind = "") {
  const known = values.filter((v) => v !== null && v !== undefined);
  const latest = known.length ? known[known.length - 1] : null;
  const top = Math.max(...known, unit === "%" ? 0.01 : 1e-9);
  const step = values.length > 1 ? WIDTH / (values.length - 1) : WIDTH;
  const segments = [];
  let points = [];
  values.forEach((value, index) => {
    if (value === null || value === undefined) {
      if (points.length) segments.push(points);
      points = [];
      return;
    }
    const x = (index * step).toFixed(1);
    const y = (HEIGHT - 2 - (value / top) * (HEIGHT - 6)).toFixed(1);
    points.push(`${x},${y}`);
  });
  if (points.length) segments.push(points);
  const lines = segments.map((segment) =>
    segment.length === 1
      ? el("circle", { cx: segment[0].split(",")[0], cy: segment[0].split(",")[1], r: "1.5" })
      : el("polyline", { points: segment.join(" ") }));
  const empty = known.length === 0;
  return el("figure", { class: `chart ${kind}`, "data-chart": title },
    el("figcaption", {}, el("span", {}, title), el("strong", {}, format(latest, unit))),
    el("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, preserveAspectRatio: "none", role: "img",
      "aria-label": `${title} over the last hour` },
    el("line", { x1: "0", y1: String(HEIGHT - 1), x2: String(WIDTH), y2: String(HEIGHT - 1), class: "axis" }),
    ...lines),
    empty ? el("div", { class: "chart-empty" }, "no data yet") : null);
}

export function charts(series) {
  return [
    chart("Requests/s", series.requestsPerSecond, "", "rps"),
    chart("Errors (5xx)", series.errorRate, "%", "errors"),
    chart("Latency", series.latencyMs, "ms", "latency"),
    chart("Memory", series.memory, "bytes", "memory"),
    chart("CPU", series.cpu, "cpu", "cpu"),
  ];
}
