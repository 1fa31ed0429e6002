// k6 load test for shiftserve: one constant-arrival-rate scenario per model, POSTing a small
// fixture to the task endpoint, with thresholds on errors, per-model latency, checks and dropped
// iterations, and Trends fed from the server's own timing headers.
//
//   k6 run loadtest/shiftserve.js                                  # all bundled models, 10 req/s each, 30 s
//   HOST=http://127.0.0.1:8080 RATE=20 DURATION=1m k6 run loadtest/shiftserve.js
//   MODELS=fashion,digits k6 run loadtest/shiftserve.js            # a subset
//   MODELS=tiny=shirt.png k6 run loadtest/shiftserve.js            # any model, with a fixture
//   OVERLOAD=1 k6 run loadtest/shiftserve.js                       # + a ramp far past capacity
//
// Environment (all optional):
//   HOST       base URL of the server                  default http://127.0.0.1:8080
//   MODELS     comma list: `name` or `name=fixture`    default fashion,digits,intent,intent-lstm
//              (fixture is a file in loadtest/fixtures/: .png/.jpg -> image, .wav -> audio)
//   RATE       requests per second, per model          default 10
//   DURATION   length of the constant-rate phase       default 30s
//   P95_MS / P99_MS  per-model latency thresholds      default 500 / 1000
//   MAX_DROPPED      dropped iterations allowed per model   default 0
//   TOP_K      top_k query parameter                   default 3
//   API_KEY    sent as `Authorization: Bearer ...` when set
//   SUMMARY    path of the JSON summary                default summary.json
//   OVERLOAD=1 adds the `overload` ramping scenario after the constant phase:
//     OVERLOAD_MODEL (default: intent if listed, else the first model), OVERLOAD_RATE (default 600),
//     OVERLOAD_DURATION (ramp length, default 20s), OVERLOAD_P99_MS (default 3000): answers must be
//     200 or 429, and the 99th percentile of every answer stays bounded; 429s are counted.
//
// No remote imports: the script runs offline.

import http from 'k6/http';
import { check } from 'k6';
import { Counter, Rate, Trend } from 'k6/metrics';

const HOST = (__ENV.HOST || 'http://127.0.0.1:8080').replace(/\/+$/, '');
const RATE = parsePositive('RATE', 10);
const DURATION = __ENV.DURATION || '30s';
const P95_MS = parsePositive('P95_MS', 500);
const P99_MS = parsePositive('P99_MS', 1000);
const MAX_DROPPED = parseNonNegative('MAX_DROPPED', 0);
const TOP_K = parsePositive('TOP_K', 3);
const SUMMARY = __ENV.SUMMARY || 'summary.json';
const OVERLOAD = ['1', 'true', 'yes'].includes((__ENV.OVERLOAD || '').toLowerCase());

function parsePositive(name, dflt) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v) || v <= 0) throw new Error(`${name} must be a positive number, got "${raw}"`);
  return v;
}

function parseNonNegative(name, dflt) {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return dflt;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < 0) throw new Error(`${name} must be a number >= 0, got "${raw}"`);
  return v;
}

