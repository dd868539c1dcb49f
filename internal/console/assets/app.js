// sectun console: a small single-page app over /console/api. No framework,
// no third-party code, no inline scripts (the CSP forbids them). Every
// change is a POST with the session's CSRF token; the server runs it
// through the management API's own operations.
'use strict';

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const view = document.getElementById('view');
let session = null;
let timer = null;   // the current page's refresh timer
let gen = 0;        // bumps on navigation, so late answers are ignored

// h builds an element: h('td', {class: 'x'}, 'text', child, ...). Text is
// always a text node, never HTML.
function h(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'class') e.className = v;
    else e.setAttribute(k, v === true ? '' : v);
  }
  for (const k of kids.flat(Infinity)) {
    if (k === undefined || k === null || k === false) continue;
    e.append(k instanceof Node ? k : document.createTextNode(String(k)));
  }
  return e;
}

class APIError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function call(path, opts) {
  const r = await fetch('/console/api/' + path, Object.assign({credentials: 'same-origin', headers: {}}, opts || {}));
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (r.status === 401) { location.reload(); throw new APIError(401, 'SessionExpired', 'Your session has ended.'); }
  if (!r.ok) throw new APIError(r.status, body && body.__type || 'Error', body && body.message || ('HTTP ' + r.status));
  return body;
}
const get = (path) => call(path);
const op = (name, input) => call('op/' + name, {
  method: 'POST', body: JSON.stringify(input || {}),
  headers: {'Content-Type': 'application/json', 'X-CSRF-Token': CSRF},
});

// Formatting.
function bytes(n) {
  if (n < 1024) return n + ' B';
  const u = ['KiB', 'MiB', 'GiB', 'TiB'];
  let i = -1;
  do { n /= 1024; i++; } while (n >= 1024 && i < u.length - 1);
  return n.toFixed(n < 10 ? 1 : 0) + ' ' + u[i];
}
function num(n) { return Number(n).toLocaleString('en-US'); }
function ago(t, now) {
  if (!t) return '—';
  const s = Math.max(0, ((now ? new Date(now) : new Date()) - new Date(t)) / 1000);
  if (s < 60) return Math.floor(s) + ' s ago';
  if (s < 3600) return Math.floor(s / 60) + ' min ago';
  if (s < 86400) return Math.floor(s / 3600) + ' h ' + Math.floor(s % 3600 / 60) + ' min ago';
  return Math.floor(s / 86400) + ' d ago';
}
// span is a length of time, s seconds, as "2 d 3 h", "1 h 5 min" or "4 min 7 s".
function span(s) {
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), hh = Math.floor(s % 86400 / 3600), mm = Math.floor(s % 3600 / 60), ss = s % 60;
  if (d) return d + ' d ' + hh + ' h';
  if (hh) return hh + ' h ' + mm + ' min';
  return mm + ' min ' + ss + ' s';
}
function left(t, now) {
  const s = (new Date(t) - (now ? new Date(now) : new Date())) / 1000;
  return s <= 0 ? 'expired' : span(s);
}
function when(t) { return t ? new Date(t).toLocaleString() : '—'; }
function epoch(v) { return v ? new Date(v * 1000) : null; }
function statusBadge(s) { return h('span', {class: 'badge ' + (s === 'OPEN' ? 'ok' : 'idle')}, s); }
function connBadge(c) { return h('span', {class: 'badge ' + (c ? 'ok' : 'idle')}, c ? 'Connected' : 'Disconnected'); }
function errorNotice(e) { return h('div', {class: 'notice error', role: 'alert'}, (e.code && e.code !== 'Error' ? e.code + ': ' : '') + e.message); }

function copyButton(text) {
  const b = h('button', {class: 'small', type: 'button'}, 'Copy');
  b.addEventListener('click', async () => {
    try { await navigator.clipboard.writeText(text); b.textContent = 'Copied'; }
    catch (e) { b.textContent = 'Select and copy'; }
    setTimeout(() => { b.textContent = 'Copy'; }, 1500);
  });
  return b;
}
function secretLine(label, value) {
  return h('div', {class: 'field'}, h('label', {}, label),
    h('div', {class: 'secret'}, h('code', {'data-secret': label}, value), copyButton(value)));
}
function command(text) {
  return h('div', {class: 'secret'}, h('pre', {class: 'cmd'}, text), copyButton(text));
}

