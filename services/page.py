"""The page at ``/``: upload a radiograph, pick a finding, see input, mask and result side by side.

Plain HTML and a few lines of JavaScript calling ``/v1/findings`` and ``/v1/generate`` with
the token the person types in (kept in the browser's session storage only).
"""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>cxr-augment</title>
<style>
 body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}
 fieldset{border:1px solid #ccc;padding:1em;margin-bottom:1em}
 label{margin-right:1em} figure{display:inline-block;margin:0 1em 0 0;text-align:center}
 img{width:300px;height:300px;object-fit:contain;background:#000;image-rendering:pixelated}
 #status{margin:1em 0;font-weight:bold} pre{background:#f6f6f6;padding:.5em;overflow:auto}
</style></head><body>
<h1>cxr-augment: paint a finding into a healthy radiograph</h1>
<fieldset>
 <label>API token <input id="token" type="password" size="30"></label>
 <label>Radiograph (PNG) <input id="file" type="file" accept="image/png"></label><br><br>
 <label>Finding <select id="finding"></select></label>
 <label>Steps <input id="steps" type="number" min="1" max="100" value="10" size="4"></label>
 <label>Seed <input id="seed" type="number" min="0" value="0" size="8"></label>
 <button id="go">Generate</button>
</fieldset>
<div id="status"></div>
<figure><img id="in" alt="input"><figcaption>input</figcaption></figure>
<figure><img id="mask" alt="mask"><figcaption>mask</figcaption></figure>
<figure><img id="out" alt="result"><figcaption>result</figcaption></figure>
<pre id="details"></pre>
<script>
const $ = (id) => document.getElementById(id);
$("token").value = sessionStorage.getItem("cxr-token") || "";
const auth = () => ({"Authorization": "Bearer " + $("token").value});
async function loadFindings() {
  sessionStorage.setItem("cxr-token", $("token").value);
  const r = await fetch("/v1/findings", {headers: auth()});
  if (!r.ok) { $("status").textContent = "findings: " + r.status + " (enter the API token)"; return; }
  const j = await r.json(); $("finding").innerHTML = "";
  for (const f of j.available) { const o = document.createElement("option"); o.textContent = f; $("finding").appendChild(o); }
  $("status").textContent = "";
}
$("token").addEventListener("change", loadFindings);
$("file").addEventListener("change", () => { const f = $("file").files[0]; if (f) $("in").src = URL.createObjectURL(f); });
$("go").addEventListener("click", async () => {
  const f = $("file").files[0]; if (!f) { $("status").textContent = "choose a PNG first"; return; }
  $("status").textContent = "generating...";
  const q = new URLSearchParams({finding: $("finding").value, steps: $("steps").value, seed: $("seed").value, format: "json"});
  const r = await fetch("/v1/generate?" + q, {method: "POST", headers: {...auth(), "Content-Type": "image/png"}, body: f});
  const j = await r.json();
  if (!r.ok) { $("status").textContent = r.status + ": " + j.error.message; return; }
  const s = j.samples[0];
  $("mask").src = "data:image/png;base64," + s.mask; $("out").src = "data:image/png;base64," + s.image;
  $("status").textContent = (s.accepted ? "accepted" : "rejected") + " (seed " + s.seed + ")";
  $("details").textContent = JSON.stringify({findings: j.findings, references: s.references, reasons: s.reasons,
    before: j.proba_before, after: s.proba_after}, null, 1);
});
loadFindings();
</script></body></html>
"""
