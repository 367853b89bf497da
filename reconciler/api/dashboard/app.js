// The dashboard: plain browser JavaScript over the JSON API, nothing loaded from elsewhere.
// Every value from the API is put in the page as text (never as HTML). Writes carry the API
// token, when one is entered, in the Authorization header; it is kept for this tab only
// (sessionStorage), never in a URL or a cookie.

const $ = (selector) => document.querySelector(selector);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function token() {
  return sessionStorage.getItem("reconciler-token") || "";
}

async function api(path, options = {}) {
  const headers = { Accept: "application/json", ...(options.headers || {}) };
  if (options.method && options.method !== "GET") {
    headers["Content-Type"] = "application/json";
    if (token()) headers.Authorization = `Bearer ${token()}`;
  }
  const response = await fetch(path, { ...options, headers, credentials: "same-origin" });
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  if (!response.ok && !(body && "success" in body)) {
    const message = (body && body.error) || `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function firstLine(text) {
  return text ? String(text).split("\n")[0] : "";
}

// What a project's status amounts to, as one badge: [class, words]
function badge(production) {
  if (!production) return ["invalid", "invalid file"];
  const { status, url, hash } = production;
  if (status === "failed" && url) return ["degraded", `failed (${hash} still serving)`];
  if (status === "error") return ["error", "error (retrying)"];
  if (status === "sleeping") return ["sleeping", "sleeping (its next request wakes it)"];
  return [status, status];
}

function version(production) {
  if (!production || !production.hash) return "";
  const commit = production.commit ? ` · ${production.commit.slice(0, 12)}` : "";
  const replicas = production.replicas ? ` · ${production.replicas} replicas` : "";
  return `${production.hash}${commit}${replicas}`;
}

// -- the list ---------------------------------------------------------------------------------

async function showList() {
  $("#list-view").hidden = false;
  $("#project-view").hidden = true;
  closeStream();
  let listing;
  try {
    listing = await api("/api/projects");
    $("#list-error").hidden = true;
  } catch (error) {
    $("#list-error").textContent = `Cannot read the projects: ${error.message}`;
    $("#list-error").hidden = false;
    return;
  }
  const rows = [];
  const invalid = [];
  for (const item of listing.projects) {
    if (item.id === null || !item.valid && !item.production) {
      invalid.push(el("li", { class: "error" }, item.error || `${item.file}: invalid`));
      if (item.id === null) continue;
    }
    const production = item.production;
    const [kind, words] = item.valid ? badge(production) : ["invalid", "invalid file"];
    const url = production && production.url;
    rows.push(
      el("tr", { "data-project": item.id },
        el("td", { "data-label": "Project" }, el("a", { href: `#/p/${encodeURIComponent(item.id)}` }, item.id)),
        el("td", { "data-label": "Status" }, el("span", { class: `badge ${kind}` }, words)),
        el("td", { "data-label": "Address" }, url ? el("a", { href: url, rel: "noopener" }, url) : ""),
        el("td", { "data-label": "Version" }, version(production)),
        el("td", { "data-label": "Deployed" }, production ? ago(production.startedAt) : ""),
        el("td", { "data-label": "Error", class: "error" },
          firstLine(item.valid ? production && production.error : item.error)),
      ),
    );
  }
  $("#projects tbody").replaceChildren(...rows);
  $("#invalid").replaceChildren(...invalid);
}

// -- one project ------------------------------------------------------------------------------

let current = null;
let stream = null;
let logName = "build";

function closeStream() {
  if (stream) stream.close();
  stream = null;
}

function notice(text) {
  $("#notice").textContent = text || "";
  $("#notice").hidden = !text;
}

function writeFailed(error) {
  if (error.status === 401 || error.status === 403) {
    notice(`${error.message}: enter the API token above`);
  } else {
    notice(error.message);
  }
}

async function showProject(id) {
  current = id;
  $("#list-view").hidden = true;
  $("#project-view").hidden = false;
  $("#title").textContent = id;
  $("#progress").textContent = "";
  notice("");
  await refreshProject();
  await showLog(logName);
  const status = await api(`/api/projects/${encodeURIComponent(id)}/production`).catch(() => null);
  if (status && (status.status === "building" || status.status === "queued")) follow();
}

async function refreshProject() {
  const id = current;
  let status;
  try {
    status = await api(`/api/projects/${encodeURIComponent(id)}/production`);
  } catch (error) {
    $("#summary").textContent = error.message;
    return;
  }
  const [kind, words] = badge(status);
  const parts = [el("span", { class: `badge ${kind}`, id: "status" }, words), " "];
  if (status.url) parts.push(el("a", { href: status.url, rel: "noopener", id: "url" }, status.url), " ");
  if (status.hash) parts.push(el("span", { class: "muted" }, `version ${status.hash}`), " ");
  if (status.replicas) parts.push(el("span", { class: "muted", id: "replicas" }, `replicas ${status.replicas}`), " ");
  if (status.usage && status.usage.memory != null) {
    const cpu = status.usage.cpu != null ? `, cpu ${status.usage.cpu}%` : "";
    parts.push(el("span", { class: "muted", id: "usage" }, `memory ${Math.round(status.usage.memory / 1048576)} MiB${cpu}`), " ");
  }
  if (status.commit) {
    parts.push(el("span", { class: "muted" }, `commit ${status.commit.slice(0, 12)} ${status.subject || ""}`), " ");
  }
  if (status.startedAt) parts.push(el("span", { class: "muted" }, `since ${ago(status.startedAt)}`));
  if (status.app) parts.push(el("div", { class: "muted", id: "app" }, appLine(status.app)));
  if (status.error) parts.push(el("div", { class: "error", id: "status-error" }, status.error));
  if (status.note) parts.push(el("div", { class: "muted" }, status.note));
  $("#summary").replaceChildren(...parts);
  showNotifications();

  const history = await api(`/api/projects/${encodeURIComponent(id)}/production-history`).catch(() => ({ versions: [] }));
  $("#history tbody").replaceChildren(...history.versions.map((v) =>
    el("tr", { "data-version": v.hash },
      el("td", { "data-label": "Version" }, v.hash, v.isActive ? el("span", { class: "muted" }, " (active)") : null,
        v.previewUrl ? el("a", { class: "preview", href: v.previewUrl, target: "_blank", rel: "noopener" }, " preview") : null),
      el("td", { "data-label": "Commit" }, v.commit ? `${v.commit.slice(0, 12)} ${v.subject || ""}` : ""),
      el("td", { "data-label": "App" }, v.app ? `${v.app.kind} (${v.app.seen.join(", ")})` : "as written"),
      el("td", { "data-label": "Built" }, ago(v.createdAt)),
      el("td", {}, v.isActive ? "" : el("button", { class: "secondary rollback", onclick: () => rollback(v.hash) }, "Roll back")),
    )));
}

