// One project: its status and actions, its charts and deployment timeline, its versions,
// its settings (the desired file as text, its env), its logs.

import { charts } from "./charts.js";
import { begin, closeStream, follow, following, step } from "./progress.js";
import { $, $$, ago, api, button, confirmDialog, el, enc, firstLine, icon, notice, seconds, splitHint, writeFailed } from "./ui.js";
import { settingsTab } from "./settings.js";

let current = null;
let tab = "overview";
let logName = "build";

export function currentProject() {
  return current;
}

export function badge(production) {
  if (!production) return ["invalid", "invalid file"];
  const { status, url, hash } = production;
  if (status === "failed" && url) return ["degraded", `failed (${hash} still serving)`];
  if (status === "error") return ["error", "error (retrying)"];
  if (status === "sleeping") return ["sleeping", "sleeping"];
  return [status, status];
}

export async function showProject(id, which = "overview") {
  if (current !== id) {
    closeStream();
    $("#progress").replaceChildren();
    $("#progress").hidden = true;
  }
  current = id;
  tab = which;
  $("#project-title").textContent = id;
  for (const link of $$(".tabs a")) {
    link.href = `#/p/${enc(id)}/${link.dataset.tab}`;
    link.classList.toggle("active", link.dataset.tab === which);
    link.setAttribute("aria-selected", link.dataset.tab === which ? "true" : "false");
  }
  for (const panel of $$(".panel")) panel.hidden = panel.id !== `tab-${which}`;
  await refreshProject();
  if (which === "overview") await overview();
  else if (which === "versions") await versions();
  else if (which === "settings") await settingsTab(id);
  else if (which === "logs") await showLog(logName);
}

export async function refreshProject() {
  const id = current;
  let status;
  try {
    status = await api(`/api/projects/${enc(id)}/production`);
  } catch (error) {
    $("#summary").replaceChildren(el("p", { class: "error" }, error.message));
    return null;
  }
  const [kind, words] = badge(status);
  const facts = [];
  if (status.url) facts.push(el("a", { href: status.url, rel: "noopener", id: "url", class: "url" }, icon("link"), status.url));
  if (status.hash) facts.push(el("span", { id: "version" }, `version ${status.hash}`));
  if (status.commit) facts.push(el("span", {}, `commit ${status.commit.slice(0, 12)} ${status.subject || ""}`));
  if (status.replicas) facts.push(el("span", { id: "replicas" }, `replicas ${status.replicas}`));
  if (status.usage && status.usage.memory != null) {
    const cpu = status.usage.cpu != null ? `, CPU ${status.usage.cpu}%` : "";
    facts.push(el("span", { id: "usage" }, `${Math.round(status.usage.memory / 1048576)} MiB${cpu}`));
  }
  if (status.startedAt) facts.push(el("span", {}, `live since ${ago(status.startedAt)}`));
  for (const kept of status.standby || []) {
    const memory = kept.memory != null ? `, ${Math.round(kept.memory / 1048576)} MiB` : "";
    facts.push(el("span", { class: "standby", title: "kept running for an instant rollback (rollback.window)" },
      `standby ${kept.hash}${memory}`));
  }
  const parts = [el("div", { class: "facts" }, el("span", { class: `badge ${kind}`, id: "status" }, words), ...facts)];
  if (status.pinned) {
    parts.push(el("div", { class: "banner", id: "pinned" },
      el("span", {}, `Pinned to ${status.pinned} (not following): new builds and commits do not go live.`),
      button("Unpin", { class: "secondary small", id: "unpin", onclick: unpin }, "undo")));
  }
  if (status.app) parts.push(el("div", { class: "muted", id: "app" }, appLine(status.app)));
  if (status.error) {
    const [message, hint] = splitHint(status.error);
    parts.push(el("div", { class: "error-box", id: "status-error" }, el("div", {}, message),
      hint ? el("div", { class: "hint" }, hint) : null));
  }
  if (status.note) parts.push(el("div", { class: "muted" }, status.note));
  $("#summary").replaceChildren(...parts);
  const running = ["running", "queued", "building", "sleeping"].includes(status.status) || status.status === "failed" && status.url;
  $("#start").hidden = running;
  $("#stop").hidden = !running;
  return status;
}