function page(title, sub, ...kids) {
  return [h('h1', {}, title), sub ? h('p', {class: 'sub'}, sub) : null, ...kids];
}
function render(...kids) { view.replaceChildren(...kids.flat(Infinity).filter(k => k !== null && k !== undefined && k !== false)); }
function every(ms, fn) {
  const g = gen;
  const tick = async () => {
    if (g !== gen) return;
    try { await fn(); } catch (e) { console.warn(e); }
    if (g === gen) timer = setTimeout(tick, ms);
  };
  tick();
}

// Pages.
const routes = {
  overview: overviewPage,
  tunnels: tunnelsPage,
  tunnel: tunnelPage,
  open: openPage,
  devices: devicesPage,
};

function route() {
  gen++;
  clearTimeout(timer);
  const parts = (location.hash.replace(/^#\/?/, '') || 'overview').split('/');
  const name = routes[parts[0]] ? parts[0] : 'overview';
  document.querySelectorAll('[data-nav]').forEach(a => a.classList.toggle('active',
    a.dataset.nav === name || (name === 'tunnel' && a.dataset.nav === 'tunnels')));
  document.body.dataset.page = name;
  routes[name](...parts.slice(1).map(decodeURIComponent));
}

function card(label, value, hint, id) {
  return h('div', {class: 'card'}, h('div', {class: 'label'}, label),
    h('div', {class: 'value', id: id}, value), hint ? h('div', {class: 'hint'}, hint) : null);
}

function overviewPage() {
  const cards = h('div', {class: 'grid cards'});
  const healthBody = h('div', {class: 'body'});
  const reasons = h('div', {class: 'body'});
  render(page('Overview', 'This tunneld node at a glance. Figures refresh every few seconds.', cards,
    h('div', {class: 'grid two'},
      h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'Node health')), healthBody),
      h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'Handshake failures by reason')), reasons))));
  every(3000, async () => {
    const o = await get('overview');
    cards.replaceChildren(
      card('Open tunnels', num(o.openTunnels), o.liveTunnels + ' with a peer connected', 'ov-open'),
      card('Connected peers', num(o.connectedPeers), 'sources and destinations', 'ov-peers'),
      card('Bytes relayed', bytes(o.bytesRelayed), num(o.framesRelayed) + ' messages', 'ov-bytes'),
      card('Handshake failures', num(o.handshakeFailures), num(o.handshakes) + ' handshakes succeeded', 'ov-fail'),
      card('Blocked addresses', num(o.addressesBlocked), 'too many failed handshakes'));
    const hl = o.health;
    healthBody.replaceChildren(h('dl', {class: 'kv'},
      h('dt', {}, 'Storage'), h('dd', {}, h('span', {class: 'badge ' + (hl.storage === 'ok' ? 'ok' : 'bad')}, hl.storage), ' ', hl.storageLatencyMs.toFixed(2) + ' ms'),
      h('dt', {}, 'Up for'), h('dd', {}, span(hl.uptimeSeconds)),
      h('dt', {}, 'Version'), h('dd', {}, hl.version + ' (' + hl.goVersion + ')'),
      h('dt', {}, 'Goroutines'), h('dd', {}, num(hl.goroutines)),
      h('dt', {}, 'Heap'), h('dd', {}, bytes(hl.heapBytes)),
      h('dt', {}, 'Protocol violations'), h('dd', {}, num(o.protocolViolations)),
      h('dt', {}, 'Console sessions'), h('dd', {}, num(hl.consoleSessions))));
    const rs = Object.entries(o.handshakeFailureReasons || {}).sort((a, b) => b[1] - a[1]);
    reasons.replaceChildren(rs.length ? h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Reason'), h('th', {}, 'Count'))),
      h('tbody', {}, rs.map(([k, v]) => h('tr', {}, h('td', {}, k), h('td', {}, num(v))))))
      : h('div', {class: 'empty'}, 'No failed handshakes since tunneld started.'));
  });
}

