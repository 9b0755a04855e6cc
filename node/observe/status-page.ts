// The status page at `/` of the node's HTTP listener: one self-contained HTML page (inline CSS
// and script, nothing fetched from elsewhere) that renders the events of `/events` (events.ts).
//
// Every string in those events comes from the network or the store (peer ids, derivation
// paths, log lines, failure messages). The script builds the page with createElement and
// textContent only, never innerHTML, so markup in a log line shows as text; and the
// Content-Security-Policy admits this one script (by its hash) and connections to this origin,
// so even a slip could neither run injected script nor send anything away.
import { createHash } from 'node:crypto'

const STYLE = `
:root { color-scheme: light dark; --ok: #2e8b57; --run: #1e6fd9; --queue: #b0b7c3; --wait: #d8dce3; --fail: #c62828; --depfail: #ef9a9a; --sub: #7cb342; }
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; padding: 0 1em 2em; max-width: 72em; }
header { display: flex; align-items: baseline; gap: 1em; flex-wrap: wrap; border-bottom: 1px solid #8884; }
h1 { font-size: 1.3em; margin: .6em 0; }
h2 { font-size: 1.05em; margin: 1.2em 0 .4em; }
.muted { color: #888; }
code, pre, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 12.5px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .6em .25em 0; vertical-align: top; border-bottom: 1px solid #8882; }
th { font-weight: 600; }
pre { margin: .3em 0 .8em; padding: .4em .6em; background: #8881; border-radius: 4px; max-height: 16em; overflow: auto; white-space: pre-wrap; word-break: break-all; }
.bar { display: flex; height: .9em; width: 22em; max-width: 100%; background: #8882; border-radius: 3px; overflow: hidden; }
.bar span { display: block; height: 100%; }
.s-built { background: var(--ok); } .s-substituted { background: var(--sub); } .s-running { background: var(--run); }
.s-queued { background: var(--queue); } .s-waiting { background: var(--wait); } .s-failed { background: var(--fail); } .s-dependency-failed { background: var(--depfail); }
.key { display: inline-block; width: .8em; height: .8em; margin: 0 .25em 0 .6em; border-radius: 2px; vertical-align: -.05em; }
#conn.live { color: var(--ok); } #conn.down { color: var(--fail); }
.build h3, .failure h3 { font-size: 1em; margin: .6em 0 0; font-weight: 600; }
.failure h3 { color: var(--fail); }
`

