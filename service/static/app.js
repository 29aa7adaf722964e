// The hypergen page: make an adapter from a description, then run a prompt with and without it.
// Plain JavaScript, no build step; it only calls the public JSON API.
"use strict";

const $ = (id) => document.getElementById(id);
let adapterId = null;
let baseModel = "base";
let conditionParts = ["description"]; // what the loaded checkpoint's condition is made of

// One line about an adapter kind's settings (healthz and adapter metadata carry them under the
// kind's name: "lora" or "bottleneck").
function settingsText(kind, s) {
  if (kind === "bottleneck") {
    return `bottleneck adapters of width ${s.size} (${s.placement}, ${s.non_linearity}) after ` +
      s.target_modules.join(" and ");
  }
  return `LoRA rank ${s.rank} on ${s.target_modules.join(", ")}`;
}

// Step 1's heading for what the checkpoint takes.
const HEADINGS = {
  description: "Describe the task",
  "description+language": "Describe the task and give its language",
  document: "Give a document",
  examples: "Show the task by examples",
  "description+examples": "Describe the task and show it by examples",
};

// The download's format, as the metadata's "format" says.
const FORMATS = { "peft-lora": "PEFT LoRA", adapterhub: "AdapterHub bottleneck" };

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
      settingsText(health.adapter_kind, health[health.adapter_kind]);
    conditionParts = ck.condition_parts || ["description"];
    for (const part of ["description", "language", "document", "examples"]) {
      $(`${part}-field`).hidden = !conditionParts.includes(part);
    }
    $("condition-heading").textContent = "1. " + (HEADINGS[conditionParts.join("+")] || "Give the condition");
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

// "input => output" lines -> [{input, output}]; the split is at the last " => " of a line.
function parseExamples(text) {
  const lines = text.split("\n").filter((line) => line.trim());
  return lines.map((line, k) => {
    const at = line.lastIndexOf("=>");
    if (at < 0) throw new Error(`example line ${k + 1} has no "=>" between input and output`);
    return { input: line.slice(0, at).trim(), output: line.slice(at + 2).trim() };
  });
}

// The request's condition: only the parts the checkpoint takes (the server answers a 400 naming
// its parts otherwise).
function conditionBody() {
  const body = {};
  if (conditionParts.includes("description")) body.description = $("description").value;
  if (conditionParts.includes("language")) body.language = $("language").value.trim();
  if (conditionParts.includes("document")) body.document = $("document").value;
  if (conditionParts.includes("examples")) body.examples = parseExamples($("examples").value);
  return body;
}

async function makeAdapter() {
  showError("");
  let body;
  try {
    body = conditionBody();
  } catch (err) {
    return showError(err.message);
  }
  $("generate").disabled = true;
  try {
    const adapter = await api("POST", "/v1/adapters", body);
    adapterId = adapter.id;
    $("adapter-id").textContent = adapter.id;
    $("adapter-source").textContent = adapter.untrained ? "(untrained: a no-op)" : "";
    const s = adapter[adapter.adapter_kind];
    const shape = adapter.adapter_kind === "bottleneck"
      ? `bottleneck m=${s.size}, ${s.placement}, ${s.non_linearity}, ${s.target_modules.join("+")}`
      : `LoRA r=${s.rank}, alpha=${s.alpha}, ${s.target_modules.join("+")}`;
    const c = adapter.condition;
    const language = c.language ? ` \u00b7 language ${c.language}` : "";
    const made = c.document ? ` \u00b7 from a document of ${c.document.length} characters`
      : c.examples ? ` \u00b7 from ${c.examples.length} examples` : "";
    $("adapter-meta").textContent =
      `${shape}, ${s.dtype}, ${(adapter.size_bytes / 1024).toFixed(0)} KiB \u00b7 ` +
      `for ${adapter.base_model_id}${language}${made}`;
    $("download").textContent = `Download the ${FORMATS[adapter.format] || adapter.format} adapter (zip)`;
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