function tunnelsPage() {
  const params = new URLSearchParams(sessionStorage.getItem('tunnels-filter') || '');
  const thing = h('input', {placeholder: 'Thing name', value: params.get('thing') || '', id: 'filter-thing'});
  const status = h('select', {id: 'filter-status'}, h('option', {value: ''}, 'Any status'),
    h('option', {value: 'OPEN'}, 'Open'), h('option', {value: 'CLOSED'}, 'Closed'));
  status.value = params.get('status') || '';
  const body = h('tbody');
  const info = h('span');
  const prev = h('button', {class: 'small', type: 'button'}, '← Newer');
  const next = h('button', {class: 'small', type: 'button'}, 'Older →');
  const err = h('div');
  let cursors = [''];  // cursor of each page shown so far
  let nextCursor = '';
  const load = async () => {
    const q = new URLSearchParams({limit: '50'});
    if (thing.value.trim()) q.set('thing', thing.value.trim());
    if (status.value) q.set('status', status.value);
    if (cursors[cursors.length - 1]) q.set('cursor', cursors[cursors.length - 1]);
    let r;
    try { r = await get('tunnels?' + q); err.replaceChildren(); }
    catch (e) { err.replaceChildren(errorNotice(e)); return; }
    nextCursor = r.nextCursor || '';
    prev.disabled = cursors.length === 1;
    next.disabled = !nextCursor;
    info.textContent = 'Page ' + cursors.length + ' · ' + r.tunnels.length + ' shown';
    body.replaceChildren(...(r.tunnels.length ? r.tunnels.map(t => h('tr', {'data-tunnel': t.tunnelId},
      h('td', {}, h('a', {href: '#/tunnel/' + t.tunnelId, class: 'mono'}, t.tunnelId)),
      h('td', {}, t.thingName || h('span', {class: 'muted'}, '—')),
      h('td', {}, (t.services || []).join(', ') || h('span', {class: 'muted'}, '—')),
      h('td', {}, statusBadge(t.status)),
      h('td', {class: 'src-state'}, connBadge(t.source.connected)),
      h('td', {class: 'dst-state'}, connBadge(t.destination.connected)),
      h('td', {}, ago(t.createdAt, r.now)),
      h('td', {}, t.status === 'OPEN' ? left(t.expiresAt, r.now) : 'closed ' + ago(t.closedAt, r.now))))
      : [h('tr', {}, h('td', {colspan: 8}, h('div', {class: 'empty'}, 'No tunnels match. ', h('a', {href: '#/open'}, 'Open a tunnel')))) ]));
  };
  const refilter = () => {
    const p = new URLSearchParams();
    if (thing.value.trim()) p.set('thing', thing.value.trim());
    if (status.value) p.set('status', status.value);
    sessionStorage.setItem('tunnels-filter', p.toString());
    cursors = [''];
    load();
  };
  thing.addEventListener('change', refilter);
  status.addEventListener('change', refilter);
  prev.addEventListener('click', () => { cursors.pop(); load(); });
  next.addEventListener('click', () => { cursors.push(nextCursor); load(); });
  render(page('Tunnels', 'Newest first. Connection states update live.',
    h('div', {class: 'toolbar'}, thing, status, h('button', {type: 'button', onclick: refilter}, 'Apply'),
      h('span', {class: 'spacer'}), h('a', {class: 'btn primary', href: '#/open'}, '+ Open a tunnel')),
    err,
    h('section', {class: 'panel'}, h('table', {id: 'tunnels'},
      h('thead', {}, h('tr', {}, ['Tunnel ID', 'Thing', 'Services', 'Status', 'Source', 'Destination', 'Created', 'Lifetime left'].map(x => h('th', {}, x)))),
      body), h('div', {class: 'pager'}, info, prev, next))));
  every(3000, load);
}