// how a version was found to build and start (its desired file named no commands)
export function appLine(app) {
  const seen = app.seen.length ? ` from ${app.seen.join(", ")}` : "";
  const start = app.start ? `starts: ${app.start}`
    : app.kind === "docker" ? "the docker runtime: runs the image's command" : "a static site, served as files";
  const release = app.release ? `; release phase: ${app.release}` : "";
  return `detected ${app.kind}${seen}; ${start}${release}`;
}

// -- overview: charts, the deployment timeline, notifications -------------------------------

async function overview() {
  const id = current;
  const [series, timeline] = await Promise.all([
    api(`/api/projects/${enc(id)}/series`).catch(() => null),
    api(`/api/projects/${enc(id)}/deployments?limit=15`).catch(() => ({ deployments: [] })),
  ]);
  if (id !== current) return;
  $("#charts").replaceChildren(...(series ? charts(series) : []));
  const items = timeline.deployments.map(deployment);
  $("#timeline").replaceChildren(...(items.length ? items
    : [el("li", { class: "empty" }, "No deployment yet: Deploy builds the source and puts it live.")]));
  showNotifications();
}

const PHASE_WORDS = { build: "build", stage: "stage", start: "start", ready: "ready", switch: "switch", stop: "stop" };

function deployment(d) {
  const total = d.phases.reduce((sum, p) => sum + p.seconds, 0) || 1;
  const bar = el("div", { class: "phases", role: "img",
    "aria-label": d.phases.map((p) => `${p.name} ${seconds(p.seconds)}`).join(", ") || "no phase" });
  for (const phase of d.phases) {
    const part = el("span", { class: `phase ${phase.name} ${phase.state}`, title: `${phase.name}: ${seconds(phase.seconds)}` });
    part.style.flexGrow = String(Math.max(phase.seconds / total, 0.04));
    bar.append(part);
  }
  const legend = el("ul", { class: "legend" }, ...d.phases.map((p) =>
    el("li", { class: p.state === "failed" ? "failed" : "" }, el("i", { class: `dot ${p.name}` }),
      `${PHASE_WORDS[p.name] || p.name} ${seconds(p.seconds)}`)));
  const [message] = splitHint(d.error);
  return el("li", { class: `deployment ${d.state}`, "data-deployment": String(d.id) },
    el("div", { class: "row" },
      el("span", { class: `badge ${d.state}` }, d.state),
      el("strong", {}, d.kind),
      d.version ? el("code", {}, d.version) : null,
      d.commit ? el("span", { class: "muted commit" }, `${d.commit.slice(0, 12)} ${d.subject || ""}`) : null,
      el("span", { class: "muted trigger" }, d.trigger || ""),
      el("span", { class: "muted right" }, `${ago(d.createdAt)}${d.seconds != null ? ` · ${seconds(d.seconds)}` : ""}`)),
    d.phases.length ? bar : null,
    d.phases.length ? legend : null,
    message ? el("div", { class: "error" }, firstLine(message)) : null);
}

async function showNotifications() {
  const id = current;
  const found = await api(`/api/projects/${enc(id)}/events?type=production.notification&limit=20`)
    .catch(() => ({ events: [] }));
  const items = found.events.map((e) =>
    el("li", { class: e.data.delivered ? "" : "error" }, `${ago(e.createdAt)}: ${e.data.message} (attempt ${e.data.attempt})`));
  $("#notifications").replaceChildren(...(items.length ? items : [el("li", { class: "empty" }, "None sent.")]));
}

// -- versions ----------------------------------------------------------------------------------

