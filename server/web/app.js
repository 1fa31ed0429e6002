// shiftserve model playground. Talks only to the server that served it, through the public API
// (docs/api.md): GET /v1/models, POST /v1/models/{m}/predict, GET /v2/models/stats,
// GET /v2/health/ready, GET /v2.
import { encodeWav, concat } from './wav.js';

const KEY_STORE = 'shiftserve.apiKey';
const MAX_RECORD_S = 10;
const STATS_EVERY_MS = 2000;
const SPARK_POINTS = 30;

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === 'class') e.className = v;
    else if (k === 'text') e.textContent = v;
    else if (k.startsWith('data-') || k.startsWith('aria-') || k === 'role' || k === 'title') e.setAttribute(k, v);
    else e[k] = v;
  }
  for (const c of children) if (c != null) e.append(c);
  return e;
};
const fmtMs = (x) => (x == null ? '–' : x < 10 ? x.toFixed(2) + ' ms' : x < 100 ? x.toFixed(1) + ' ms' : Math.round(x) + ' ms');
const fmtBytes = (n) => (n >= 1 << 20 ? (n / (1 << 20)).toFixed(2) + ' MiB' : n >= 1024 ? (n / 1024).toFixed(1) + ' KiB' : n + ' B');
const fmtInt = (n) => Number(n).toLocaleString('en-US');

const state = {
  key: sessionStorage.getItem(KEY_STORE) || '',
  models: [],
  model: null,       // the selected model summary from /v1/models
  input: null,       // {blob, name, type}
  busy: false,
  prevStats: null,   // {t, counts: Map}
  history: new Map(), // "name/version" -> [req/s...]
};

// ---------- API ----------

class ApiError extends Error {
  constructor(status, statusText, message) {
    super(message);
    this.status = status;
    this.statusText = statusText;
  }
}