function tokensBlock(t, s, thing) {
  const svc = (t.services && t.services.length ? t.services : ['SSH']);
  const ca = s.caPath ? ' -c ' + s.caPath : '';
  const kids = [h('div', {class: 'notice warn'}, 'These tokens are shown once. Copy them now: tunneld keeps only their hashes.')];
  if (t.sourceAccessToken) kids.push(secretLine('Source access token', t.sourceAccessToken));
  if (t.destinationAccessToken) kids.push(secretLine('Destination access token', t.destinationAccessToken));
  kids.push(h('h2', {}, 'Connect the ends'));
  if (t.destinationAccessToken) {
    kids.push(h('p', {class: 'muted'}, thing ? 'The device\'s tunnel-agent was notified and connects by itself. To connect a destination by hand instead, on the device:' : 'On the device (destination):'));
    kids.push(command('localproxy -r ' + s.region + ' -e ' + s.tunnelURL + ca + ' -m dst -d ' + svc.map(x => x + '=localhost:22').join(',') + ' -t ' + t.destinationAccessToken));
  }
  if (t.sourceAccessToken) {
    kids.push(h('p', {class: 'muted'}, 'On your machine (source), then ssh -p 5555 user@localhost:'));
    kids.push(command('localproxy -r ' + s.region + ' -e ' + s.tunnelURL + ca + ' -m src -s ' + svc.map((x, i) => x + '=' + (5555 + i)).join(',') + ' -t ' + t.sourceAccessToken));
  }
  if (thing) {
    kids.push(h('p', {class: 'muted'}, 'Or let sectun open a tunnel of its own and both ends for you:'));
    kids.push(command('sectun connect --endpoint-url ' + s.apiURL + (s.caPath ? ' --ca ' + s.caPath : '') + ' --thing ' + thing + ' ' + svc.map(x => '--service ' + x).join(' ')));
  }
  return h('div', {id: 'tokens'}, kids);
}

function openTerminal(tunnelId, sourceToken) {
  if (sourceToken) sessionStorage.setItem('sectun-term-' + tunnelId, sourceToken);
  location.href = '/console/terminal#' + encodeURIComponent(tunnelId);
}

