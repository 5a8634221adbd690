"""The page at ``/``: pick a healthy example source (or upload a PNG), pick a finding, and see the
input, the repainted region over it, the result and the quality gate's verdict with its numbers.

Plain HTML and JavaScript calling ``/v1/findings``, ``/v1/examples``, ``/v1/examples/{id}``
and ``/v1/generate`` with the token the person types in (kept in the browser's session
storage only). Nothing that needs the token is asked for before a token is given, and an
``<img>`` stays hidden until it has a picture, so the page never shows a broken image box.
The gate's verdict is drawn from the sample's ``gate`` dict generically: accepted or
rejected, the failed checks, and a table of every number in it (``verifier_*`` and
``judges`` included when the gate reports them).

Element ids the browser test (``tests/services/test_page_browser.py``) relies on: ``token``,
``use-token``, ``notice``, ``examples`` (one ``button.example`` per source, ``data-id``),
``file``, ``finding``, ``go``, ``status``, ``in``, ``overlay``, ``out``, ``verdict``, ``gate-table``.
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxr-augment</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<style>
 body{font-family:system-ui,sans-serif;margin:2em;max-width:1150px}
 fieldset{border:1px solid #ccc;padding:1em;margin-bottom:1em}
 legend{font-weight:bold} label{margin-right:1em}
 img:not([src]),[hidden]{display:none !important}
 .notice{padding:.6em 1em;margin-bottom:1em;border-radius:4px;background:#fff4d6;border:1px solid #e0b400}
 .notice.ok{background:#e9f7ee;border-color:#3c9d5d}
 #examples{display:flex;flex-wrap:wrap;gap:.5em;margin:.5em 0}
 button.example{padding:2px;border:3px solid transparent;background:#000;cursor:pointer}
 button.example[aria-pressed="true"]{border-color:#d22}
 button.example img{width:96px;height:96px;object-fit:contain;display:block}
 .panels{display:flex;flex-wrap:wrap;gap:1em}
 figure{margin:0;text-align:center}
 .view{width:300px;height:300px;object-fit:contain;background:#000;image-rendering:pixelated;display:block}
 #status{margin:1em 0;font-weight:bold}
 #verdict{margin:1em 0;padding:.6em 1em;border-radius:4px;font-weight:bold}
 #verdict.accepted{background:#e9f7ee;border:1px solid #3c9d5d}
 #verdict.rejected{background:#fdecec;border:1px solid #c33}
 table{border-collapse:collapse;margin-top:.5em} td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left;font-weight:normal}
 td.num{text-align:right;font-family:ui-monospace,monospace}
 pre{background:#f6f6f6;padding:.5em;overflow:auto}
</style></head><body>
<h1>cxr-augment: paint a finding into a healthy radiograph</h1>
<div id="notice" class="notice" role="status">Enter the API token (the service's bearer token) and press
 <b>Use token</b>: the example sources and findings load once it is accepted.</div>
<fieldset>
 <legend>1. Access</legend>
 <label>API token <input id="token" type="password" size="36" autocomplete="off"></label>
 <button id="use-token" type="button">Use token</button>
</fieldset>
<fieldset id="inputs" disabled>
 <legend>2. Healthy source and finding</legend>
 <div>Pick a healthy example source <span id="examples-note"></span></div>
 <div id="examples" role="group" aria-label="healthy example sources"></div>
 <div>or upload your own: <input id="file" type="file" accept="image/png"></div><br>
 <label>Finding <select id="finding"></select></label>
 <label>Steps <input id="steps" type="number" min="1" max="100" value="10" size="4"></label>
 <label>Seed <input id="seed" type="number" min="0" value="0" size="8"></label>
 <button id="go" type="button" disabled>Generate</button>
</fieldset>
<div id="status" role="status"></div>
<div class="panels">
 <figure id="in-fig" hidden><img id="in" class="view" alt="input radiograph"><figcaption>input</figcaption></figure>
 <figure id="overlay-fig" hidden><canvas id="overlay" class="view" aria-label="repainted region over the input"></canvas>
  <figcaption>repainted region (red) over the input</figcaption></figure>
 <figure id="out-fig" hidden><img id="out" class="view" alt="synthetic radiograph"><figcaption>result</figcaption></figure>
</div>
<div id="verdict" hidden></div>
<pre id="details" hidden></pre>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const state = {source: null, sourceName: "", examples: {}, tokenOk: false};
const auth = () => ({"Authorization": "Bearer " + $("token").value.trim()});

function notice(text, ok) { $("notice").textContent = text; $("notice").classList.toggle("ok", !!ok); }
function status(text) { $("status").textContent = text; }
async function errorText(r) {
  try { const j = await r.json(); if (j && j.error) return r.status + " " + j.error.code + ": " + j.error.message; } catch (e) {}
  return "HTTP " + r.status;
}
function showImg(id, url) { const img = $(id); img.onload = () => { $(id + "-fig").hidden = false; }; img.src = url; }
function refreshGo() { $("go").disabled = !(state.tokenOk && state.source && $("finding").value); }

async function useToken() {
  const tok = $("token").value.trim();
  state.tokenOk = false; $("inputs").disabled = true; refreshGo();
  if (!tok) { notice("Enter the API token first: every request but this page needs it."); return; }
  sessionStorage.setItem("cxr-token", tok);
  notice("Checking the token...");
  let r;
  try { r = await fetch("/v1/findings", {headers: auth()}); } catch (e) { notice("The service cannot be reached: " + e); return; }
  if (!r.ok) {
    notice(r.status === 401 ? "The token was refused (401): enter the service's API token." : "Findings: " + await errorText(r));
    return;
  }
  const j = await r.json();
  const sel = $("finding"); sel.innerHTML = "";
  for (const f of j.available) { const o = document.createElement("option"); o.value = o.textContent = f; sel.appendChild(o); }
  state.tokenOk = true; $("inputs").disabled = false;
  notice("Token accepted. Pick a healthy source and a finding, then Generate.", true);
  await loadExamples();
  refreshGo();
}

async function loadExamples() {
  const box = $("examples"); box.innerHTML = ""; state.examples = {};
  const r = await fetch("/v1/examples", {headers: auth()});
  if (!r.ok) { $("examples-note").textContent = "(unavailable: " + await errorText(r) + ")"; return; }
  const list = (await r.json()).examples;
  $("examples-note").textContent = list.length ? "(" + list.length + " images labelled No Finding)" : "(none offered by this service)";
  for (const ex of list) {
    const b = document.createElement("button");
    b.type = "button"; b.className = "example"; b.dataset.id = ex.id; b.title = ex.id + " (" + ex.width + "x" + ex.height + ")";
    b.setAttribute("aria-pressed", "false"); b.hidden = true;
    b.addEventListener("click", () => pickExample(ex.id));
    box.appendChild(b);
    fetch("/v1/examples/" + encodeURIComponent(ex.id), {headers: auth()}).then(async (ri) => {
      if (!ri.ok) { b.remove(); return; }
      const blob = await ri.blob(); state.examples[ex.id] = blob;
      const img = document.createElement("img"); img.alt = "healthy example " + ex.id;
      img.onload = () => { b.hidden = false; }; img.onerror = () => b.remove();
      img.src = URL.createObjectURL(blob); b.appendChild(img);
    });
  }
}

function setSource(blob, name) {
  state.source = blob; state.sourceName = name;
  showImg("in", URL.createObjectURL(blob));
  for (const fig of ["overlay-fig", "out-fig", "verdict", "details"]) $(fig).hidden = true;
  status("source: " + name); refreshGo();
}
function pickExample(id) {
  const blob = state.examples[id]; if (!blob) return;
  for (const b of document.querySelectorAll("button.example")) b.setAttribute("aria-pressed", b.dataset.id === id ? "true" : "false");
  $("file").value = "";
  setSource(blob, "example " + id);
}

function loadImage(url) {
  return new Promise((ok, fail) => { const im = new Image(); im.onload = () => ok(im); im.onerror = fail; im.src = url; });
}
async function drawOverlay(maskUrl) {
  const base = await loadImage($("in").src), mask = await loadImage(maskUrl);
  const w = mask.naturalWidth, h = mask.naturalHeight, c = $("overlay");
  c.width = w; c.height = h;
  const ctx = c.getContext("2d"); ctx.drawImage(base, 0, 0, w, h);
  const px = ctx.getImageData(0, 0, w, h);
  const m = document.createElement("canvas"); m.width = w; m.height = h;
  const mctx = m.getContext("2d"); mctx.drawImage(mask, 0, 0);
  const mp = mctx.getImageData(0, 0, w, h).data;
  for (let i = 0; i < mp.length; i += 4) {
    const a = 0.45 * mp[i] / 255;  // red, translucent, where the mask is white
    px.data[i] = px.data[i] * (1 - a) + 255 * a; px.data[i + 1] *= 1 - a; px.data[i + 2] *= 1 - a;
  }
  ctx.putImageData(px, 0, 0);
  $("overlay-fig").hidden = false;
}

function fmt(v) { return typeof v === "number" ? String(Number.isInteger(v) ? v : parseFloat(v.toPrecision(4))) : String(v); }
function gateRows(gate) {
  // every number (or list of numbers) the gate reports, plus judges; verifier_* and judges first
  const rows = [];
  const order = (k) => (k.startsWith("verifier") || k === "judges") ? 0 : 1;
  for (const k of Object.keys(gate).sort((a, b) => order(a) - order(b))) {
    const v = gate[k];
    const nums = Array.isArray(v) ? v.every((x) => typeof x === "number" || x === null) && v.length > 0 : false;
    if (typeof v === "number" || v === null && (k.startsWith("verifier") || k.endsWith("distance")) || nums || k === "judges") {
      rows.push([k, Array.isArray(v) ? v.map((x) => x === null ? "n/a" : fmt(x)).join(", ") :
                    v === null ? "n/a" : typeof v === "object" ? JSON.stringify(v) : fmt(v)]);
    }
  }
  return rows;
}
function showVerdict(s) {
  const gate = s.gate && Object.keys(s.gate).length ? s.gate : s;
  const accepted = !!gate.accepted;
  let reasons = gate.reasons || [];
  if (typeof reasons === "string") reasons = reasons ? reasons.split("|") : [];
  const v = $("verdict"); v.innerHTML = "";
  v.className = accepted ? "accepted" : "rejected"; v.dataset.accepted = String(accepted);
  const head = document.createElement("div");
  const rows = gateRows(gate);
  const key = rows.find((r) => r[0] === "rise"), margin = rows.find((r) => r[0] === "margin");
  head.textContent = "Quality gate: " + (accepted ? "accepted" : "rejected") +
    (key && margin ? " (rise " + key[1] + ", required " + margin[1] + ")" : "") +
    (reasons.length ? "; failed checks: " + reasons.join(", ") : "");
  v.appendChild(head);
  const t = document.createElement("table"); t.id = "gate-table";
  for (const [k, val] of rows) {
    const tr = document.createElement("tr"), th = document.createElement("th"), td = document.createElement("td");
    th.textContent = k; td.textContent = val; td.className = "num"; tr.append(th, td); t.appendChild(tr);
  }
  v.appendChild(t); v.hidden = false;
}

async function generate() {
  if (!state.tokenOk) { notice("Enter the API token first."); return; }
  if (!state.source) { status("Pick an example source or upload a PNG first."); return; }
  $("go").disabled = true; status("generating...");
  for (const fig of ["overlay-fig", "out-fig", "verdict", "details"]) $(fig).hidden = true;
  try {
    const q = new URLSearchParams({finding: $("finding").value, steps: $("steps").value, seed: $("seed").value, format: "json"});
    const r = await fetch("/v1/generate?" + q, {method: "POST", headers: {...auth(), "Content-Type": "image/png"}, body: state.source});
    if (!r.ok) { status(await errorText(r)); return; }
    const j = await r.json(); const s = j.samples[0];
    showImg("out", "data:image/png;base64," + s.image);
    await drawOverlay("data:image/png;base64," + s.mask);
    showVerdict(s);
    status("done: " + j.findings.join(", ") + " painted into " + state.sourceName + " (seed " + s.seed + ", " + j.seconds.toFixed(2) + " s)");
    $("details").textContent = JSON.stringify({findings: j.findings, references: s.references,
      proba_before: j.proba_before, proba_after: s.proba_after, gate: s.gate}, null, 1);
    $("details").hidden = false;
  } catch (e) {
    status("failed: " + e);
  } finally { refreshGo(); }
}

$("use-token").addEventListener("click", useToken);
$("token").addEventListener("keydown", (e) => { if (e.key === "Enter") useToken(); });
$("file").addEventListener("change", () => {
  const f = $("file").files[0]; if (!f) return;
  for (const b of document.querySelectorAll("button.example")) b.setAttribute("aria-pressed", "false");
  setSource(f, "upload " + f.name);
});
$("finding").addEventListener("change", refreshGo);
$("go").addEventListener("click", generate);
const saved = sessionStorage.getItem("cxr-token");
if (saved) { $("token").value = saved; useToken(); }
</script></body></html>
"""
