// The progress box: one block per operation (deploy, start, stop, rollback), its steps in an
// operator's words as they arrive from the event stream, an error kept apart from its hint.

import { $, el, enc, splitHint } from "./ui.js";

const STEPS = {
  "production.building": "Build",
  "production.starting": "Start",
  "production.ready": "Live",
  "production.error": "Failed",
  "production.stopping": "Stopping",
  "production.stopped": "Stopped",
  "production.cancelled": "Cancelled",
  "production.status": "Status",
  "production.waiting": "Waiting",
};
const EVENTS = [...Object.keys(STEPS), "stream.end"];

let stream = null;
let block = null;

export function closeStream() {
  if (stream) stream.close();
  stream = null;
}

export function following() {
  return stream !== null;
}

// a new block for an operation: its title and the time it was asked
export function begin(title) {
  const box = $("#progress");
  box.hidden = false;
  const time = new Date().toLocaleTimeString();
  block = el("section", { class: "op", "aria-live": "polite" },
    el("h3", {}, el("span", {}, title), el("time", {}, time)),
    el("ol", { class: "steps" }));
  box.prepend(block);
  while (box.children.length > 4) box.lastElementChild.remove();
  return block;
}

export function step(kind, text, state = "") {
  if (!block) begin("Activity");
  const [message, hint] = splitHint(text);
  const item = el("li", { class: `step ${state}` },
    el("span", { class: "step-kind" }, kind), el("span", { class: "step-text" }, message));
  if (hint) item.append(el("div", { class: "hint" }, hint));
  $("ol", block).append(item);
  block.classList.toggle("failed", state === "failed" || block.classList.contains("failed"));
  block.classList.toggle("done", state === "done");
}

// follow the project's event stream until it ends; ``changed`` hears each event
export function follow(project, changed) {
  closeStream();
  stream = new EventSource(`/api/projects/${enc(project)}/production-stream`);
  for (const type of EVENTS) {
    stream.addEventListener(type, (event) => {
      let data = {};
      try {
        data = JSON.parse(event.data);
      } catch {
        data = {};
      }
      if (type === "stream.end") {
        if (data.message) step("Waiting", data.message);
        closeStream();
        changed(true);
        return;
      }
      const kind = STEPS[type];
      if (type === "production.ready") step(kind, `${data.url || ""} (version ${data.hash || ""})`, "done");
      else if (type === "production.error") step(kind, data.error || "", "failed");
      else if (type === "production.stopped") step(kind, "nothing runs now; the version is kept", "done");
      else if (type === "production.status") step(kind, data.status || "");
      else step(kind, data.message || "");
      if (type !== "production.building") changed(false);
    });
  }
  stream.onerror = () => {
    if (stream && stream.readyState === EventSource.CLOSED) closeStream();
  };
}
