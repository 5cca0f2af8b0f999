// The try-it page: only the public HTTP API (/v1), no build step, no CDN (works offline).
"use strict";

const $ = (id) => document.getElementById(id);
const state = { models: [], image: null, imageType: "image/jpeg", bitmap: null, seq: 0 };

function colour(classId) {
  return `hsl(${(classId * 47) % 360}, 80%, 45%)`;
}

async function api(path, options) {
  const r = await fetch(path, options);
  const body = r.headers.get("content-type")?.includes("json") ? await r.json() : null;
  if (!r.ok) {
    const e = body && body.error ? `${body.error.code}: ${body.error.message}` : `HTTP ${r.status}`;
    throw new Error(e);
  }
  return body;
}

function showError(message) {
  $("error").textContent = message || "";
  $("error").hidden = !message;
}

async function loadModels() {
  const { models } = await api("/v1/models");
  state.models = models.filter((m) => m.version); // served: a version is loaded
  $("model").innerHTML = state.models.map((m) => `<option value="${m.name}">${m.name} (${m.task || "?"}, v${String(m.version).slice(0, 12)})</option>`).join("");
  fillAliases();
}

function fillAliases() {
  const model = state.models.find((m) => m.name === $("model").value);
  const aliases = model ? Object.keys(model.aliases || {}) : [];
  $("alias").innerHTML = aliases.map((a) => `<option value="${a}">${a} → v${String(model.aliases[a].version).slice(0, 12)}</option>`).join("");
}

async function loadSamples() {
  const { samples } = await api("/ui/samples/");
  $("samples").innerHTML = samples.map((s) => `<button type="button" data-sample="${s}">${s}</button>`).join("");
  for (const b of $("samples").querySelectorAll("button")) {
    b.onclick = async () => {
      const r = await fetch(`/ui/samples/${b.dataset.sample}`);
      setImage(await r.blob());
    };
  }
}

async function setImage(blob) {
  state.image = blob;
  state.imageType = blob.type || "image/jpeg";
  state.bitmap = await createImageBitmap(blob);
  predict();
}

let timer = null;
function predictSoon() {
  clearTimeout(timer);
  timer = setTimeout(predict, 150);
}

async function predict() {
  if (!state.image) return;
  const seq = ++state.seq;
  const model = $("model").value;
  const params = new URLSearchParams({ conf: $("conf").value, iou: $("iou").value });
  if ($("alias").value) params.set("alias", $("alias").value);
  $("result").dataset.state = "running";
  showError("");
  try {
    const answer = await api(`/v1/models/${encodeURIComponent(model)}/predict?${params}`, {
      method: "POST", headers: { "Content-Type": state.imageType }, body: state.image,
    });
    if (seq !== state.seq) return; // a newer request (slider moved) answers instead
    draw(answer);
    $("result").dataset.state = "done";
  } catch (err) {
    if (seq !== state.seq) return;
    showError(err.message);
    $("result").dataset.state = "error";
  }
}

function draw(answer) {
  const canvas = $("canvas");
  const bmp = state.bitmap;
  canvas.width = bmp.width;
  canvas.height = bmp.height;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bmp, 0, 0);
  const dets = answer.detections || [];
  const line = Math.max(2, Math.round(bmp.width / 320));
  ctx.font = `${Math.max(12, Math.round(bmp.width / 45))}px system-ui, sans-serif`;
  for (const d of dets) {
    const [x1, y1, x2, y2] = d.box;
    ctx.strokeStyle = ctx.fillStyle = colour(d.class_id);
    ctx.lineWidth = line;
    ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
    const text = `${d.label} ${d.score.toFixed(2)}`;
    const w = ctx.measureText(text).width + 6;
    ctx.fillRect(x1, Math.max(0, y1 - 18), w, 18);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x1 + 3, Math.max(13, y1 - 4));
  }
  const classes = answer.classes || [];
  $("bars").innerHTML = classes.map((c) => `<li><span>${c.label}</span><span class="bar" style="width:${(c.score * 100).toFixed(1)}%"></span><span>${c.score.toFixed(3)}</span></li>`).join("");
  $("result").dataset.boxes = String(dets.length);
  $("result").dataset.classes = String(classes.length);
  const t = answer.timings_ms || {};
  $("timings").innerHTML = `<tr><th colspan="2">${answer.model} v${String(answer.version).slice(0, 12)} @${answer.alias}, ${answer.image.width}×${answer.image.height}</th></tr>` +
    Object.entries(t).map(([k, v]) => `<tr><td>${k.replace(/_ms$/, "")}</td><td>${k.endsWith("_ms") ? v.toFixed(2) + " ms" : v}</td></tr>`).join("");
}

async function refreshLive() {
  try {
    const s = await api("/v1/stats");
    $("live-scope").textContent = `(${s.scope})`;
    $("live").querySelector("tbody").innerHTML = Object.entries(s.models).map(([m, v]) =>
      `<tr><td>${m}</td><td>${v.requests_per_s}</td><td>${v.p50_ms ?? "–"}</td><td>${v.p99_ms ?? "–"}</td><td>${v.errors}</td></tr>`).join("");
  } catch (err) { /* the panel waits for the next round */ }
}

async function refreshQueue() {
  const q = await api("/v1/review?status=pending&limit=60");
  if (!q.enabled) {
    $("review-state").textContent = "The review queue is off (the app's review.enabled).";
    $("queue").innerHTML = "";
    return;
  }
  $("review-state").textContent = `${q.store.items} items kept (${q.store.by_status.pending || 0} pending); captured ${q.capture.captured}, dropped ${q.capture.dropped_queue_full + q.capture.dropped_store_full}.`;
  $("queue").innerHTML = q.items.map((i) => `<div class="card" data-id="${i.id}">
    <img loading="lazy" src="/v1/review/${i.id}/image" alt="">
    <div>${i.model} · ${i.reason}</div>
    <div class="meta">${i.prediction.slice(0, 4).map((p) => `${p.label} ${p.score.toFixed(2)}`).join(", ") || "nothing found"}</div>
    <button data-action="accept">accept</button><button data-action="discard">discard</button></div>`).join("");
  for (const b of $("queue").querySelectorAll("button")) {
    b.onclick = async () => {
      const card = b.closest(".card");
      await api(`/v1/review/${card.dataset.id}/${b.dataset.action}`, { method: "POST" });
      card.remove();
    };
  }
}

function tabs() {
  for (const [tab, panel] of [["tab-try", "try"], ["tab-review", "review"]]) {
    $(tab).onclick = () => {
      for (const t of document.querySelectorAll(".tab")) t.classList.toggle("active", t.id === tab);
      $("try").hidden = panel !== "try";
      $("review").hidden = panel !== "review";
      if (panel === "review") refreshQueue().catch((e) => { $("review-state").textContent = e.message; });
    };
  }
}

function wire() {
  $("model").onchange = () => { fillAliases(); predict(); };
  $("alias").onchange = predict;
  for (const id of ["conf", "iou"]) {
    $(id).oninput = () => { $(`${id}-out`).textContent = $(id).value; predictSoon(); };
  }
  $("file").onchange = () => { if ($("file").files[0]) setImage($("file").files[0]); };
  const drop = $("drop");
  drop.ondragover = (e) => { e.preventDefault(); drop.classList.add("over"); };
  drop.ondragleave = () => drop.classList.remove("over");
  drop.ondrop = (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) setImage(e.dataTransfer.files[0]);
  };
  tabs();
}

wire();
loadModels().then(loadSamples).catch((e) => showError(e.message));
refreshLive();
setInterval(refreshLive, 2000);
