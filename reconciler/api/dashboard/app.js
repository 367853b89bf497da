// The dashboard: plain browser JavaScript modules over the JSON API, nothing loaded from
// elsewhere, no build step. Routes: #/ (projects), #/p/ID[/tab], #/new, #/secrets. Every value
// from the API is put in the page as text (never as HTML). Writes carry the API token, when
// one is entered, in the Authorization header; it is kept for this tab only (sessionStorage),
// never in a URL or a cookie.

import { badge, currentProject, deploy, refreshOpen, remove, showLog, showProject, start, stop } from "./project.js";
import { closeStream } from "./progress.js";
import { addEnvRow, diffView, reviewEnv, reviewText, save } from "./settings.js";
import { $, $$, ago, api, button, confirmDialog, el, enc, firstLine, notice, writeFailed } from "./ui.js";

function show(view) {
  for (const section of $$("main > .view")) section.hidden = section.id !== view;
}

// -- projects ----------------------------------------------------------------------------------

function version(production) {
  if (!production || !production.hash) return "";
  const commit = production.commit ? ` · ${production.commit.slice(0, 12)}` : "";
  const replicas = production.replicas ? ` · ${production.replicas}` : "";
  return `${production.hash}${commit}${replicas}`;
}

let listing = null;

async function showList() {
  show("list-view");
  closeStream();
  try {
    listing = await api("/api/projects");
    $("#list-error").hidden = true;
  } catch (error) {
    $("#list-error").textContent = `Cannot read the projects: ${error.message}`;
    $("#list-error").hidden = false;
    return;
  }
  const chosen = new Set($$("#projects tbody input:checked").map((box) => box.value));
  const rows = [];
  const invalid = [];
  for (const item of listing.projects) {
    if (item.id === null) {
      invalid.push(el("li", { class: "error" }, item.error || `${item.file}: invalid`));
      continue;
    }
    const production = item.production;
    const [kind, words] = item.valid ? badge(production) : ["invalid", "invalid file"];
    const url = production && production.url;
    const error = firstLine(item.valid ? production && production.error : item.error);
    const box = el("input", { type: "checkbox", value: item.id, "aria-label": `select ${item.id}`, onchange: bulkBar });
    box.checked = chosen.has(item.id);
    rows.push(el("tr", { "data-project": item.id },
      el("td", { class: "pick" }, box),
      el("td", { class: "name" }, el("a", { href: `#/p/${enc(item.id)}` }, item.id)),
      el("td", { "data-label": "Status" }, el("span", { class: `badge ${kind}` }, words),
        production && production.pinned ? el("span", { class: "badge pinned", title: "pinned: not following" }, "pinned") : null),
      url ? el("td", { "data-label": "Address" }, el("a", { href: url, rel: "noopener" }, url)) : el("td", { class: "blank" }),
      production && production.hash ? el("td", { "data-label": "Version" }, version(production)) : el("td", { class: "blank" }),
      production && production.startedAt ? el("td", { "data-label": "Live since" }, ago(production.startedAt)) : el("td", { class: "blank" }),
      error ? el("td", { class: "error" }, error) : el("td", { class: "blank" }),
    ));
  }
  $("#projects tbody").replaceChildren(...rows);
  $("#projects").hidden = rows.length === 0;
  $("#list-empty").hidden = rows.length > 0;
  $("#invalid").replaceChildren(...invalid);
  const counts = {};
  for (const item of listing.projects) {
    const status = item.valid && item.production ? item.production.status : "invalid";
    counts[status] = (counts[status] || 0) + 1;
  }
  $("#counts").textContent = Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(" · ");
  bulkBar();
}

function chosenIds() {
  return $$("#projects tbody input:checked").map((box) => box.value);
}

function bulkBar() {
  const ids = chosenIds();
  $("#bulk").hidden = ids.length === 0;
  $("#bulk-count").textContent = `${ids.length} selected`;
}

