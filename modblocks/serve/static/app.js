// The served page: submits the form to `runs`, follows the run's server-sent events (read with
// fetch, so that a bearer token can go in a header), shows steps and previews, cancels, and
// adds each finished run's images to the gallery. Paths are relative to the page.
"use strict";

const form = document.getElementById("run-form");
const statusLine = document.getElementById("status");
const progress = document.getElementById("progress");
const blockLine = document.getElementById("block");
const previewImage = document.getElementById("preview");
const errorBox = document.getElementById("error");
const gallery = document.getElementById("gallery");
const cancelButton = document.getElementById("cancel");
let current = null;

function headers() {
  const token = document.getElementById("token");
  return token && token.value ? { Authorization: `Bearer ${token.value}` } : {};
}

function setStatus(text, status) {
  statusLine.textContent = text;
  statusLine.dataset.status = status;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function summary(data) {
  const parts = [];
  for (const [name, value] of data.entries()) {
    if (typeof value === "string" && value !== "") parts.push(`${name}=${value}`);
  }
  return parts.join(" ");
}

async function start(event) {
  event.preventDefault();
  showError("");
  // A new run starts from nothing: the last one's progress and id no longer apply.
  current = null;
  cancelButton.disabled = true;
  progress.value = 0;
  progress.max = 1;
  const data = new FormData(form);
  for (const [name, value] of [...data.entries()]) {
    if (value instanceof File && value.size === 0) data.delete(name);
  }
  const every = document.getElementById("preview-every").value || "0";
  setStatus("submitting", "submitting");
  let response;
  try {
    response = await fetch(`runs?preview_every=${encodeURIComponent(every)}`, {
      method: "POST", body: data, headers: headers(),
    });
  } catch (error) {
    setStatus("failed", "failed");
    showError(String(error));
    return;
  }
  const body = await response.json();
  if (!response.ok) {
    setStatus(`refused (${response.status})`, "refused");
    showError(typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail));
    return;
  }
  current = body.id;
  cancelButton.disabled = false;
  progress.value = 0;
  progress.max = 1;
  setStatus("queued", "queued");
  follow(body.id, summary(data));
}

function handle(id, type, message, caption) {
  if (id !== current && type !== "done") return;
  if (type === "status") {
    setStatus(message.status, message.status);
  } else if (type === "block") {
    blockLine.textContent = message.path;
  } else if (type === "cached") {
    blockLine.textContent = `${message.path} (from the cache)`;
  } else if (type === "step") {
    progress.max = message.total;
    progress.value = message.index;
    setStatus(`step ${message.index} of ${message.total}`, "running");
    blockLine.textContent = message.path;
  } else if (type === "preview") {
    previewImage.src = `data:image/png;base64,${message.png}`;
    previewImage.hidden = false;
    document.body.dataset.previews = String(Number(document.body.dataset.previews) + 1);
  } else if (type === "done") {
    finish(id, message, caption);
  }
}

function finish(id, run, caption) {
  if (id === current) {
    cancelButton.disabled = true;
    setStatus(run.status, run.status);
  }
  if (run.status === "succeeded") {
    if (id === current) progress.value = progress.max;
    for (const [name, value] of Object.entries(run.result.outputs)) {
      const images = Array.isArray(value) ? value : [value];
      for (const png of images) {
        if (typeof png !== "string" || !png.startsWith("iVBOR")) continue;  // a PNG's base64
        const figure = document.createElement("figure");
        const image = document.createElement("img");
        image.src = `data:image/png;base64,${png}`;
        image.alt = name;
        image.className = "result";
        const text = document.createElement("figcaption");
        text.textContent = caption;
        figure.append(image, text);
        gallery.prepend(figure);
      }
    }
  } else if (run.status === "failed" && id === current) {
    showError(run.error ? run.error.message : "the run failed");
  }
}

async function follow(id, caption) {
  const response = await fetch(`runs/${id}/events`, { headers: headers() });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let type = "message";
      let data = "";
      for (const line of chunk.split("\n")) {
        if (line.startsWith("event: ")) type = line.slice(7);
        else if (line.startsWith("data: ")) data += line.slice(6);
      }
      handle(id, type, JSON.parse(data), caption);
    }
  }
}

cancelButton.addEventListener("click", async () => {
  if (!current) return;
  setStatus("cancelling", "cancelling");
  await fetch(`runs/${current}`, { method: "DELETE", headers: headers() });
});
form.addEventListener("submit", start);
