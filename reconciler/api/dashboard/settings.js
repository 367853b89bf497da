// A project's settings: its desired file as text and its env as rows. Every save shows the
// diff first (a dry run of the same request), then writes the file (a commit in desired-git
// mode). A secret's value is never shown: an env row refers to it by name.

import { $, api, button, el, enc, notice, writeFailed } from "./ui.js";

let project = null;
let pending = null; // what Save sends: {path, body}
let loaded = null; // the digest of the file's text as loaded: a file saved since is refused

export function diffView(text) {
  if (!text) return el("p", { class: "muted" }, "No change.");
  const lines = text.split("\n").filter((line) => line !== "");
  return el("pre", { class: "diff" }, ...lines.map((line) => {
    const kind = line.startsWith("+++") || line.startsWith("---") ? "file"
      : line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "";
    return el("span", { class: kind }, `${line}\n`);
  }));
}

export async function settingsTab(id) {
  project = id;
  pending = null;
  $("#review").replaceChildren();
  $("#save-settings").disabled = true;
  let file;
  try {
    file = await api(`/api/projects/${enc(id)}/desired`);
  } catch (error) {
    writeFailed(error);
    return;
  }
  $("#editor").value = file.text;
  loaded = file.digest;
  $("#editor").readOnly = file.derived;
  $("#settings-file").textContent = file.derived
    ? `${file.file}: a branch preview's file, written by the daemon (read only)` : file.file;
  $("#settings-error").textContent = file.error || "";
  $("#settings-error").hidden = !file.error;
  envRows(parseEnv(file.text));
}

// the env block of a file as rows, read from the text (a row per NAME: value or {secret})
function parseEnv(text) {
  const rows = [];
  const lines = text.split("\n");
  const start = lines.findIndex((line) => /^env:\s*(#.*)?$/.test(line));
  if (start < 0) return rows;
  for (let i = start + 1; i < lines.length; i += 1) {
    const line = lines[i];
    if (line.trim() === "" || line.trim().startsWith("#")) continue;
    if (!/^\s/.test(line)) break;
    const entry = line.match(/^\s+([A-Za-z_][A-Za-z0-9_]*):\s*(.*)$/);
    if (!entry) continue;
    let value = entry[2];
    const flow = value.match(/^\{\s*secret:\s*([^}\s]+)\s*\}$/);
    if (flow) {
      rows.push({ name: entry[1], value: flow[1], secret: true });
      continue;
    }
    if (value === "" && lines[i + 1]) {
      const block = lines[i + 1].match(/^\s+secret:\s*(\S+)/);
      if (block) {
        rows.push({ name: entry[1], value: block[1], secret: true });
        i += 1;
        continue;
      }
    }
    value = value.replace(/\s+#.*$/, "");
    if (/^".*"$/.test(value)) {
      try { value = JSON.parse(value); } catch { /* kept as written */ }
    } else if (/^'.*'$/.test(value)) value = value.slice(1, -1).replace(/''/g, "'");
    rows.push({ name: entry[1], value, secret: false });
  }
  return rows;
}

function envRow(row = { name: "", value: "", secret: false }) {
  const secret = el("input", { type: "checkbox", class: "env-secret", "aria-label": "a secret" });
  secret.checked = row.secret;
  const value = el("input", { class: "env-value", value: row.value, "aria-label": "value",
    placeholder: row.secret ? "secret name" : "value" });
  secret.addEventListener("change", () => {
    value.placeholder = secret.checked ? "secret name" : "value";
  });
  const item = el("li", { class: "env-row" },
    el("input", { class: "env-name", value: row.name, "aria-label": "name", placeholder: "NAME" }),
    value,
    el("label", { class: "check" }, secret, "secret"),
    button("Remove", { class: "secondary small", onclick: () => item.remove() }, "trash"));
  return item;
}

function envRows(rows) {
  $("#env").replaceChildren(...rows.map(envRow));
}

export function addEnvRow() {
  $("#env").append(envRow());
}

function envBody() {
  const env = {};
  for (const row of document.querySelectorAll("#env .env-row")) {
    const name = row.querySelector(".env-name").value.trim();
    if (!name) continue;
    const value = row.querySelector(".env-value").value;
    env[name] = row.querySelector(".env-secret").checked ? { secret: value.trim() } : value;
  }
  return { env };
}

async function review(path, body) {
  notice("");
  let answer;
  try {
    answer = await api(path, { method: "PUT", json: { ...body, dryRun: true } });
  } catch (error) {
    $("#review").replaceChildren(el("p", { class: "error-box" }, error.message));
    $("#save-settings").disabled = true;
    if (error.status === 401 || error.status === 403) writeFailed(error);
    return;
  }
  pending = answer.diff ? { path, body } : null;
  $("#review").replaceChildren(el("h3", {}, "Changes to ", el("code", {}, answer.file)), diffView(answer.diff));
  $("#save-settings").disabled = !pending;
}

export function reviewText() {
  return review(`/api/projects/${enc(project)}/desired`, { text: $("#editor").value, base: loaded });
}

export function reviewEnv() {
  return review(`/api/projects/${enc(project)}/env`, envBody());
}

export async function save() {
  if (!pending) return;
  try {
    const answer = await api(pending.path, { method: "PUT", json: pending.body });
    notice(answer.saved ? `Saved ${answer.file}: the daemon applies it now` : "Nothing to save", "ok");
  } catch (error) {
    writeFailed(error);
    return;
  }
  await settingsTab(project);
}
