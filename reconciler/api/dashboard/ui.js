// Shared pieces of the dashboard: building elements (every value from the API goes in as
// text, never as HTML), calling the API (writes carry the token entered for this tab, in the
// Authorization header only), a confirmation dialog, times and icons.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

export function el(tag, attrs = {}, ...children) {
  const svg = ["svg", "path", "polyline", "line", "circle", "rect", "g", "title"].includes(tag);
  const node = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.setAttribute("class", value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export function token() {
  return sessionStorage.getItem("reconciler-token") || "";
}

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

export async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  const write = options.method && options.method !== "GET";
  if (write) headers["Content-Type"] = "application/json";
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const body = options.json !== undefined ? JSON.stringify(options.json) : options.body;
  const response = await fetch(path, { ...options, body, headers, credentials: "same-origin" });
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  if (!response.ok && !(answer && "success" in answer)) {
    throw new ApiError((answer && answer.error) || `HTTP ${response.status}`, response.status);
  }
  return answer;
}

export const enc = encodeURIComponent;

export function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

export function seconds(value) {
  if (value === null || value === undefined) return "";
  return value < 10 ? `${value.toFixed(1)} s` : `${Math.round(value)} s`;
}

export function firstLine(text) {
  return text ? String(text).split("\n")[0] : "";
}

// An error as its message and, apart, the command that shows more (the CLI's hint)
export function splitHint(text) {
  const value = String(text || "");
  const at = value.search(/\s*Full log: /);
  if (at < 0) return [value, ""];
  return [value.slice(0, at).trim(), value.slice(at).trim()];
}

// -- icons: 24x24 strokes ------------------------------------------------------------------

const ICONS = {
  deploy: "M12 19V5M5 12l7-7 7 7",
  start: "M7 4l12 8-12 8z",
  stop: "M6 6h12v12H6z",
  settings: "M12 15a3 3 0 1 0 0-6 3 3 0 0 0 0 6zM4 12h2M18 12h2M12 4v2M12 18v2M6.3 6.3l1.4 1.4M16.3 16.3l1.4 1.4M6.3 17.7l1.4-1.4M16.3 7.7l1.4-1.4",
  trash: "M4 7h16M9 7V4h6v3M6 7l1 13h10l1-13",
  plus: "M12 5v14M5 12h14",
  key: "M15 7a4 4 0 1 1-3.9 5H4v3h3v-3M15 7h.01",
  back: "M15 18l-6-6 6-6",
  pin: "M9 4h6l-1 6 3 3H7l3-3zM12 13v7",
  undo: "M9 14L4 9l5-5M4 9h10a6 6 0 0 1 0 12h-3",
  link: "M10 14a4 4 0 0 0 5.7 0l3-3a4 4 0 0 0-5.7-5.7l-1 1M14 10a4 4 0 0 0-5.7 0l-3 3a4 4 0 0 0 5.7 5.7l1-1",
};

export function icon(name) {
  return el("svg", { class: "icon", viewBox: "0 0 24 24", "aria-hidden": "true" },
    el("path", { d: ICONS[name] || "" }));
}

export function button(label, attrs = {}, iconName = null) {
  return el("button", { type: "button", ...attrs }, iconName ? icon(iconName) : null, el("span", {}, label));
}

// -- the confirmation dialog: resolves true when confirmed ---------------------------------

export function confirmDialog({ title, text, action = "Confirm", danger = false, details = "" }) {
  const dialog = $("#confirm");
  $("#confirm-title").textContent = title;
  $("#confirm-text").textContent = text;
  $("#confirm-details").textContent = details;
  $("#confirm-details").hidden = !details;
  const ok = $("#confirm-ok");
  ok.textContent = action;
  ok.className = danger ? "danger" : "";
  return new Promise((resolve) => {
    const done = (value) => {
      dialog.close();
      ok.removeEventListener("click", yes);
      $("#confirm-cancel").removeEventListener("click", no);
      resolve(value);
    };
    const yes = () => done(true);
    const no = () => done(false);
    ok.addEventListener("click", yes);
    $("#confirm-cancel").addEventListener("click", no);
    dialog.addEventListener("cancel", no, { once: true });
    dialog.showModal();
  });
}

// a message at the top of the page: kind "error" or "ok"
export function notice(text, kind = "error") {
  const box = $("#notice");
  box.replaceChildren();
  box.hidden = !text;
  box.className = `notice ${kind}`;
  if (!text) return;
  const [message, hint] = splitHint(text);
  box.append(el("div", {}, message));
  if (hint) box.append(el("div", { class: "hint" }, hint));
}

export function writeFailed(error) {
  if (error.status === 401 || error.status === 403) notice(`${error.message}: enter the API token (top right)`);
  else notice(error.message);
}
