// The web page at / : plain HTML, CSS and JavaScript embedded in the binary (no build step), a client of the server's
// own job API (POST /ldm/v1/jobs, GET /ldm/v1/jobs/{id} for its own progress, preview and ETA, POST
// /ldm/v1/jobs/{id}/interrupt) and of /sdapi/v1 (sd-models, samplers, png-info). Layout after AUTOMATIC1111's
// txt2img / img2img tabs: prompt, negative prompt, model, sampler, steps, CFG, size, seed, batch, Generate, a progress
// bar with a live preview, Interrupt, a gallery with each image's parameters and "send to img2img", an inpainting mask
// painter over the init image, and a PNG-info drop zone.
enum WebPage {
    static let html = #"""
<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>ldm serve</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 0; background: #f4f4f6; color: #222; }
header { background: #2b2d42; color: #fff; padding: 8px 16px; font-size: 18px; }
main { display: grid; grid-template-columns: minmax(320px, 440px) 1fr; gap: 16px; padding: 16px; }
section { background: #fff; border-radius: 8px; padding: 12px; box-shadow: 0 1px 3px #0002; }
label { display: block; margin: 6px 0 2px; font-weight: 600; }
textarea, input, select { width: 100%; box-sizing: border-box; padding: 5px; font: inherit; }
.row { display: grid; grid-template-columns: 1fr 1fr; gap: 8px; }
button { padding: 8px 14px; font: inherit; border: 0; border-radius: 6px; background: #ef8354; color: #fff; cursor: pointer; margin-top: 8px; }
button.secondary { background: #8d99ae; }
button:disabled { opacity: .5; cursor: default; }
#progress { height: 14px; background: #ddd; border-radius: 7px; overflow: hidden; margin: 8px 0; }
#bar { height: 100%; width: 0; background: #4caf50; transition: width .2s; }
#status { min-height: 1.2em; color: #555; }
#preview { width: 128px; max-width: 256px; image-rendering: pixelated; display: block; margin: 6px 0; min-height: 8px; }
#gallery { display: flex; flex-wrap: wrap; gap: 10px; }
.card { width: 220px; background: #fafafa; border: 1px solid #ddd; border-radius: 6px; padding: 6px; }
.card img { width: 100%; image-rendering: pixelated; }
.card pre { white-space: pre-wrap; font-size: 11px; max-height: 120px; overflow: auto; }
#maskwrap { position: relative; display: inline-block; }
#maskwrap img, #mask { width: 256px; height: 256px; image-rendering: pixelated; }
#mask { position: absolute; left: 0; top: 0; opacity: .55; cursor: crosshair; touch-action: none; }
#drop { border: 2px dashed #8d99ae; border-radius: 8px; padding: 14px; text-align: center; color: #555; }
#drop.over { background: #eef; }
#pnginfo { white-space: pre-wrap; font-size: 12px; }
.hidden { display: none; }
#error { color: #b00020; min-height: 1.2em; }
</style></head>
<body>
<header>ldm serve: latent diffusion on this machine</header>
<main>
<section id="controls">
  <label for="prompt">Prompt</label><textarea id="prompt" rows="3">a large red circle in the top left corner on a white background</textarea>
  <label for="negative">Negative prompt</label><textarea id="negative" rows="2"></textarea>
  <div class="row">
    <div><label for="model">Model</label><select id="model"></select></div>
    <div><label for="sampler">Sampler</label><select id="sampler"></select></div>
  </div>
  <div class="row">
    <div><label for="steps">Steps</label><input id="steps" type="number" min="1" max="1000" value="20"></div>
    <div><label for="cfg">CFG scale</label><input id="cfg" type="number" min="0" max="100" step="0.5" value="7"></div>
  </div>
  <div class="row">
    <div><label for="width">Width</label><input id="width" type="number" min="8" step="8" value="512"></div>
    <div><label for="height">Height</label><input id="height" type="number" min="8" step="8" value="512"></div>
  </div>
  <div class="row">
    <div><label for="seed">Seed (-1: random)</label><input id="seed" type="number" value="-1"></div>
    <div><label for="batch">Batch size</label><input id="batch" type="number" min="1" max="16" value="1"></div>
  </div>
  <div id="img2img" class="hidden">
    <label>img2img / inpainting: paint the area to repaint</label>
    <div id="maskwrap"><img id="initimg" alt="init image"><canvas id="mask" width="256" height="256"></canvas></div>
    <div class="row">
      <div><label for="strength">Denoising strength</label><input id="strength" type="number" min="0" max="1" step="0.05" value="0.75"></div>
      <div><label for="brush">Brush</label><input id="brush" type="number" min="1" max="128" value="24"></div>
    </div>
    <button id="clearmask" class="secondary" type="button">Clear mask</button>
    <button id="txtmode" class="secondary" type="button">Back to txt2img</button>
  </div>
  <div><button id="generate" type="button">Generate</button> <button id="interrupt" class="secondary" type="button" disabled>Interrupt</button></div>
  <div id="progress"><div id="bar"></div></div>
  <div id="status"></div><div id="error"></div>
  <img id="preview" alt="">
  <label>PNG info</label>
  <div id="drop">Drop a PNG here, or <input id="pngfile" type="file" accept="image/png"></div>
  <div id="pnginfo"></div>
</section>
<section><h3>Gallery</h3><div id="gallery"></div></section>
</main>
<script>
"use strict";
const $ = id => document.getElementById(id);
let job = null, initImage = null, maskDirty = false;

async function api(method, path, body) {
  const r = await fetch(location.origin + path, { method, headers: body ? { "Content-Type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined });
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new Error(data && data.detail ? data.detail : "HTTP " + r.status);
  return data;
}

async function init() {
  try {
    const [models, samplers, options] = await Promise.all([api("GET", "/sdapi/v1/sd-models"), api("GET", "/sdapi/v1/samplers"), api("GET", "/sdapi/v1/options")]);
    for (const m of models) $("model").add(new Option(m.title, m.model_name, false, m.model_name === options.sd_model_checkpoint));
    for (const s of samplers) $("sampler").add(new Option(s.name, s.name, false, s.name === "Euler a"));
  } catch (e) { $("error").textContent = e.message; }
}

function request() {
  const body = {
    prompt: $("prompt").value, negative_prompt: $("negative").value, sampler_name: $("sampler").value,
    steps: +$("steps").value, cfg_scale: +$("cfg").value, width: +$("width").value, height: +$("height").value,
    seed: +$("seed").value, batch_size: +$("batch").value,
    override_settings: { sd_model_checkpoint: $("model").value },
  };
  if (initImage) {
    body.mode = "img2img"; body.init_images = [initImage]; body.denoising_strength = +$("strength").value;
    if (maskDirty) body.mask = maskPNG();
  }
  return body;
}

async function generate() {
  $("error").textContent = "";
  try {
    const r = await api("POST", "/ldm/v1/jobs", request());
    job = r.id;
    $("generate").disabled = true; $("interrupt").disabled = false;
    poll(job);
  } catch (e) { $("error").textContent = e.message; }
}

async function poll(id) {
  let j;
  try { j = await api("GET", "/ldm/v1/jobs/" + id); } catch (e) { $("error").textContent = e.message; finish(); return; }
  const st = j.state || {};
  $("bar").style.width = Math.round(100 * (j.progress || 0)) + "%";
  if (j.status === "queued") $("status").textContent = "queued (position " + ((j.queue_position || 0) + 1) + ")";
  else if (j.status === "running") $("status").textContent = "image " + (st.job_no + 1) + "/" + (st.job_count || 1) + ", step " + st.sampling_step + "/" + st.sampling_steps + ", ETA " + (j.eta_relative || 0).toFixed(1) + " s";
  if (j.current_image) $("preview").src = "data:image/png;base64," + j.current_image;
  if (["succeeded", "failed", "cancelled"].includes(j.status)) {
    $("status").textContent = j.status + (st.interrupted ? " (interrupted)" : "") + ": " + (j.images ? j.images.length : 0) + " image(s)";
    if (j.error) $("error").textContent = j.error.detail;
    if (j.images) { const info = JSON.parse(j.info); j.images.forEach((b64, i) => addCard(b64, info.infotexts[i] || "")); }
    if (j.status === "succeeded") $("bar").style.width = "100%";
    finish(); return;
  }
  setTimeout(() => poll(id), 200);
}

function finish() { job = null; $("generate").disabled = false; $("interrupt").disabled = true; }

function addCard(b64, text) {
  const card = document.createElement("div"); card.className = "card";
  const img = document.createElement("img"); img.src = "data:image/png;base64," + b64; img.alt = "result";
  const pre = document.createElement("pre"); pre.textContent = text;
  const send = document.createElement("button"); send.textContent = "Send to img2img"; send.className = "secondary send";
  send.onclick = () => toImg2Img(img.src);
  card.append(img, pre, send);
  $("gallery").prepend(card);
}

function toImg2Img(src) {
  initImage = src; $("initimg").src = src; $("img2img").classList.remove("hidden");
  const im = new Image();
  im.onload = () => { $("width").value = im.naturalWidth; $("height").value = im.naturalHeight; const c = $("mask"); c.width = im.naturalWidth; c.height = im.naturalHeight; clearMask(); };
  im.src = src;
}

function clearMask() { const c = $("mask"), g = c.getContext("2d"); g.fillStyle = "#000"; g.fillRect(0, 0, c.width, c.height); maskDirty = false; }
function maskPNG() { return $("mask").toDataURL("image/png"); }

(function painter() {
  const c = $("mask"); let down = false;
  const paint = e => {
    const r = c.getBoundingClientRect(), g = c.getContext("2d");
    const x = (e.clientX - r.left) * c.width / r.width, y = (e.clientY - r.top) * c.height / r.height;
    const rad = Math.max(1, +$("brush").value * c.width / r.width / 2);
    g.fillStyle = "#fff"; g.beginPath(); g.arc(x, y, rad, 0, 2 * Math.PI); g.fill(); maskDirty = true;
  };
  c.addEventListener("pointerdown", e => { down = true; paint(e); });
  c.addEventListener("pointermove", e => { if (down) paint(e); });
  window.addEventListener("pointerup", () => { down = false; });
})();

async function pngInfo(file) {
  const b64 = await new Promise(res => { const fr = new FileReader(); fr.onload = () => res(fr.result); fr.readAsDataURL(file); });
  try { const r = await api("POST", "/sdapi/v1/png-info", { image: b64 }); $("pnginfo").textContent = r.info || "(no parameters in this PNG)"; }
  catch (e) { $("pnginfo").textContent = e.message; }
}

$("generate").onclick = generate;
$("interrupt").onclick = () => { if (job) api("POST", "/ldm/v1/jobs/" + job + "/interrupt").catch(e => $("error").textContent = e.message); };
$("clearmask").onclick = clearMask;
$("txtmode").onclick = () => { initImage = null; $("img2img").classList.add("hidden"); };
$("pngfile").onchange = e => { if (e.target.files[0]) pngInfo(e.target.files[0]); };
const drop = $("drop");
drop.addEventListener("dragover", e => { e.preventDefault(); drop.classList.add("over"); });
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", e => { e.preventDefault(); drop.classList.remove("over"); if (e.dataTransfer.files[0]) pngInfo(e.dataTransfer.files[0]); });
init();
</script>
</body></html>
"""#
}
