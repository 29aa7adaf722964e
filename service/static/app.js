// The hypergen page: make an adapter from a description, then run a prompt with and without it.
// Plain JavaScript, no build step; it only calls the public JSON API.
"use strict";

const $ = (id) => document.getElementById(id);
let adapterId = null;
let baseModel = "base";

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h["Authorization"] = "Bearer " + key;
  return h;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function api(method, path, body) {
  const response = await fetch(path, {
    method,
    headers: headers(),
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = (data.error && data.error.message) || response.statusText;
    throw new Error(`${response.status}: ${message}`);
  }
  return data;
}

async function loadStatus() {
  try {
    const health = await api("GET", "/healthz");
    baseModel = health.base_model;
    const ck = health.checkpoint;
    $("status").textContent =
      `Base model ${health.base_model_id} \u00b7 checkpoint ${ck.name} ` +
      `(${ck.untrained ? "UNTRAINED" : ck.trained_steps + " training steps"}) \u00b7 ` +
      `LoRA rank ${health.lora.rank} on ${health.lora.target_modules.join(", ")}`;
    if (health.untrained) {
      $("untrained").textContent =
        "This server runs an UNTRAINED hypernetwork: every adapter it makes is a no-op, " +
        "so both columns below will match until a trained checkpoint is installed.";
      $("untrained").hidden = false;
    }
  } catch (err) {
    $("status").textContent = "Server not ready: " + err.message;
  }
}

async function makeAdapter() {
  showError("");
  const description = $("description").value;
  $("generate").disabled = true;
  try {
    const adapter = await api("POST", "/v1/adapters", { description });
    adapterId = adapter.id;
    $("adapter-id").textContent = adapter.id;
    $("adapter-source").textContent = adapter.untrained ? "(untrained: a no-op)" : "";
    const lora = adapter.lora;
    $("adapter-meta").textContent =
      `LoRA r=${lora.rank}, alpha=${lora.alpha}, ${lora.target_modules.join("+")}, ${lora.dtype}, ` +
      `${(adapter.size_bytes / 1024).toFixed(0)} KiB \u00b7 for ${adapter.base_model_id}`;
    $("download").href = adapter.download_url;
    $("download").setAttribute("download", `hypergen-${adapter.id.slice(0, 16)}.zip`);
    $("adapter").hidden = false;
    $("run").disabled = false;
  } catch (err) {
    showError(err.message);
  } finally {
    $("generate").disabled = false;
  }
}

async function complete(model, target) {
  const out = $(target);
  out.dataset.state = "running";
  out.textContent = "\u2026";
  try {
    const result = await api("POST", "/v1/chat/completions", {
      model,
      messages: [{ role: "user", content: $("prompt").value }],
      max_tokens: Number($("max-tokens").value) || 48,
    });
    out.textContent = result.choices[0].message.content;
    out.dataset.state = "done";
  } catch (err) {
    out.textContent = "";
    out.dataset.state = "error";
    throw err;
  }
}

async function runBoth() {
  showError("");
  $("run").disabled = true;
  // Sent together: the server batches both into one forward pass, each row with its own adapter.
  const results = await Promise.allSettled([complete(baseModel, "output-base"), complete(adapterId, "output-adapter")]);
  const failed = results.find((r) => r.status === "rejected");
  if (failed) showError(failed.reason.message);
  $("run").disabled = false;
}

async function download(event) {
  // With an API key the zip must be fetched with the header, then saved from memory.
  if (!$("api-key").value.trim()) return;
  event.preventDefault();
  const response = await fetch($("download").href, { headers: headers() });
  if (!response.ok) return showError(`${response.status}: download failed`);
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = $("download").getAttribute("download");
  a.click();
  URL.revokeObjectURL(url);
}

$("generate").addEventListener("click", makeAdapter);
$("run").addEventListener("click", runBoth);
$("download").addEventListener("click", download);
loadStatus();