async function tunnelPage(id) {
  const err = h('div');
  const head = h('div');
  const info = h('div', {class: 'body'});
  const ends = h('div', {class: 'body'});
  const tags = h('div', {class: 'body'});
  const out = h('div');
  const canvas = h('canvas', {class: 'graph', width: 900, height: 160, id: 'graph'});
  const rate = h('span', {class: 'muted'});
  const samples = []; // {t, up, down} bytes per second
  let last = null;
  let t = null;
  const actions = h('div', {class: 'row'});
  render(h('div', {class: 'crumbs'}, h('a', {href: '#/tunnels'}, 'Tunnels'), ' / ', id),
    head, err, out,
    h('div', {class: 'grid two'},
      h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'Tunnel')), info),
      h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'Ends')), ends)),
    h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'Throughput'), h('span', {class: 'spacer'}), rate),
      h('div', {class: 'body'}, canvas, h('div', {class: 'legend'}, h('span', {}, h('i', {class: 'up'}), 'source → destination'),
        h('span', {}, h('i', {class: 'down'}), 'destination → source')))),
    h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'Tags')), tags),
    h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'Actions')), h('div', {class: 'body'}, actions)));

  const close = async (del) => {
    if (!confirm(del ? 'Close and delete this tunnel? Both ends are disconnected.' : 'Close this tunnel? Both ends are disconnected.')) return;
    try {
      await op('CloseTunnel', {tunnelId: id, delete: del});
      if (del) { location.hash = '#/tunnels'; return; }
      out.replaceChildren(h('div', {class: 'notice ok'}, 'Tunnel closed; both ends were disconnected.'));
    } catch (e) { out.replaceChildren(errorNotice(e)); }
  };
  const modeSel = h('select', {id: 'rotate-mode'}, h('option', {value: 'SOURCE'}, 'Source'),
    h('option', {value: 'DESTINATION'}, 'Destination'), h('option', {value: 'ALL'}, 'Both ends'));
  const rotate = async () => {
    const mode = modeSel.value;
    if (!confirm('Rotate the ' + mode.toLowerCase() + ' token? The end(s) connected with the old token are disconnected.')) return;
    try {
      const r = await op('RotateTunnelAccessToken', {tunnelId: id, clientMode: mode});
      const thing = t && t.destinationConfig && t.destinationConfig.thingName;
      out.replaceChildren(h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'New tokens')),
        h('div', {class: 'body'}, tokensBlock({sourceAccessToken: r.sourceAccessToken, destinationAccessToken: r.destinationAccessToken,
          services: t && t.destinationConfig && t.destinationConfig.services}, session, thing))));
    } catch (e) { out.replaceChildren(errorNotice(e)); }
  };
  const termBtn = h('button', {class: 'primary', type: 'button', id: 'open-terminal', onclick: () => openTerminal(id)}, '▶ Open SSH terminal');
  actions.replaceChildren(termBtn,
    h('span', {class: 'row'}, modeSel, h('button', {type: 'button', id: 'rotate', onclick: rotate}, 'Rotate token')),
    h('button', {class: 'danger', type: 'button', id: 'close', onclick: () => close(false)}, 'Close tunnel'),
    h('button', {class: 'danger', type: 'button', id: 'close-delete', onclick: () => close(true)}, 'Close and delete'));

  const draw = () => {
    const ctx = canvas.getContext('2d');
    const W = canvas.width, H = canvas.height;
    ctx.clearRect(0, 0, W, H);
    const max = Math.max(1024, ...samples.map(s => Math.max(s.up, s.down)));
    ctx.strokeStyle = '#e6eaf0'; ctx.fillStyle = '#8795ad'; ctx.font = '11px system-ui';
    for (let i = 0; i <= 4; i++) { const y = H - 18 - (H - 28) * i / 4; ctx.beginPath(); ctx.moveTo(40, y); ctx.lineTo(W, y); ctx.stroke(); ctx.fillText(bytes(Math.round(max * i / 4)) + '/s', 0, y - 2); }
    for (const [key, color] of [['up', '#0f6cbd'], ['down', '#e07a00']]) {
      ctx.strokeStyle = color; ctx.lineWidth = 2; ctx.beginPath();
      samples.forEach((s, i) => { const x = 40 + (W - 40) * (i + 60 - samples.length) / 59; const y = H - 18 - (H - 28) * s[key] / max; i ? ctx.lineTo(x, y) : ctx.moveTo(x, y); });
      ctx.stroke();
    }
    ctx.fillStyle = '#8795ad'; ctx.fillText('last 60 s', W - 50, H - 4);
  };

  every(1000, async () => {
    let r;
    try { r = await get('tunnel?id=' + encodeURIComponent(id)); err.replaceChildren(); }
    catch (e) { err.replaceChildren(errorNotice(e)); return; }
    t = r.tunnel;
    const now = new Date(r.now);
    const dc = t.destinationConfig || {};
    const open = t.status === 'OPEN';
    head.replaceChildren(h('div', {class: 'row'}, h('h1', {}, dc.thingName ? 'Tunnel to ' + dc.thingName : 'Tunnel'), statusBadge(t.status)),
      h('p', {class: 'sub mono'}, t.tunnelArn));
    termBtn.disabled = !open || !(dc.services || []).some(s => /ssh/i.test(s)) && (dc.services || []).length > 0;
    actions.querySelectorAll('#rotate, #close, #rotate-mode').forEach(b => { b.disabled = !open; });
    info.replaceChildren(h('dl', {class: 'kv'},
      h('dt', {}, 'Tunnel ID'), h('dd', {class: 'mono', id: 'tunnel-id'}, t.tunnelId),
      h('dt', {}, 'Thing'), h('dd', {}, dc.thingName || '—'),
      h('dt', {}, 'Services'), h('dd', {}, (dc.services || []).join(', ') || '— (V1, one anonymous stream)'),
      h('dt', {}, 'Description'), h('dd', {}, t.description || '—'),
      h('dt', {}, 'Created'), h('dd', {}, when(epoch(t.createdAt))),
      h('dt', {}, 'Lifetime'), h('dd', {}, t.timeoutConfig.maxLifetimeTimeoutMinutes + ' min'),
      h('dt', {}, 'Lifetime left'), h('dd', {id: 'lifetime-left'}, open ? left(r.expiresAt, now) : 'closed')));
    const end = (name, cs, live) => [
      h('dt', {}, name), h('dd', {class: name.toLowerCase() + '-state'}, connBadge(cs.status === 'CONNECTED'), ' since ', when(epoch(cs.lastUpdatedAt)), ' (' + ago(epoch(cs.lastUpdatedAt), now) + ')'),
      h('dt', {}, 'Channel ID'), h('dd', {class: 'mono'}, live.channelId || '—'),
      h('dt', {}, 'Protocol'), h('dd', {}, live.version ? 'V' + live.version : '—'),
      h('dt', {}, 'Sent'), h('dd', {}, bytes(live.bytesSent) + ' in ' + num(live.messagesSent) + ' messages')];
    ends.replaceChildren(h('dl', {class: 'kv'}, end('Source', t.sourceConnectionState, r.source), end('Destination', t.destinationConnectionState, r.destination)));
    tags.replaceChildren((t.tags || []).length ? h('div', {class: 'tags'}, t.tags.map(g => h('span', {}, g.key + ' = ' + g.value))) : h('span', {class: 'muted'}, 'No tags.'));
    const cur = {t: Date.now(), up: r.source.bytesSent, down: r.destination.bytesSent};
    if (last) {
      const dt = Math.max(0.001, (cur.t - last.t) / 1000);
      samples.push({up: Math.max(0, cur.up - last.up) / dt, down: Math.max(0, cur.down - last.down) / dt});
      if (samples.length > 60) samples.shift();
      const s = samples[samples.length - 1];
      rate.textContent = '→ ' + bytes(Math.round(s.up)) + '/s   ← ' + bytes(Math.round(s.down)) + '/s';
    }
    last = cur;
    draw();
  });
}