async function bulk(action) {
  const ids = chosenIds();
  if (!ids.length) return;
  if (action === "stop" && !(await confirmDialog({
    title: `Stop ${ids.length} project${ids.length === 1 ? "" : "s"}?`,
    text: "Their sites stop answering until they are started again. Their versions are kept.",
    details: ids.join(", "), action: "Stop", danger: true,
  }))) return;
  try {
    const answer = await api(`/api/actions/${action}`, { method: "POST", json: { projects: ids } });
    const failed = answer.results.filter((r) => r.error);
    notice(failed.length ? `${action}: ${failed.map((r) => `${r.id}: ${r.error}`).join("; ")}`
      : `${action}: asked for ${ids.length} project${ids.length === 1 ? "" : "s"}`, failed.length ? "error" : "ok");
  } catch (error) {
    writeFailed(error);
  }
  for (const box of $$("#projects tbody input:checked")) box.checked = false;
  showList();
}

// -- a new project -----------------------------------------------------------------------------

let draft = null;

function showNew() {
  show("new-view");
  closeStream();
  $("#new-review").replaceChildren();
  $("#new-create").disabled = true;
}

async function workOut(event) {
  event.preventDefault();
  notice("");
  const body = { id: $("#new-id").value.trim(), source: $("#new-source").value.trim() };
  if ($("#new-ref").value.trim()) body.ref = $("#new-ref").value.trim();
  try {
    draft = await api("/api/drafts", { method: "POST", json: body });
  } catch (error) {
    $("#new-found").replaceChildren(el("p", { class: "error-box" }, error.message));
    return;
  }
  const found = draft.detected;
  $("#new-found").replaceChildren(found
    ? el("dl", { class: "found" },
      el("dt", {}, "App"), el("dd", {}, `${found.kind} (from ${(found.seen || []).join(", ") || "its files"})`),
      el("dt", {}, "Runtime"), el("dd", {}, found.runtime),
      el("dt", {}, "Build"), el("dd", {}, found.build || "none: the files are used as they are"),
      el("dt", {}, "Start"), el("dd", {}, found.start || "none: a static site, served by the edge"))
    : el("p", { class: "muted" }, "A git source: the daemon works out the build from the checkout at the first deploy."));
  $("#new-text").value = draft.text;
  $("#new-edit").hidden = false;
  $("#new-review").replaceChildren();
  $("#new-create").disabled = true;
}

function withDomains(text) {
  const domains = $("#new-domains").value.split(/[\s,]+/).filter(Boolean);
  if (!domains.length || /^domains:/m.test(text)) return text;
  return `${text.replace(/\n*$/, "\n")}domains: [${domains.join(", ")}]\n`;
}

async function reviewNew() {
  const text = withDomains($("#new-text").value);
  try {
    const answer = await api("/api/projects", { method: "POST", json: { id: draft.id, text, dryRun: true } });
    $("#new-review").replaceChildren(el("h3", {}, "New file ", el("code", {}, answer.file)), diffView(answer.diff));
    $("#new-create").disabled = false;
  } catch (error) {
    $("#new-review").replaceChildren(el("p", { class: "error-box" }, error.message));
    $("#new-create").disabled = true;
  }
}

async function createNew() {
  const text = withDomains($("#new-text").value);
  try {
    await api("/api/projects", { method: "POST", json: { id: draft.id, text } });
    if ($("#new-deploy").checked) {
      await api(`/api/projects/${enc(draft.id)}/deploy`, { method: "POST", json: {} });
    }
  } catch (error) {
    writeFailed(error);
    return;
  }
  notice(`Created ${draft.id}${$("#new-deploy").checked ? ": deploying" : ""}`, "ok");
  location.hash = `#/p/${enc(draft.id)}`;
}

// -- secrets -----------------------------------------------------------------------------------