/** fetch() with the API key; a non-2xx answer throws ApiError with the server's message. */
async function api(path, init = {}) {
  const headers = new Headers(init.headers || {});
  if (state.key) headers.set('Authorization', 'Bearer ' + state.key);
  let resp;
  try {
    resp = await fetch(path, { ...init, headers, cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'network error', 'cannot reach the server: ' + e.message);
  }
  if (!resp.ok) {
    let message = '';
    const text = await resp.text();
    try { message = JSON.parse(text).error; } catch { /* not JSON */ }
    throw new ApiError(resp.status, resp.statusText, message || text || resp.statusText);
  }
  return resp;
}

// ---------- API key ----------

function showKeyPanel(open, message, tone) {
  $('key-panel').hidden = !open;
  $('key-toggle').setAttribute('aria-expanded', String(open));
  if (message !== undefined) {
    $('key-msg').textContent = message;
    $('key-msg').className = 'key-msg' + (tone ? ' ' + tone : '');
  }
  if (open) $('api-key').focus();
}

function setupKey() {
  $('api-key').value = state.key;
  $('key-toggle').textContent = state.key ? 'API key ✓' : 'API key';
  $('key-toggle').addEventListener('click', () => showKeyPanel($('key-panel').hidden, ''));
  $('key-form').addEventListener('submit', async (e) => {
    e.preventDefault();
    state.key = $('api-key').value.trim();
    if (state.key) sessionStorage.setItem(KEY_STORE, state.key); else sessionStorage.removeItem(KEY_STORE);
    $('key-toggle').textContent = state.key ? 'API key ✓' : 'API key';
    if (await loadModels()) {
      showKeyPanel(false, state.key ? 'Key accepted.' : '', 'good');
    }
  });
  $('key-forget').addEventListener('click', () => {
    state.key = '';
    $('api-key').value = '';
    sessionStorage.removeItem(KEY_STORE);
    $('key-toggle').textContent = 'API key';
    $('key-msg').textContent = 'Key forgotten.';
    $('key-msg').className = 'key-msg';
  });
}

function handleAuth(err) {
  if (err instanceof ApiError && err.status === 401) {
    showKeyPanel(true, `${err.status}: ${err.message}`, 'bad');
    return true;
  }
  return false;
}

// ---------- server status ----------

async function pollHealth() {
  const h = $('health');
  try {
    const r = await fetch('/v2/health/ready', { cache: 'no-store' });
    if (r.ok) { h.dataset.state = 'ready'; h.lastChild.textContent = 'ready'; }
    else {
      let msg = 'not ready';
      try { msg = (await r.json()).error || msg; } catch { /* keep */ }
      h.dataset.state = 'unavailable'; h.lastChild.textContent = 'not ready'; h.title = msg;
    }
  } catch {
    h.dataset.state = 'down'; h.lastChild.textContent = 'unreachable';
  }
}

async function loadServerInfo() {
  try {
    const meta = await (await api('/v2')).json();
    $('server-version').textContent = 'v' + meta.version;
    $('foot-version').textContent = meta.version;
  } catch { /* shown by the model list */ }
}

// ---------- models ----------

async function loadModels() {
  const list = $('model-list');
  try {
    const { models } = await (await api('/v1/models')).json();
    state.models = models;
    list.replaceChildren();
    if (models.length === 0) {
      list.append(el('p', { class: 'muted', text: 'No model is loaded. Load one (POST /v2/repository/models/{name}/load in explicit mode) and reload this page.' }));
      return true;
    }
    for (const m of models) {
      const b = el('button', { type: 'button', class: 'model', role: 'radio', 'aria-checked': 'false', 'data-model': m.name },
        el('span', { class: 'task', text: m.input.kind }),
        el('span', { class: 'name', text: m.name }),
        el('span', { class: 'desc', text: m.description, title: m.description }));
      b.addEventListener('click', () => selectModel(m.name));
      list.append(b);
    }
    const want = new URLSearchParams(location.hash.slice(1)).get('model');
    const keep = state.model && models.find((m) => m.name === state.model.name);
    selectModel((keep && keep.name) || (models.find((m) => m.name === want) || models[0]).name);
    loadServerInfo();
    return true;
  } catch (err) {
    list.replaceChildren(el('p', { class: 'error inline', text: err.status ? `${err.status} ${err.statusText}: ${err.message}` : err.message }));
    handleAuth(err);
    return false;
  }
}

function selectModel(name) {
  const m = state.models.find((x) => x.name === name);
  if (!m) return;
  const changedKind = !state.model || state.model.input.kind !== m.input.kind;
  state.model = m;
  history.replaceState(null, '', '#model=' + encodeURIComponent(name));
  for (const b of document.querySelectorAll('.model')) b.setAttribute('aria-checked', String(b.dataset.model === name));
  for (const tr of document.querySelectorAll('#live-body tr')) tr.classList.toggle('selected', tr.dataset.model === name);

  const facts = $('model-facts');
  facts.replaceChildren();
  const pp = m.input.preprocess || {};
  const audio = m.input.kind === 'audio';
  const inputDesc = audio
    ? `WAV → ${pp.seconds ? pp.seconds + ' s at ' : ''}${pp.sample_rate ? pp.sample_rate / 1000 + ' kHz → ' : ''}log-mel [${m.input.shape.join(', ')}]`
    : `image → [${m.input.shape.join(', ')}]`;
  const rows = [
    ['task', m.task],
    ['version', m.versions.length > 1 ? `${m.version} (loaded: ${m.versions.join(', ')})` : m.version],
    ['input', inputDesc],
    ['classes', String(m.num_classes)],
    ['weights', `${m.weight_bits.map((b) => b + '-bit').join(', ') || 'fp32'} · ${m.numeric_path}`],
    ['size', `${fmtBytes(m.file_bytes)} (${m.compression_ratio.toFixed(1)}× smaller than fp32)`],
    ['parameters', fmtInt(m.parameters)],
    ...(m.tensor_train ? [['tensor train', `${fmtInt(m.tensor_train.params)} LSTM matrix parameters vs ${fmtInt(m.tensor_train.dense_params)} dense (${(100 * m.tensor_train.storage_fraction).toFixed(1)} %)`]] : []),
    ['kernel ISA', m.kernel_isa],
    ['layer kernels', kernelSummary(m) || '–'],
    ['batching', `max ${m.max_batch_size} · ${m.instances} instance${m.instances === 1 ? '' : 's'} × ${m.threads} thread${m.threads === 1 ? '' : 's'}`],
  ];
  for (const [k, v] of rows) facts.append(el('dt', { text: k }), el('dd', { text: v, 'data-fact': k }));
  const layers = $('layer-kernels');
  layers.hidden = !(m.layers && m.layers.length);
  const tbody = $('layer-kernels-body');
  tbody.replaceChildren();
  for (const l of m.layers || []) tbody.append(el('tr', {}, el('td', { text: l.node }), el('td', { text: l.kernel })));

  $('image-input').hidden = audio;
  if (audio && !rec.node) {
    $('rec-hint').textContent = `Speak after pressing Record${pp.seconds ? `; the model hears the first ${pp.seconds} s` : ''}. Stops by itself after ${MAX_RECORD_S} s.`;
  }
  $('audio-input').hidden = !audio;
  const topk = $('top-k');
  topk.max = String(m.num_classes);
  if (Number(topk.value) > m.num_classes) topk.value = String(m.num_classes);
  if (changedKind) clearInput();
  updateRunButton();
  if (state.input && !changedKind) classify();
}

/** "dot-avx512vnni ×6, linear-fp32 ×1": what runs the model's layers, most used first. */
function kernelSummary(m) {
  const counts = new Map();
  for (const l of m.layers || []) counts.set(l.kernel, (counts.get(l.kernel) || 0) + 1);
  return [...counts].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k} ×${n}`).join(', ');
}

/** "dot-avx512vnni (6 of 9 layers)": the kernel that runs most of the model's layers. */
function mainKernel(m) {
  const layers = m.layers || [];
  if (layers.length === 0) return '';
  const counts = new Map();
  for (const l of layers) counts.set(l.kernel, (counts.get(l.kernel) || 0) + 1);
  const [k, n] = [...counts].sort((a, b) => b[1] - a[1])[0];
  return `${k} (${n} of ${layers.length} layers)`;
}

// ---------- input ----------

function clearInput() {
  state.input = null;
  $('input-name').textContent = '';
  const img = $('image-preview');
  if (img.src) URL.revokeObjectURL(img.src);
  img.removeAttribute('src');
  img.hidden = true;
  $('image-drop').classList.remove('has-image');
  $('clip').hidden = true;
  rec.last = null;
  drawWave(null);
  updateRunButton();
}

/** Draws an uploaded audio file's waveform (the browser's decoder; the server decodes it again). */
async function drawFile(blob) {
  try {
    const ctx = new OfflineAudioContext(1, 1, 16000);
    const audio = await ctx.decodeAudioData(await blob.arrayBuffer());
    rec.last = audio.getChannelData(0);
    $('rec-time').textContent = audio.duration.toFixed(1) + ' s';
    $('rec-hint').textContent = 'From a file; press Record to speak instead.';
  } catch {
    rec.last = null;
    $('rec-time').textContent = '–';
    $('rec-hint').textContent = 'This browser cannot decode the file; the server will say what it makes of it.';
  }
  drawWave(rec.last);
}

function updateRunButton() {
  $('run-btn').disabled = !state.model || !state.input || state.busy;
}

function setInput(blob, name, { auto = true } = {}) {
  state.input = { blob, name, type: blob.type };
  const kb = fmtBytes(blob.size);
  $('input-name').textContent = `${name} · ${blob.type || 'unknown type'} · ${kb}`;
  if (!$('image-input').hidden) {
    const img = $('image-preview');
    if (img.src) URL.revokeObjectURL(img.src);
    if (blob.type.startsWith('image/')) {
      img.src = URL.createObjectURL(blob);
      img.hidden = false;
      $('image-drop').classList.add('has-image');
    } else {
      img.hidden = true;
      img.removeAttribute('src');
      $('image-drop').classList.remove('has-image');
    }
  } else {
    const audio = $('clip-audio');
    if (audio.src) URL.revokeObjectURL(audio.src);
    audio.src = URL.createObjectURL(blob);
    $('clip-download').href = audio.src;
    $('clip-download').download = name.endsWith('.wav') ? name : 'recording.wav';
    $('clip').hidden = false;
    if (blob !== rec.blob) drawFile(blob);
  }
  updateRunButton();
  if (auto) classify();
}

function setupDropzone(zoneId, inputId) {
  const zone = $(zoneId);
  const input = $(inputId);
  input.addEventListener('change', () => {
    if (input.files && input.files[0]) setInput(input.files[0], input.files[0].name);
    input.value = '';
  });
  zone.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' || e.key === ' ') { e.preventDefault(); input.click(); }
  });
  zone.addEventListener('dragover', (e) => { e.preventDefault(); zone.classList.add('over'); });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (e) => {
    e.preventDefault();
    zone.classList.remove('over');
    const f = e.dataTransfer.files && e.dataTransfer.files[0];
    if (f) setInput(f, f.name);
  });
}

function setupPaste() {
  document.addEventListener('paste', (e) => {
    if (!state.model || state.model.input.kind !== 'image') return;
    for (const item of e.clipboardData.items) {
      if (item.kind === 'file') {
        const f = item.getAsFile();
        if (f) { setInput(f, f.name || 'pasted image'); e.preventDefault(); return; }
      }
    }
  });
}

// ---------- recorder ----------

const rec = { ctx: null, stream: null, node: null, chunks: [], started: 0, timer: 0, stopping: null, last: null, blob: null };

function drawWave(samples) {
  const c = $('wave');
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(c.clientWidth * dpr));
  const h = Math.max(1, Math.round(c.clientHeight * dpr));
  if (c.width !== w || c.height !== h) { c.width = w; c.height = h; }
  const g = c.getContext('2d');
  g.clearRect(0, 0, w, h);
  g.fillStyle = getComputedStyle(document.documentElement).getPropertyValue('--accent').trim() || '#4f46e5';
  if (!samples || samples.length === 0) return;
  // Columns over the whole recording (at least MAX_RECORD_S wide while recording).
  const span = Math.max(samples.length, rec.ctx && rec.node ? MAX_RECORD_S * rec.ctx.sampleRate : 0);
  const per = span / w;
  for (let x = 0; x < w; x++) {
    const a = Math.floor(x * per);
    const b = Math.min(samples.length, Math.floor((x + 1) * per));
    if (a >= samples.length) break;
    let peak = 0;
    for (let i = a; i < b; i++) { const v = Math.abs(samples[i]); if (v > peak) peak = v; }
    const bar = Math.max(1, peak * h * 0.95);
    g.fillRect(x, (h - bar) / 2, 1, bar);
  }
}

async function startRecording() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    showError(null, 'This browser cannot record here: the microphone needs a secure context (https or localhost). Upload a WAV instead.');
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
  } catch (e) {
    showError(null, 'Microphone unavailable: ' + (e.message || e.name));
    return;
  }
  let ctx, node;
  try {
    ctx = new AudioContext();
    await ctx.audioWorklet.addModule('/ui/recorder-worklet.js');
    const src = ctx.createMediaStreamSource(stream);
    node = new AudioWorkletNode(ctx, 'pcm-recorder', { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    // Keep the node pulled by the graph without playing the microphone back.
    const mute = ctx.createGain();
    mute.gain.value = 0;
    src.connect(node).connect(mute).connect(ctx.destination);
  } catch (e) {
    stream.getTracks().forEach((t) => t.stop());
    if (ctx) ctx.close();
    showError(null, 'Cannot start the recorder: ' + (e.message || e.name));
    return;
  }
  Object.assign(rec, { ctx, stream, node, chunks: [], started: performance.now() });
  let resolveDone;
  rec.stopping = new Promise((r) => { resolveDone = r; });
  node.port.onmessage = (e) => {
    if (e.data.samples) {
      rec.chunks.push(e.data.samples);
      $('rec-level').style.width = Math.min(100, e.data.peak * 140) + '%';
    }
    if (e.data.done) resolveDone();
  };
  $('record-btn').setAttribute('aria-pressed', 'true');
  $('record-btn').lastChild.textContent = 'Stop';
  $('rec-hint').textContent = 'Recording… press Stop when done.';
  rec.timer = setInterval(() => {
    const s = (performance.now() - rec.started) / 1000;
    $('rec-time').textContent = s.toFixed(1) + ' s';
    drawWave(concat(rec.chunks));
    if (s >= MAX_RECORD_S) stopRecording();
  }, 100);
}

async function stopRecording() {
  if (!rec.node) return;
  clearInterval(rec.timer);
  const { ctx, stream, node } = rec;
  node.port.postMessage('stop');
  await Promise.race([rec.stopping, new Promise((r) => setTimeout(r, 500))]);
  rec.node = null;
  stream.getTracks().forEach((t) => t.stop());
  const rate = ctx.sampleRate;
  await ctx.close();
  rec.ctx = null;
  $('record-btn').setAttribute('aria-pressed', 'false');
  $('record-btn').lastChild.textContent = 'Record';
  $('rec-level').style.width = '0';
  const samples = concat(rec.chunks);
  rec.chunks = [];
  rec.last = samples;
  drawWave(samples);
  const secs = samples.length / rate;
  $('rec-time').textContent = secs.toFixed(1) + ' s';
  $('rec-hint').textContent = `Recorded ${secs.toFixed(1)} s at ${rate / 1000} kHz, sent as 16-bit PCM WAV.`;
  if (samples.length === 0) {
    showError(null, 'Nothing was recorded: check that the microphone is allowed and working.');
    return;
  }
  const blob = new Blob([encodeWav(samples, rate)], { type: 'audio/wav' });
  rec.blob = blob;
  setInput(blob, 'recording.wav');
}

function setupRecorder() {
  $('record-btn').addEventListener('click', () => (rec.node ? stopRecording() : startRecording()));
  window.addEventListener('resize', () => { if (!rec.node) drawWave(rec.last); });
}

// ---------- classify ----------

function setResultState(s) { $('result').dataset.state = s; }

function showError(err, text) {
  $('result-empty').hidden = true;
  $('answer').hidden = true;
  $('error').hidden = false;
  if (err) {
    $('error-status').textContent = err.status ? `HTTP ${err.status} ${err.statusText}` : 'Error';
    $('error-msg').textContent = err.message;
  } else {
    $('error-status').textContent = 'Error';
    $('error-msg').textContent = text;
  }
  setResultState('error');
}

async function classify() {
  if (!state.model || !state.input || state.busy) return;
  state.busy = true;
  updateRunButton();
  setResultState('pending');
  const m = state.model;
  const topk = Math.max(1, Math.min(m.num_classes, Number($('top-k').value) || 5));
  const url = `/v1/models/${encodeURIComponent(m.name)}/predict?top_k=${topk}`;
  const t0 = performance.now();
  try {
    const resp = await api(url, {
      method: 'POST',
      headers: { 'Content-Type': state.input.type || 'application/octet-stream' },
      body: state.input.blob,
    });
    const body = await resp.json();
    showAnswer(body, resp.headers, performance.now() - t0, m);
  } catch (err) {
    if (!(err instanceof ApiError)) throw err;
    showError(err);
    handleAuth(err);
  } finally {
    state.busy = false;
    updateRunButton();
  }
}

function showAnswer(body, headers, roundTripMs, model) {
  $('result-empty').hidden = true;
  $('error').hidden = true;
  $('answer').hidden = false;

  const intent = body.intent;
  $('intent').hidden = !intent;
  const unsure = $('not-understood');
  unsure.hidden = body.understood !== false;
  if (body.understood === false) {
    unsure.textContent = `Not understood: the top score ${(body.predictions[0].score * 100).toFixed(1)}% ` +
      `is below this model's threshold of ${(body.threshold * 100).toFixed(1)}%. The scores are shown below.`;
  }
  if (intent) {
    $('intent-action').textContent = intent.action;
    $('intent-object').textContent = intent.object;
    $('intent-location').textContent = intent.location;
  }

  const list = $('predictions');
  list.replaceChildren();
  for (const p of body.predictions) {
    const pct = (p.score * 100);
    list.append(el('li', { 'data-label': p.label, 'data-score': String(p.score) },
      el('span', { class: 'label', title: p.label }, p.label, el('small', { text: '#' + p.index })),
      el('span', { class: 'score', text: pct >= 99.95 ? '100%' : pct.toFixed(pct < 10 ? 2 : 1) + '%' }),
      el('div', { class: 'track' }, el('div', { class: 'fill', style: `width:${Math.max(0.5, pct).toFixed(2)}%` }))));
  }

  const t = body.timing;
  const other = Math.max(0, t.total_ms - t.queue_ms - t.preprocess_ms - t.inference_ms);
  const parts = [
    ['queue', t.queue_ms, 'k-queue'],
    ['preprocess', t.preprocess_ms, 'k-pre'],
    ['inference', t.inference_ms, 'k-infer'],
    ['other', other, 'k-other'],
  ];
  const bar = $('timing-bar');
  bar.replaceChildren();
  for (const [name, ms, cls] of parts) {
    if (t.total_ms > 0) bar.append(el('span', { class: cls, title: `${name} ${fmtMs(ms)}`, style: `width:${(100 * ms / t.total_ms).toFixed(2)}%` }));
  }
  const dl = $('timing');
  dl.replaceChildren();
  // "other": the rest of the server's time (reading the body, handing results back).
  for (const [name, ms, cls] of [...parts, ['server total', t.total_ms, ''], ['round trip', roundTripMs, '']]) {
    dl.append(el('div', { class: cls, 'data-timing': name }, el('dt', { text: name }), el('dd', { text: fmtMs(ms) })));
  }

  const meta = $('answer-meta');
  meta.replaceChildren();
  const rows = [
    ['model', `${body.model} v${body.version}`],
    ['kernel', [model.kernel_isa, mainKernel(model)].filter(Boolean).join(' · ')],
    ['batch size', headers.get('x-batch-size') || '–'],
    ['request id', headers.get('x-request-id') || '–'],
  ];
  for (const [k, v] of rows) meta.append(el('dt', { text: k }), el('dd', { text: v, 'data-meta': k }));
  setResultState('done');
}