function openPage(presetThing) {
  const err = h('div');
  const thing = h('input', {id: 'open-thing', placeholder: 'e.g. raspberry-1', value: presetThing || ''});
  const services = h('input', {id: 'open-services', value: 'SSH', placeholder: 'SSH'});
  const lifetime = h('input', {id: 'open-lifetime', type: 'number', min: 1, max: 720, value: 720});
  const desc = h('input', {id: 'open-description', placeholder: 'optional'});
  const tagRows = h('div');
  const addTag = () => {
    const row = h('div', {class: 'tagrow'}, h('input', {placeholder: 'key', class: 'tag-key'}), h('input', {placeholder: 'value', class: 'tag-value'}));
    row.append(h('button', {type: 'button', class: 'small', onclick: () => row.remove()}, 'Remove'));
    tagRows.append(row);
  };
  const result = h('div');
  const submit = async (ev) => {
    ev.preventDefault();
    const input = {timeoutConfig: {maxLifetimeTimeoutMinutes: Number(lifetime.value)}};
    const svc = services.value.split(',').map(s => s.trim()).filter(Boolean);
    if (thing.value.trim() || svc.length) input.destinationConfig = {services: svc};
    if (thing.value.trim()) input.destinationConfig.thingName = thing.value.trim();
    if (desc.value.trim()) input.description = desc.value.trim();
    const tags = [...tagRows.querySelectorAll('.tagrow')].map(r => ({key: r.querySelector('.tag-key').value.trim(), value: r.querySelector('.tag-value').value}))
      .filter(t => t.key);
    if (tags.length) input.tags = tags;
    try {
      const r = await op('OpenTunnel', input);
      err.replaceChildren();
      form.hidden = true;
      const hasSSH = svc.length === 0 || svc.some(s => /ssh/i.test(s));
      result.replaceChildren(h('section', {class: 'panel'}, h('header', {}, h('h2', {}, 'Tunnel opened'), h('span', {class: 'spacer'}),
        h('a', {href: '#/tunnel/' + r.tunnelId, class: 'mono', id: 'opened-tunnel'}, r.tunnelId)),
      h('div', {class: 'body'}, tokensBlock({sourceAccessToken: r.sourceAccessToken, destinationAccessToken: r.destinationAccessToken, services: svc}, session, thing.value.trim()),
        h('div', {class: 'row'}, hasSSH ? h('button', {class: 'primary', type: 'button', id: 'terminal-now', onclick: () => openTerminal(r.tunnelId, r.sourceAccessToken)}, '▶ Open SSH terminal with the source token') : null,
          h('a', {class: 'btn', href: '#/tunnel/' + r.tunnelId}, 'View tunnel')))));
    } catch (e) { err.replaceChildren(errorNotice(e)); }
  };
  const form = h('form', {class: 'panel', id: 'open-form', onsubmit: submit}, h('div', {class: 'body'},
    h('div', {class: 'field'}, h('label', {for: 'open-thing'}, 'Thing name'), thing, h('div', {class: 'help'}, 'The device\'s tunnel-agent is notified over MQTT with the destination token. Leave empty to connect the destination yourself.')),
    h('div', {class: 'field'}, h('label', {for: 'open-services'}, 'Services'), services, h('div', {class: 'help'}, 'Comma-separated, up to 3 (e.g. SSH, HTTP). Empty: one anonymous stream (V1 destinations).')),
    h('div', {class: 'field'}, h('label', {for: 'open-lifetime'}, 'Lifetime (minutes)'), lifetime),
    h('div', {class: 'field'}, h('label', {for: 'open-description'}, 'Description'), desc),
    h('div', {class: 'field'}, h('label', {}, 'Tags'), tagRows, h('button', {type: 'button', class: 'small', onclick: addTag}, '+ Add tag')),
    h('button', {class: 'primary', type: 'submit', id: 'open-submit'}, 'Open tunnel')));
  render(page('Open a tunnel', 'The same OpenTunnel as the AWS CLI\'s, run as ' + (session ? session.principal : 'you') + '.', err, form, result));
}