async function versions() {
  const id = current;
  const history = await api(`/api/projects/${enc(id)}/production-history`).catch(() => ({ versions: [] }));
  if (id !== current) return;
  const rows = history.versions.map((v) => {
    const served = v.served
      ? el("span", { class: "badge running" }, "served")
      : el("span", { class: "badge failed", title: v.failure || "never started" }, "never served");
    return el("tr", { "data-version": v.hash, class: v.served ? "" : "unserved" },
      el("td", { "data-label": "Version" }, el("code", {}, v.hash), v.isActive ? el("span", { class: "muted" }, " (active)") : null,
        v.previewUrl ? el("a", { class: "preview", href: v.previewUrl, target: "_blank", rel: "noopener" }, " preview") : null),
      el("td", { "data-label": "Went live" }, served,
        !v.served && v.failure ? el("div", { class: "error small" }, firstLine(v.failure)) : null),
      v.commit ? el("td", { "data-label": "Commit" }, `${v.commit.slice(0, 12)} ${v.subject || ""}`) : el("td", { class: "blank" }),
      el("td", { "data-label": "App" }, v.app ? `${v.app.kind} (${v.app.seen.join(", ")})` : "as written"),
      el("td", { "data-label": "Built" }, ago(v.createdAt)),
      el("td", { class: "actions" }, v.isActive ? null
        : button("Roll back", { class: "secondary small rollback", onclick: () => rollback(v) }, "undo")),
    );
  });
  $("#history tbody").replaceChildren(...rows);
  $("#history-empty").hidden = rows.length > 0;
}

// -- actions -----------------------------------------------------------------------------------

function changed(done) {
  refreshProject();
  if (done && tab === "overview") overview();
  if (done && tab === "versions") versions();
  if (done && tab === "logs") showLog(logName);
}

async function act(path, title, confirmText = null) {
  notice("");
  if (confirmText && !(await confirmDialog(confirmText))) return;
  try {
    await api(`/api/projects/${enc(current)}/${path}`, { method: "POST", json: {} });
  } catch (error) {
    writeFailed(error);
    return;
  }
  begin(title);
  step("Asked", `${title} of ${current}`);
  follow(current, changed);
  refreshProject();
}

export function deploy() {
  return act("deploy", "Deploy");
}

export function start() {
  return act("start", "Start");
}

export function stop() {
  return act("stop-production", "Stop", {
    title: `Stop ${current}?`,
    text: "Its site stops answering until it is started again. The version is kept.",
    action: "Stop", danger: true,
  });
}

async function unpin() {
  try {
    await api(`/api/projects/${enc(current)}/unpin`, { method: "POST", json: {} });
    notice(`${current} follows the latest version again`, "ok");
  } catch (error) {
    writeFailed(error);
  }
  refreshProject();
}

async function rollback(version) {
  notice("");
  const warning = version.served ? null
    : `This version never served${version.failure ? `: ${firstLine(version.failure)}` : " (it was never started)"}.`;
  const ok = await confirmDialog({
    title: `Roll back ${current} to ${version.hash}?`,
    text: warning ? `${warning} Rolling back to it will probably fail; the version serving now keeps serving if it does.`
      : "It goes live at once, and stays pinned (not following) until you unpin it.",
    action: warning ? "Roll back anyway" : "Roll back",
    danger: Boolean(warning),
  });
  if (!ok) return;
  begin(`Roll back to ${version.hash}`);
  step("Asked", `pin ${version.hash} and wait until it serves`);
  let result;
  try {
    result = await api(`/api/projects/${enc(current)}/rollback-production`, {
      method: "POST", json: { toHash: version.hash, force: !version.served },
    });
  } catch (error) {
    step("Failed", error.message, "failed");
    writeFailed(error);
    return;
  }
  if (result.success) step("Live", result.message, "done");
  else step("Failed", result.error, "failed");
  changed(true);
}

export async function remove() {
  const ok = await confirmDialog({
    title: `Delete ${current}?`,
    text: "Its desired file is deleted: the site stops and the project leaves this list. Its kept versions stay on disk until pruned.",
    action: "Delete project", danger: true,
  });
  if (!ok) return;
  try {
    await api(`/api/projects/${enc(current)}`, { method: "DELETE" });
  } catch (error) {
    writeFailed(error);
    return;
  }
  notice(`${current} was deleted`, "ok");
  location.hash = "#/";
}

// -- logs --------------------------------------------------------------------------------------

export async function showLog(name) {
  logName = name;
  for (const link of $$(".log-tab")) link.classList.toggle("active", link.dataset.log === name);
  try {
    const log = await api(`/api/projects/${enc(current)}/production-logs?log=${name}&tail=300`);
    $("#log").textContent = log.text || `(no ${name} log yet)`;
  } catch (error) {
    $("#log").textContent = error.message;
  }
}

export function refreshOpen() {
  if (!current || following()) return;
  refreshProject();
  if (tab === "overview") overview();
}