// how a version was found to build and start (its desired file named no commands)
function appLine(app) {
  const seen = app.seen.length ? ` from ${app.seen.join(", ")}` : "";
  const start = app.start ? `starts: ${app.start}`
    : app.kind === "docker" ? "the docker runtime: runs the image's command" : "a static site, served as files";
  const release = app.release ? `; release phase: ${app.release}` : "";
  return `detected ${app.kind}${seen}; ${start}${release}`;
}

async function showNotifications() {
  const id = current;
  const found = await api(`/api/projects/${encodeURIComponent(id)}/events?type=production.notification&limit=20`)
    .catch(() => ({ events: [] }));
  const items = found.events.map((e) =>
    el("li", { class: e.data.delivered ? "" : "error" }, `${ago(e.createdAt)}: ${e.data.message} (attempt ${e.data.attempt})`));
  $("#notifications").replaceChildren(...(items.length ? items : [el("li", {}, "none sent")]));
}

function line(text) {
  const pre = $("#progress");
  pre.append(`${text}\n`);
  pre.scrollTop = pre.scrollHeight;
}

const EVENTS = ["production.building", "production.starting", "production.ready", "production.error",
  "production.stopping", "production.stopped", "production.cancelled", "production.status",
  "production.waiting", "stream.end"];

function follow() {
  closeStream();
  const id = current;
  stream = new EventSource(`/api/projects/${encodeURIComponent(id)}/production-stream`);
  for (const type of EVENTS) {
    stream.addEventListener(type, (event) => {
      let data = {};
      try {
        data = JSON.parse(event.data);
      } catch {
        data = {};
      }
      if (type === "stream.end") {
        if (data.message) line(data.message);
        closeStream();
        refreshProject();
        showLog(logName);
        return;
      }
      if (type === "production.ready") line(`Ready: ${data.url || ""} (version ${data.hash || ""})`);
      else if (type === "production.error") line(`Failed: ${data.error || ""}`);
      else if (type === "production.status") line(`Status: ${data.status}`);
      else if (data.message) line(data.message);
      else line(type);
      if (type !== "production.building") refreshProject();
    });
  }
  stream.onerror = () => {
    if (stream && stream.readyState === EventSource.CLOSED) closeStream();
  };
}

async function deploy() {
  notice("");
  $("#progress").textContent = "";
  try {
    await api(`/api/projects/${encodeURIComponent(current)}/deploy`, { method: "POST", body: "{}" });
  } catch (error) {
    writeFailed(error);
    return;
  }
  line("Deploy requested");
  follow();
  refreshProject();
}

async function stop() {
  notice("");
  try {
    await api(`/api/projects/${encodeURIComponent(current)}/stop-production`, { method: "POST", body: "{}" });
  } catch (error) {
    writeFailed(error);
    return;
  }
  line("Stop requested");
  follow();
}

async function rollback(hash) {
  notice("");
  line(`Rolling back to ${hash}...`);
  let result;
  try {
    result = await api(`/api/projects/${encodeURIComponent(current)}/rollback-production`, {
      method: "POST", body: JSON.stringify({ toHash: hash }),
    });
  } catch (error) {
    writeFailed(error);
    return;
  }
  line(result.success ? result.message : `Rollback failed: ${result.error}`);
  refreshProject();
}

async function showLog(name) {
  logName = name;
  for (const tab of document.querySelectorAll(".tab")) tab.classList.toggle("active", tab.dataset.log === name);
  try {
    const log = await api(`/api/projects/${encodeURIComponent(current)}/production-logs?log=${name}&tail=200`);
    $("#log").textContent = log.text || `(no ${name} log yet)`;
  } catch (error) {
    $("#log").textContent = error.message;
  }
}

// -- the page ---------------------------------------------------------------------------------

async function daemonLine() {
  try {
    const health = await api("/healthz");
    $("#daemon").textContent = health.daemon ? `daemon ${health.daemon.message}` : "";
  } catch {
    $("#daemon").textContent = "API unreachable";
  }
}

function route() {
  // any name: the API checks project ids (404 for one that is not there); URLs encode it
  const match = location.hash.match(/^#\/p\/([^/]+)$/);
  if (match) showProject(match[1]);
  else showList();
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#token").value = token();
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("reconciler-token", $("#token").value.trim());
    notice("");
  });
  $("#deploy").addEventListener("click", deploy);
  $("#stop").addEventListener("click", stop);
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showLog(tab.dataset.log));
  route();
  daemonLine();
  setInterval(() => {
    daemonLine();
    if (!$("#list-view").hidden) showList();
    else if (!stream && current) refreshProject();
  }, 3000);
});