function devicesPage() {
  const body = h('tbody');
  const err = h('div');
  const note = h('p', {class: 'sub'});
  const connect = async (thing, btn) => {
    btn.disabled = true;
    try {
      const r = await op('OpenTunnel', {destinationConfig: {thingName: thing, services: ['SSH']}, description: 'SSH from the console'});
      openTerminal(r.tunnelId, r.sourceAccessToken);
    } catch (e) { err.replaceChildren(errorNotice(e)); btn.disabled = false; }
  };
  render(page('Devices', null, note, err, h('section', {class: 'panel'}, h('table', {id: 'devices'},
    h('thead', {}, h('tr', {}, ['Thing', 'State', 'Last seen', 'Open tunnels', ''].map(x => h('th', {}, x)))), body))));
  every(5000, async () => {
    let r;
    try { r = await get('devices'); err.replaceChildren(); } catch (e) { err.replaceChildren(errorNotice(e)); return; }
    note.textContent = r.brokerKnown ? 'Things connected to the MQTT broker, and the things of recent tunnels.'
      : 'Things of recent tunnels (this tunneld uses an external MQTT broker, so "connected" means a destination is connected now).';
    body.replaceChildren(...(r.devices.length ? r.devices.map(d => h('tr', {'data-thing': d.thing},
      h('td', {}, h('b', {}, d.thing)),
      h('td', {}, h('span', {class: 'badge ' + (d.connected ? 'ok' : 'idle')}, d.connected ? 'Online' : 'Offline')),
      h('td', {}, d.connected ? 'now' : ago(d.lastSeen, r.now)),
      h('td', {}, d.openTunnels.length ? [d.openTunnels.map(t => h('div', {}, h('a', {href: '#/tunnel/' + t.tunnelId, class: 'mono'}, t.tunnelId.slice(0, 8) + '…'), ' ', (t.services || []).join(', '))),
        d.openCount > d.openTunnels.length ? h('div', {}, h('a', {href: '#/tunnels', onclick: () => sessionStorage.setItem('tunnels-filter', 'thing=' + encodeURIComponent(d.thing) + '&status=OPEN')}, 'and ' + (d.openCount - d.openTunnels.length) + ' more')) : null] : h('span', {class: 'muted'}, 'none')),
      h('td', {}, h('button', {class: 'primary small', type: 'button', 'data-connect': d.thing, onclick: (ev) => connect(d.thing, ev.currentTarget)}, 'Connect via SSH'))))
      : [h('tr', {}, h('td', {colspan: 5}, h('div', {class: 'empty'}, 'No devices yet. A device appears when its tunnel-agent connects to the broker or a tunnel is opened for it.')))]));
  });
}

(async () => {
  try { session = await get('session'); } catch (e) { render(errorNotice(e)); return; }
  window.addEventListener('hashchange', route);
  route();
})();
