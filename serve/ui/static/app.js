// The classifier page: reads the model card from /metadata, sends one photo to /classify, draws the top-5.
// Plain browser JavaScript, same-origin requests only (works offline, no build step).
"use strict";

const TOP_K = 5;
const $ = (id) => document.getElementById(id);

function show(id, text) {
  $(id).textContent = text;
}

function fmtCount(value) {
  if (!value) return "unknown";
  if (value >= 1e9) return `${(value / 1e9).toFixed(2)} G`;
  if (value >= 1e6) return `${(value / 1e6).toFixed(2)} M`;
  return `${value}`;
}

const RANDOM_WARNING = "This model has random weights: its classes mean nothing (unvalidated (random weights)).";

function weightsKind(meta) {
  return String(meta.weights || "unknown").split(/[:\s]/)[0];
}

// Random weights have no accuracy; a figure is shown only with the source the card names for it. An unvalidated
// card's source is advice for whoever runs the server (which folder to set, agreement figures): not shown here.
function accuracyText(meta) {
  const weights = weightsKind(meta);
  if (weights === "random") return "unvalidated (random weights) (source: model card, weights = random)";
  const accuracy = meta.accuracy;
  if (accuracy && typeof accuracy === "object") {
    const status = accuracy.status || "unvalidated";
    if (status === "measured" && accuracy.top1 != null) {  // the figure and where it was measured, not the verdict
      const where = String(accuracy.source || "").split(";")[0];
      return `top-1 ${Number(accuracy.top1).toFixed(1)}% measured${where ? ` (${where})` : ""}`;
    }
    if (!accuracy.top1 && !status.startsWith("published")) return `${status}: not measured on labelled photos`;
    return accuracy.source ? `${status} (source: ${accuracy.source})` : status;
  }
  return `not recorded in the model card (${weights} weights)`;
}

// Where the weights came from, without the server's file paths or a 64-digit checksum.
function weightsText(meta) {
  const text = String(meta.weights || "unknown");
  if (weightsKind(meta) === "file") {
    const name = text.replace(/^file:\s*/, "").split(/\s/)[0].split("/").pop();
    return `file ${name}`;
  }
  return text.replace(/sha256:([0-9a-f]{12})[0-9a-f]+/, "sha256:$1…");
}

function showWeightsWarning(text) {
  $("weights-warning").textContent = text || "";
  $("weights-warning").hidden = !text;
}

function targetText(meta) {
  const q = meta.quantization;
  if (!q) return `none: ${meta.precision || "fp32"} runs on any CPU`;
  const name = q.target || q.name || q.preset || "unnamed";
  const arch = q.arch ? ` for ${q.arch}` : "";
  const recipe = q.recipe ? `, recipe ${q.recipe}` : "";
  return `${name}${arch}${recipe}`;
}

function preprocessingText(meta) {
  const p = meta.preprocessing;
  if (!p) return `input ${(meta.input_size || []).join("×")}`;
  const triple = (values) => values.map((v) => Number(v).toFixed(3)).join(", ");
  return `resize ${p.resize} (${p.interpolation}), center-crop ${p.crop}, ` +
    `mean [${triple(p.mean)}], std [${triple(p.std)}]`;
}

function renderCard(meta) {
  const variant = Object.entries(meta.variant || {}).map(([k, v]) => `${k}=${v}`).join(", ");
  show("model-line", `${meta.model} · ${meta.precision} · ${meta.resolution}px`);
  show("card-architecture", `${meta.name} (family ${meta.family}${variant ? `; ${variant}` : ""})`);
  show("card-size", `${fmtCount(meta.params)} parameters, ${fmtCount(meta.macs)} MACs`);
  show("card-precision", meta.precision);
  show("card-target", targetText(meta));
  show("card-weights", weightsText(meta));
  showWeightsWarning(weightsKind(meta) === "random" ? RANDOM_WARNING : "");
  show("card-accuracy", accuracyText(meta));
  show("card-preprocessing", preprocessingText(meta));
  show("card-runtime", `${(meta.providers || []).join(", ")}; ${meta.threads} thread(s) × ${meta.workers} worker(s)`);
  show("card-limits", `${Math.round(meta.max_upload_bytes / 1048576)} MB per upload, ` +
    `${meta.max_batch_images} images per batch request`);
}

async function loadCard() {
  try {
    const response = await fetch("/metadata");
    if (!response.ok) throw new Error(`/metadata answered ${response.status}`);
    renderCard(await response.json());
  } catch (error) {
    show("model-line", `model card unavailable: ${error.message}`);
  }
}

function renderPredictions(result, roundTripMs) {
  const list = $("predictions");
  list.replaceChildren();
  for (const p of result.predictions) {
    const item = document.createElement("li");
    item.className = "prediction";
    item.dataset.classId = String(p.class_id);
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = p.label;
    const id = document.createElement("span");
    id.className = "class-id";
    id.textContent = `#${p.class_id}`;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(0.5, p.score * 100).toFixed(1)}%`;
    bar.append(fill);
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = `${(p.score * 100).toFixed(1)}%`;
    item.append(label, id, bar, score);
    list.append(item);
  }
  show("latency-total", `${roundTripMs.toFixed(1)} ms`);
  show("latency-inference", `${result.inference_ms.toFixed(1)} ms`);
  show("latency-batch", String(result.batch_size));
  $("latency").hidden = false;
}

// Back to the empty drop zone: no picture (a broken-image icon for a file the browser cannot show), no hint hidden.
function clearPreview() {
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  preview.hidden = true;
  $("drop-hint").hidden = false;
}

// Nothing of the previous photo stays: its classes, its latency.
function clearResult() {
  $("error").hidden = true;
  $("predictions").replaceChildren();
  $("latency").hidden = true;
  for (const id of ["latency-total", "latency-inference", "latency-batch"]) show(id, "");
}

async function classify(file) {
  clearResult();
  clearPreview();
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  show("status", `classifying ${file.name}…`);
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("top_k", String(TOP_K));
  const started = performance.now();
  try {
    const response = await fetch("/classify", { method: "POST", body: form });
    const body = await response.json();
    const roundTripMs = performance.now() - started;
    if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
    renderPredictions(body, roundTripMs);
    if (response.headers.get("Warning")) showWeightsWarning(RANDOM_WARNING);  // the server says so per answer
    show("status", `${file.name}: ${body.predictions[0].label}`);
  } catch (error) {
    clearResult();
    clearPreview();
    show("status", "");
    $("error").textContent = error.message;
    $("error").hidden = false;
  }
}

function setUp() {
  const zone = $("drop-zone");
  $("preview").addEventListener("error", () => { if ($("preview").src) clearPreview(); });  // e.g. a TIFF
  $("file-input").addEventListener("change", (event) => {
    const [file] = event.target.files;
    if (file) classify(file);
  });
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const [file] = event.dataTransfer.files;
    if (file) classify(file);
  });
  loadCard();
}

setUp();