// ---------- live statistics ----------

function sparkline(values) {
  const w = 120, h = 26;
  const max = Math.max(1, ...values);
  const n = SPARK_POINTS;
  const pts = values.map((v, i) => [(w * (n - values.length + i)) / (n - 1), h - 2 - ((h - 4) * v) / max]);
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('class', 'spark');
  svg.setAttribute('width', w);
  svg.setAttribute('height', h);
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  if (pts.length > 1) {
    const line = pts.map(([x, y], i) => `${i ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`).join('');
    const area = document.createElementNS(svg.namespaceURI, 'path');
    area.setAttribute('class', 'area');
    area.setAttribute('d', `${line}L${pts[pts.length - 1][0].toFixed(1)},${h}L${pts[0][0].toFixed(1)},${h}Z`);
    const path = document.createElementNS(svg.namespaceURI, 'path');
    path.setAttribute('d', line);
    svg.append(area, path);
  }
  return svg;
}

async function pollStats() {
  if (document.hidden) return;
  let stats;
  try {
    stats = (await (await api('/v2/models/stats')).json()).model_stats;
    $('live-error').hidden = true;
  } catch (err) {
    $('live-error').hidden = false;
    $('live-error').textContent = err.status ? `${err.status} ${err.statusText}: ${err.message}` : err.message;
    return;
  }
  const now = performance.now();
  const counts = new Map();
  const body = $('live-body');
  body.replaceChildren();
  if (stats.length === 0) {
    body.append(el('tr', {}, el('td', { colSpan: 9, class: 'muted', text: 'no model loaded' })));
  }
  for (const s of stats) {
    const id = `${s.name}/${s.version}`;
    const total = s.inference_stats.success.count + s.inference_stats.fail.count;
    counts.set(id, total);
    let rate = null;
    if (state.prevStats && state.prevStats.counts.has(id)) {
      const dt = (now - state.prevStats.t) / 1000;
      rate = Math.max(0, total - state.prevStats.counts.get(id)) / dt;
      const h = state.history.get(id) || [];
      h.push(rate);
      if (h.length > SPARK_POINTS) h.shift();
      state.history.set(id, h);
    }
    const p = s.latency_percentiles.request;
    const tr = el('tr', { 'data-model': s.name },
      el('td', { class: 'name', text: s.name }),
      el('td', { text: s.version }),
      el('td', { class: 'num', 'data-col': 'rate', text: rate == null ? '–' : rate.toFixed(rate < 10 ? 1 : 0) }),
      el('td', {}, sparkline(state.history.get(id) || [])),
      el('td', { class: 'num', 'data-col': 'requests', text: fmtInt(s.inference_stats.success.count) }),
      el('td', { class: 'num', 'data-col': 'failed', text: fmtInt(s.inference_stats.fail.count) }),
      el('td', { class: 'num', 'data-col': 'p50', text: fmtMs(p.p50_ms) }),
      el('td', { class: 'num', 'data-col': 'p95', text: fmtMs(p.p95_ms) }),
      el('td', { class: 'num', 'data-col': 'p99', text: fmtMs(p.p99_ms) }));
    if (state.model && state.model.name === s.name) tr.classList.add('selected');
    body.append(tr);
  }
  state.prevStats = { t: now, counts };
}

// ---------- start ----------

function main() {
  setupKey();
  setupDropzone('image-drop', 'image-file');
  setupDropzone('wav-drop', 'wav-file');
  setupPaste();
  setupRecorder();
  $('run-btn').addEventListener('click', () => classify());
  $('top-k').addEventListener('change', () => { if (state.input) classify(); });
  pollHealth();
  setInterval(pollHealth, 5000);
  loadModels();
  pollStats();
  setInterval(pollStats, STATS_EVERY_MS);
}

main();