// Default fixture per bundled model.
const DEFAULT_FIXTURES = {
  fashion: 'shirt.png',
  digits: 'digit.wav',
  intent: 'intent.wav',
  'intent-lstm': 'intent.wav',
};
const CONTENT_TYPES = { png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg', wav: 'audio/wav' };

function parseModels(spec) {
  const models = [];
  for (const item of spec.split(',').map((s) => s.trim()).filter((s) => s.length > 0)) {
    const eq = item.indexOf('=');
    const name = eq < 0 ? item : item.slice(0, eq).trim();
    const fixture = eq < 0 ? DEFAULT_FIXTURES[name] : item.slice(eq + 1).trim();
    if (!/^[A-Za-z0-9][A-Za-z0-9_.-]*$/.test(name)) throw new Error(`MODELS: bad model name "${name}"`);
    if (!fixture) {
      throw new Error(`MODELS: no default fixture for "${name}"; write it as ${name}=<file in loadtest/fixtures>`);
    }
    const ext = fixture.split('.').pop().toLowerCase();
    const contentType = CONTENT_TYPES[ext];
    if (!contentType) throw new Error(`MODELS: fixture "${fixture}" must be .png, .jpg or .wav`);
    if (models.some((m) => m.name === name)) throw new Error(`MODELS: "${name}" listed twice`);
    // Spoken-intent models answer an `intent` object: the bundled ones are named intent*, and the
    // intent utterance fixture is only meant for such models.
    models.push({ name, fixture, contentType, intent: name.startsWith('intent') || fixture === 'intent.wav' });
  }
  if (models.length === 0) throw new Error('MODELS is empty');
  return models;
}

const MODELS = parseModels(__ENV.MODELS || 'fashion,digits,intent,intent-lstm');

// Init context: fixtures are read once, as binary (ArrayBuffer), and shared by every iteration.
const PAYLOADS = {};
for (const m of MODELS) {
  if (!(m.fixture in PAYLOADS)) PAYLOADS[m.fixture] = open(`./fixtures/${m.fixture}`, 'b');
}

// Scenario names are k6 tag values; keep them to the model name (unique, validated above).
function scenarioName(model) {
  return model.replace(/[^A-Za-z0-9_]/g, '_');
}

// Server-side timings from the response headers (milliseconds; batch size is a count).
const serverQueue = new Trend('server_queue_ms', true);
const serverInference = new Trend('server_inference_ms', true);
const serverTotal = new Trend('server_total_ms', true);
const serverBatch = new Trend('server_batch_size');
const missingHeaders = new Rate('server_timing_headers_missing');
const overloadRejected = new Counter('overload_rejected');
const overloadAccepted = new Counter('overload_accepted');
// How fast the server says "no": latency of the 429 answers alone.
const overloadRejectedMs = new Trend('overload_rejected_ms', true);

function durationSeconds(d) {
  const m = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(d);
  if (!m) throw new Error(`DURATION must look like 500ms, 30s, 2m or 1h, got "${d}"`);
  const mult = { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2]];
  return Number(m[1]) * mult;
}

const scenarios = {};
const thresholds = {
  // Any non-2xx outside the overload scenario counts as failed (the overload requests declare
  // 429 as expected through their responseCallback).
  http_req_failed: ['rate<0.01'],
  checks: ['rate>0.99'],
  server_timing_headers_missing: ['rate<0.01'],
};

const preVUs = Math.max(2, Math.ceil(RATE / 4));
const maxVUs = Math.min(500, Math.max(10, Math.ceil(RATE * 4)));
for (const m of MODELS) {
  const s = scenarioName(m.name);
  scenarios[s] = {
    executor: 'constant-arrival-rate',
    exec: 'predict',
    rate: RATE,
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: preVUs,
    maxVUs,
    gracefulStop: '10s',
    env: { MODEL: m.name },
    tags: { model: m.name },
  };
  thresholds[`http_req_duration{scenario:${s}}`] = [`p(95)<${P95_MS}`, `p(99)<${P99_MS}`];
  thresholds[`checks{scenario:${s}}`] = ['rate>0.99'];
  thresholds[`dropped_iterations{scenario:${s}}`] = [`count<=${MAX_DROPPED}`];
  // The server's own view: queueing and total time stay inside the same budget.
  thresholds[`server_queue_ms{scenario:${s}}`] = [`p(95)<${P95_MS}`];
  thresholds[`server_total_ms{scenario:${s}}`] = [`p(99)<${P99_MS}`];
  thresholds[`server_inference_ms{scenario:${s}}`] = [`p(95)<${P95_MS}`];
  thresholds[`server_batch_size{scenario:${s}}`] = ['min>=1'];
}