const SCRIPT = `
'use strict';
const STATES = ['built', 'substituted', 'running', 'queued', 'waiting', 'failed', 'dependency-failed'];
const TAIL = 40;
const $ = (id) => document.getElementById(id);
// Every string shown goes through text nodes: h() never parses markup.
function h (tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (k === 'class') el.className = v; else if (k === 'title') el.title = v; else if (k === 'style') el.style.cssText = v; else el.dataset[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) el.append(typeof c === 'string' ? document.createTextNode(c) : c);
  return el;
}
const short = (id) => id.length > 16 ? id.slice(0, 8) + '…' + id.slice(-6) : id;
// /nix/store/<hash>-<name>.drv shows as <name>; the whole path in its tooltip.
const drvName = (p) => { const base = p.split('/').pop() || p; const m = /^[0-9a-z]{32}-(.*?)(\\.drv)?$/.exec(base); return m ? m[1] : base; };
const drv = (p) => h('span', { class: 'mono', title: p }, drvName(p));
const ago = (iso) => { const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000)); return s < 60 ? s + ' s ago' : Math.round(s / 60) + ' min ago'; };
const bytes = (n) => n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : n < 1073741824 ? (n / 1048576).toFixed(1) + ' MiB' : (n / 1073741824).toFixed(2) + ' GiB';
const logs = new Map();

function section (id, ...children) { $(id).replaceChildren(...children); }
function empty (text) { return h('p', { class: 'muted' }, text); }

function renderPeers (s) {
  const rows = s.peers.map(p => h('tr', { peer: p.peerId },
    h('td', { class: 'mono', title: p.peerId }, short(p.peerId), p.self ? h('span', { class: 'muted' }, ' (this node)') : null),
    h('td', {}, p.systems.join(', ')),
    h('td', {}, p.running + ' / ' + p.maxJobs + (p.queued > 0 ? ' (+' + p.queued + ' queued)' : '')),
    h('td', {}, p.load.toFixed(2) + (p.diskLow ? ' · disk low' : '')),
    h('td', {}, ...(p.building.length === 0 ? [h('span', { class: 'muted' }, 'idle')] : p.building.flatMap((b, i) => i === 0 ? [drv(b)] : [', ', drv(b)]))),
    h('td', { class: 'muted' }, p.self ? 'now' : ago(p.lastSeen))));
  section('peers', h('table', {}, h('thead', {}, h('tr', {}, ...['peer', 'systems', 'slots', 'load', 'building', 'seen'].map(t => h('th', {}, t)))), h('tbody', {}, ...rows)));
  $('peer-count').textContent = '(' + s.peers.length + ')';
}

function renderRunning (s) {
  const keep = new Set(s.running.map(r => r.drvPath));
  for (const k of [...logs.keys()]) if (!keep.has(k)) logs.delete(k);
  if (s.running.length === 0) { section('running', empty('Nothing builds in this node\\'s slots now.')); return; }
  section('running', ...s.running.map(r => {
    const pre = h('pre', { drv: r.drvPath });
    logs.set(r.drvPath, { pre, lines: r.lines.slice(-TAIL) });
    pre.textContent = logs.get(r.drvPath).lines.join('\\n');
    return h('div', { class: 'build' }, h('h3', {}, drv(r.drvPath)), pre);
  }));
}

function appendLog (e) {
  const l = logs.get(e.drvPath);
  if (!l) return;
  l.lines.push(...e.lines);
  if (l.lines.length > TAIL) l.lines.splice(0, l.lines.length - TAIL);
  const atEnd = l.pre.scrollTop + l.pre.clientHeight >= l.pre.scrollHeight - 4;
  l.pre.textContent = l.lines.join('\\n');
  if (atEnd) l.pre.scrollTop = l.pre.scrollHeight;
}

function renderSubmissions (s) {
  if (s.submissions.length === 0) { section('submissions', empty('No submissions on this node.')); return; }
  section('submissions', h('table', {}, h('thead', {}, h('tr', {}, ...['submission', 'state', 'progress', 'jobs', 'submitted'].map(t => h('th', {}, t)))),
    h('tbody', {}, ...s.submissions.map(sub => {
      const done = (sub.counts.built || 0) + (sub.counts.substituted || 0);
      const bar = h('div', { class: 'bar', title: done + ' of ' + sub.total + ' done' }, ...STATES.filter(st => sub.counts[st]).map(st =>
        h('span', { class: 's-' + st, style: 'width:' + (100 * sub.counts[st] / Math.max(1, sub.total)) + '%', title: st + ': ' + sub.counts[st] })));
      return h('tr', { submission: sub.id },
        h('td', { class: 'mono', title: sub.id }, short(sub.id)),
        h('td', {}, sub.state),
        h('td', {}, bar),
        h('td', { class: 'counts' }, done + ' / ' + sub.total + ' done' + STATES.filter(st => st !== 'built' && st !== 'substituted' && sub.counts[st]).map(st => ', ' + sub.counts[st] + ' ' + st).join('')),
        h('td', { class: 'muted' }, ago(sub.submittedAt)));
    }))));
}

function renderFailures (s) {
  if (s.failures.length === 0) { section('failures', empty('No failed builds.')); return; }
  section('failures', ...s.failures.map(f => h('div', { class: 'failure' },
    h('h3', {}, drv(f.drvPath), h('span', { class: 'muted' }, ' · ' + f.kind + ' · submission ' + short(f.submission))),
    h('div', {}, f.message),
    f.logTail.length > 0 ? h('pre', {}, f.logTail.join('\\n')) : null)));
}

function renderCache (s) {
  const out = [];
  if (s.signer) {
    const g = s.signer;
    out.push(h('p', {}, 'Signer ', h('span', { class: 'mono', title: g.peerId }, short(g.peerId)), ', key ', h('span', { class: 'mono' }, g.cacheKey)),
      h('p', {}, g.paths + ' paths, ' + bytes(g.narBytes) + '; lookups ' + g.hits + ' hits, ' + g.misses + ' misses' + (g.hitRate === null ? '' : ' (' + Math.round(100 * g.hitRate) + '% hit rate)')),
      h('p', {}, 'Serves ', ...g.cacheUrls.flatMap((u, i) => i === 0 ? [h('span', { class: 'mono' }, u)] : [', ', h('span', { class: 'mono' }, u)])));
    if (g.rejections && g.rejections.length > 0) out.push(h('pre', {}, g.rejections.slice(-10).map(r => r.at + ' ' + r.path + ' from ' + r.from + ': ' + r.reason).join('\\n')));
  } else out.push(empty('No signer known to this node.'));
  if (s.cache) out.push(h('p', {}, 'Cache used here: ', s.cache.url ? h('span', { class: 'mono' }, s.cache.url) : h('span', { class: 'muted' }, 'none'), ' — ' + s.cache.reason));
  if (s.signQueue > 0) out.push(h('p', {}, s.signQueue + ' output(s) waiting to be signed.'));
  section('cache', ...out);
}

function render (s) {
  $('node').textContent = short(s.node);
  $('node').title = s.node;
  $('summary').textContent = s.membership + ' mesh · built ' + s.counters.built + ', failed ' + s.counters.failed + ', stolen ' + s.counters.stolen;
  $('updated').textContent = 'updated ' + new Date(s.at).toLocaleTimeString();
  renderPeers(s); renderRunning(s); renderSubmissions(s); renderFailures(s); renderCache(s);
}

$('legend').append(...STATES.map(st => h('span', {}, h('span', { class: 'key s-' + st }), st)));
const es = new EventSource('events');
es.addEventListener('open', () => { $('conn').textContent = 'live'; $('conn').className = 'live'; });
es.addEventListener('error', () => { $('conn').textContent = 'disconnected, retrying'; $('conn').className = 'down'; });
es.addEventListener('snapshot', (m) => { render(JSON.parse(m.data)); });
es.addEventListener('log', (m) => { appendLog(JSON.parse(m.data)); });
`

/** The page; data arrives only through /events, none is in the HTML. */
export const STATUS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshbuild status</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<header><h1>meshbuild · node <span id="node" class="mono">…</span></h1><span id="summary" class="muted"></span><span id="conn">connecting…</span><span id="updated" class="muted"></span></header>
<h2>Peers <span id="peer-count" class="muted"></span></h2>
<div id="peers"></div>
<h2>Building here</h2>
<div id="running"></div>
<h2>Submissions</h2>
<div id="legend" class="muted"></div>
<div id="submissions"></div>
<h2>Recent failures</h2>
<div id="failures"></div>
<h2>Signer and cache</h2>
<div id="cache"></div>
<script>${SCRIPT}</script>
</body>
</html>
`

const scriptHash = createHash('sha256').update(SCRIPT).digest('base64')

/** Headers of the page: this script only, connections to this node only, no framing. */
export const STATUS_PAGE_HEADERS: Record<string, string> = {
  'Content-Security-Policy': `default-src 'none'; script-src 'sha256-${scriptHash}'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'`,
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'Cache-Control': 'no-store'
}

export const HTML_TYPE = 'text/html; charset=utf-8'
