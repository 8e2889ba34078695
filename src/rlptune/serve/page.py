"""The web page at ``/``: choose a task, drop an image, see the top-k bars. One self-contained HTML file."""

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>rlptune serve</title>
<style>
 body{font-family:system-ui,sans-serif;max-width:46rem;margin:2rem auto;padding:0 1rem;color:#222}
 h1{font-size:1.4rem} .muted{color:#666;font-size:.9rem}
 #drop{border:2px dashed #999;border-radius:8px;padding:1.5rem;text-align:center;margin:1rem 0;cursor:pointer}
 #drop.over{border-color:#2a6;background:#f3fbf6} #preview{max-height:160px;margin-top:.5rem;display:none}
 .row{display:flex;align-items:center;gap:.5rem;margin:.25rem 0} .name{width:12rem;overflow:hidden;text-overflow:ellipsis}
 .track{flex:1;background:#eee;border-radius:4px;height:1.1rem} .bar{background:#2a6;height:100%;border-radius:4px}
 .pct{width:4rem;text-align:right;font-variant-numeric:tabular-nums} #error{color:#b00}
</style></head><body>
<h1>rlptune serve</h1>
<p class="muted" id="backbone">loading tasks&hellip;</p>
<label>Task <select id="task"></select></label>
<label>Top-k <input id="topk" type="number" value="5" min="1" max="100" style="width:4rem"></label>
<div id="drop">Drop an image here, or click to choose one<br>
 <input id="file" type="file" accept="image/*" style="display:none"><img id="preview" alt="preview"></div>
<p id="error" role="alert"></p>
<p>Prediction: <strong id="top-label"></strong></p>
<div id="results"></div>
<p class="muted"><a href="/docs">API docs</a> &middot; <a href="/metrics">metrics</a></p>
<script>
const $ = (id) => document.getElementById(id);
async function loadTasks() {
  const r = await fetch('/v1/tasks');
  const body = await r.json();
  if (!r.ok) { $('error').textContent = body.error; return; }
  $('backbone').textContent = 'backbone ' + body.backbone + ' \u00b7 ' + body.tasks.length + ' task(s)';
  for (const t of body.tasks) {
    const o = document.createElement('option');
    o.value = t.name; o.textContent = t.name + ' (' + t.method + ', ' + t.num_classes + ' classes)';
    $('task').appendChild(o);
  }
  document.body.dataset.ready = '1';
}
async function classify(file) {
  $('error').textContent = ''; $('top-label').textContent = ''; $('results').textContent = '';
  $('preview').src = URL.createObjectURL(file); $('preview').style.display = 'inline';
  const form = new FormData();
  form.append('task', $('task').value); form.append('top_k', $('topk').value); form.append('image', file, file.name);
  const r = await fetch('/v1/classify', {method: 'POST', body: form});
  const body = await r.json();
  if (!r.ok) { $('error').textContent = body.error; return; }
  const p = body.predictions[0];
  p.labels.forEach((label, i) => {
    const row = document.createElement('div'); row.className = 'row';
    const name = document.createElement('span'); name.className = 'name'; name.textContent = label;
    const track = document.createElement('div'); track.className = 'track';
    const bar = document.createElement('div'); bar.className = 'bar'; bar.style.width = (100 * p.probs[i]).toFixed(1) + '%';
    const pct = document.createElement('span'); pct.className = 'pct'; pct.textContent = (100 * p.probs[i]).toFixed(1) + '%';
    track.appendChild(bar); row.append(name, track, pct); $('results').appendChild(row);
  });
  $('top-label').textContent = p.labels[0];
}
$('drop').addEventListener('click', () => $('file').click());
$('file').addEventListener('change', () => { if ($('file').files.length) classify($('file').files[0]); });
$('drop').addEventListener('dragover', (e) => { e.preventDefault(); $('drop').classList.add('over'); });
$('drop').addEventListener('dragleave', () => $('drop').classList.remove('over'));
$('drop').addEventListener('drop', (e) => {
  e.preventDefault(); $('drop').classList.remove('over');
  if (e.dataTransfer.files.length) classify(e.dataTransfer.files[0]);
});
loadTasks();
</script></body></html>
"""