if (OVERLOAD) {
  const names = MODELS.map((m) => m.name);
  const target = __ENV.OVERLOAD_MODEL || (names.includes('intent') ? 'intent' : names[0]);
  if (!names.includes(target)) throw new Error(`OVERLOAD_MODEL "${target}" is not in MODELS`);
  const peak = parsePositive('OVERLOAD_RATE', 600);
  const ramp = __ENV.OVERLOAD_DURATION || '20s';
  durationSeconds(ramp);
  const p99 = parsePositive('OVERLOAD_P99_MS', 3000);
  scenarios.overload = {
    executor: 'ramping-arrival-rate',
    exec: 'overload',
    startTime: DURATION, // after the constant-rate phase, so its thresholds stay meaningful
    startRate: RATE,
    timeUnit: '1s',
    stages: [
      { target: peak, duration: ramp },
      { target: peak, duration: '10s' },
    ],
    preAllocatedVUs: 20,
    // VUs needed ~ rate x latency; capped so the load generator itself stays small (each VU is a JS runtime).
    maxVUs: Math.min(300, Math.max(50, Math.ceil(peak * (p99 / 1000)))),
    gracefulStop: '10s',
    env: { MODEL: target },
    tags: { model: target },
  };
  // Overload must turn into fast 429s, not unbounded latency: every answer (200 or 429) is
  // bounded, and every answer is one of those two.
  thresholds['http_req_duration{scenario:overload}'] = [`p(99)<${p99}`];
  thresholds['checks{scenario:overload}'] = ['rate>0.99'];
}

export const options = {
  scenarios,
  thresholds,
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max', 'count'],
  discardResponseBodies: false,
  noConnectionReuse: false,
};

const MODEL_BY_NAME = {};
for (const m of MODELS) MODEL_BY_NAME[m.name] = m;

function header(res, name) {
  // k6 canonicalises header names (X-Queue-Time); look them up case-insensitively anyway.
  const want = name.toLowerCase();
  for (const k in res.headers) if (k.toLowerCase() === want) return res.headers[k];
  return undefined;
}

function recordTimings(res) {
  const q = parseFloat(header(res, 'x-queue-time'));
  const inf = parseFloat(header(res, 'x-inference-time'));
  const tot = parseFloat(header(res, 'x-total-time'));
  const b = parseFloat(header(res, 'x-batch-size'));
  const ok = [q, inf, tot, b].every((v) => Number.isFinite(v) && v >= 0);
  missingHeaders.add(!ok);
  if (ok) {
    serverQueue.add(q);
    serverInference.add(inf);
    serverTotal.add(tot);
    serverBatch.add(b);
  }
  return ok;
}

function post(model, extraParams) {
  const url = `${HOST}/v1/models/${encodeURIComponent(model.name)}/predict?top_k=${TOP_K}`;
  const headers = { 'Content-Type': model.contentType };
  if (__ENV.API_KEY) headers.Authorization = `Bearer ${__ENV.API_KEY}`;
  return http.post(url, PAYLOADS[model.fixture], Object.assign({ headers, tags: { name: `predict ${model.name}` } }, extraParams || {}));
}

function parseBody(res) {
  try {
    return res.json();
  } catch (e) {
    return null;
  }
}

// First answer this VU saw per model: the same fixture must keep the same top-1 whatever batch it
// lands in (batched execution must not change results).
const FIRST_TOP = {};

export function predict() {
  const model = MODEL_BY_NAME[__ENV.MODEL];
  const res = post(model);
  const body = res.status === 200 ? parseBody(res) : null;
  const timed = res.status === 200 ? recordTimings(res) : false;
  const checks = {
    'status is 200': (r) => r.status === 200,
    'answer names the model': () => body !== null && body.model === model.name,
    'predictions are ranked with scores in [0,1]': () =>
      body !== null &&
      Array.isArray(body.predictions) &&
      body.predictions.length > 0 &&
      body.predictions.length <= TOP_K &&
      body.predictions.every((p, i) =>
        typeof p.label === 'string' && Number.isInteger(p.index) && p.score >= 0 && p.score <= 1 &&
        (i === 0 || p.score <= body.predictions[i - 1].score)),
    'timing headers present': () => timed,
    'same input, same top-1 under load': () => {
      if (body === null || !Array.isArray(body.predictions) || body.predictions.length === 0) return false;
      const top = body.predictions[0].label;
      if (!(model.name in FIRST_TOP)) FIRST_TOP[model.name] = top;
      return FIRST_TOP[model.name] === top;
    },
  };
  if (model.intent) {
    checks['intent has action/object/location'] = () =>
      body !== null && body.intent !== undefined && body.intent !== null &&
      typeof body.intent.action === 'string' && typeof body.intent.object === 'string' &&
      typeof body.intent.location === 'string';
  }
  check(res, checks);
}

const ACCEPT_200_429 = http.expectedStatuses(200, 429);