async function showSecrets() {
  show("secrets-view");
  closeStream();
  let found;
  try {
    found = await api("/api/secrets");
  } catch (error) {
    writeFailed(error);
    $("#secrets tbody").replaceChildren();
    return;
  }
  const rows = found.secrets.map((s) => el("tr", { "data-secret": s.name },
    el("td", { class: "name" }, el("code", {}, s.name)),
    el("td", { "data-label": "Value" }, s.revision ? el("span", { class: "masked" }, "••••••••") : el("span", { class: "badge failed" }, "not set")),
    el("td", { "data-label": "Used by" }, s.usedBy.length ? s.usedBy.join(", ") : el("span", { class: "muted" }, "nothing")),
    el("td", { "data-label": "Set" }, s.updatedAt ? ago(s.updatedAt) : "–"),
    el("td", { class: "actions" }, s.revision ? button("Delete", { class: "secondary small", onclick: () => deleteSecret(s) }, "trash") : null),
  ));
  $("#secrets tbody").replaceChildren(...rows);
  $("#secrets").hidden = rows.length === 0;
  $("#secrets-empty").hidden = rows.length > 0;
}

async function setSecret(event) {
  event.preventDefault();
  const name = $("#secret-name").value.trim();
  try {
    const answer = await api(`/api/secrets/${enc(name)}`, { method: "PUT", json: { value: $("#secret-value").value } });
    notice(answer.changed ? `${name} set: the projects that use it restart with it` : `${name}: unchanged`, "ok");
    $("#secret-value").value = "";
  } catch (error) {
    writeFailed(error);
  }
  showSecrets();
}

async function deleteSecret(secret) {
  const used = secret.usedBy.length ? ` ${secret.usedBy.join(", ")} refer${secret.usedBy.length === 1 ? "s" : ""} to it: their next start fails until it is set again.` : "";
  if (!(await confirmDialog({ title: `Delete secret ${secret.name}?`, text: `Its value is gone for good.${used}`, action: "Delete", danger: true }))) return;
  try {
    await api(`/api/secrets/${enc(secret.name)}`, { method: "DELETE" });
  } catch (error) {
    writeFailed(error);
  }
  showSecrets();
}

// -- the page ----------------------------------------------------------------------------------

async function daemonLine() {
  try {
    const health = await api("/healthz");
    const up = health.daemon && health.daemon.running;
    $("#daemon").className = `pill ${up ? "ok" : "bad"}`;
    $("#daemon").textContent = health.daemon ? `daemon ${up ? "running" : "not running"}` : "";
    $("#daemon").title = health.daemon ? health.daemon.message : "";
  } catch {
    $("#daemon").className = "pill bad";
    $("#daemon").textContent = "API unreachable";
  }
}

function route() {
  notice("");
  const match = location.hash.match(/^#\/p\/([^/]+)(?:\/(overview|versions|settings|logs))?$/);
  if (match) {
    show("project-view");
    showProject(decodeURIComponent(match[1]), match[2] || "overview");
  } else if (location.hash === "#/new") showNew();
  else if (location.hash === "#/secrets") showSecrets();
  else showList();
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", () => {
  $("#token").value = sessionStorage.getItem("reconciler-token") || "";
  $("#token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem("reconciler-token", $("#token").value.trim());
    notice("Token in use for this tab", "ok");
  });
  $("#deploy").addEventListener("click", deploy);
  $("#start").addEventListener("click", start);
  $("#stop").addEventListener("click", stop);
  $("#delete").addEventListener("click", remove);
  for (const action of ["deploy", "start", "stop"]) $(`#bulk-${action}`).addEventListener("click", () => bulk(action));
  $("#select-all").addEventListener("change", (event) => {
    for (const box of $$("#projects tbody input[type=checkbox]")) box.checked = event.target.checked;
    bulkBar();
  });
  for (const link of $$(".log-tab")) link.addEventListener("click", () => showLog(link.dataset.log));
  $("#review-text").addEventListener("click", reviewText);
  $("#review-env").addEventListener("click", reviewEnv);
  $("#add-env").addEventListener("click", addEnvRow);
  $("#save-settings").addEventListener("click", save);
  $("#new-form").addEventListener("submit", workOut);
  $("#new-review-button").addEventListener("click", reviewNew);
  $("#new-create").addEventListener("click", createNew);
  $("#secret-form").addEventListener("submit", setSecret);
  route();
  daemonLine();
  setInterval(() => {
    daemonLine();
    if (!$("#list-view").hidden) showList();
    else if (!$("#project-view").hidden && currentProject()) refreshOpen();
  }, 3000);
});