export function overload() {
  const model = MODEL_BY_NAME[__ENV.MODEL];
  const res = post(model, { responseCallback: ACCEPT_200_429, timeout: '30s' });
  if (res.status === 429) {
    overloadRejected.add(1);
    overloadRejectedMs.add(res.timings.duration);
  }
  if (res.status === 200) {
    overloadAccepted.add(1);
    recordTimings(res);
  }
  check(res, {
    'overload: 200 or 429': (r) => r.status === 200 || r.status === 429,
    'overload: 429 carries Retry-After': (r) => r.status !== 429 || header(r, 'retry-after') !== undefined,
  });
}

// ---- summary --------------------------------------------------------------------------------

function fmt(v, digits) {
  return v === undefined || v === null ? '-' : Number(v).toFixed(digits === undefined ? 1 : digits);
}

function pad(s, n) {
  s = String(s);
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

export function handleSummary(data) {
  const lines = [];
  const metric = (name) => (data.metrics[name] ? data.metrics[name].values : undefined);
  lines.push(`shiftserve load test against ${HOST}: ${MODELS.length} model(s) at ${RATE} req/s each for ${DURATION}${OVERLOAD ? ' + overload ramp' : ''}`);
  lines.push('');
  lines.push(pad('scenario', 14) + pad('requests', 10) + pad('p50 ms', 9) + pad('p95 ms', 9) + pad('p99 ms', 9) +
    pad('srv queue p95', 15) + pad('srv infer p95', 15) + pad('batch avg', 10) + 'dropped');
  for (const s of Object.keys(scenarios)) {
    const d = metric(`http_req_duration{scenario:${s}}`) || {};
    const q = metric(`server_queue_ms{scenario:${s}}`) || {};
    const inf = metric(`server_inference_ms{scenario:${s}}`) || {};
    const b = metric(`server_batch_size{scenario:${s}}`) || {};
    const dr = metric(`dropped_iterations{scenario:${s}}`) || {};
    lines.push(pad(s, 14) + pad(d.count === undefined ? '-' : d.count, 10) + pad(fmt(d.med), 9) + pad(fmt(d['p(95)']), 9) +
      pad(fmt(d['p(99)']), 9) + pad(fmt(q['p(95)'], 2), 15) + pad(fmt(inf['p(95)'], 2), 15) + pad(fmt(b.avg, 2), 10) +
      (s === 'overload' ? '-' : dr.count === undefined ? 0 : dr.count));
  }
  if (OVERLOAD) {
    const rej = (metric('overload_rejected') || {}).count || 0;
    const acc = (metric('overload_accepted') || {}).count || 0;
    lines.push('');
    const rl = metric('overload_rejected_ms') || {};
    // dropped iterations of the overload scenario = all dropped minus those of the constant phase
    let droppedOverload = ((metric('dropped_iterations') || {}).count || 0);
    for (const s of Object.keys(scenarios)) {
      if (s !== 'overload') droppedOverload -= ((metric(`dropped_iterations{scenario:${s}}`) || {}).count || 0);
    }
    lines.push(`overload: ${acc} accepted, ${rej} rejected with 429 (${fmt((100 * rej) / Math.max(1, rej + acc))}%); ` +
      `429 answers p50 ${fmt(rl.med)} ms, p99 ${fmt(rl['p(99)'])} ms; ` +
      `${droppedOverload} iterations not sent (k6 out of VUs: the load generator's own limit)`);
  }
  lines.push('');
  let failed = 0;
  for (const [name, m] of Object.entries(data.metrics)) {
    if (!m.thresholds) continue;
    for (const [expr, t] of Object.entries(m.thresholds)) {
      if (!t.ok) {
        failed += 1;
        lines.push(`THRESHOLD FAILED: ${name} ${expr}`);
      }
    }
  }
  const total = Object.values(data.metrics).reduce((n, m) => n + (m.thresholds ? Object.keys(m.thresholds).length : 0), 0);
  lines.push(total === 0 ? 'thresholds: none evaluated (--no-thresholds)' : `thresholds: ${total - failed} passed, ${failed} failed`);
  lines.push(`summary written to ${SUMMARY}`);
  const out = {};
  out[SUMMARY] = JSON.stringify(data, null, 2);
  out.stdout = lines.join('\n') + '\n';
  return out;
}
