// The console's SSH terminal: xterm.js on screen, the SSH client in
// WebAssembly (sshclient.wasm), the page itself the source end of the
// tunnel. The access token goes to the relay in the awsiot-tunnel-token
// cookie (Path=/tunnel, a minute long, removed once connected); the SSH
// password or key never leaves this page.
'use strict';

const CSRF = document.querySelector('meta[name="csrf-token"]').content;
const tunnelId = decodeURIComponent(location.hash.slice(1));
const stateEl = document.getElementById('term-state');
const reconnectBtn = document.getElementById('term-reconnect');
const $ = (id) => document.getElementById(id);

const term = new Terminal({
  cursorBlink: true, fontSize: 14, scrollback: 5000, convertEol: false,
  fontFamily: 'ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace',
  theme: {background: '#0b1220', foreground: '#d6e2f5', cursor: '#3aa0ff', selectionBackground: '#2d4a7a'},
});
const fit = new FitAddon.FitAddon();
term.loadAddon(fit);
term.open($('terminal'));
fit.fit();
// For tests and the curious: the terminal (its buffer) and a way to type.
window.sectunTerm = term;
window.sectunType = (d) => { if (conn) conn.write(d); };

let conn = null;       // the wasm session handle
let wasmReady = null;  // a promise: the module runs
let lastLogin = null;  // {user, auth, key, pass}: kept in this page only, for Reconnect

function setState(text, kind) {
  stateEl.textContent = text;
  stateEl.dataset.kind = kind || '';
}
function line(text, color) {
  term.write('\r\n\x1b[' + (color || '36') + 'm' + text + '\x1b[0m\r\n');
}

function loadWasm() {
  if (!wasmReady) {
    wasmReady = (async () => {
      const go = new Go();
      const r = await WebAssembly.instantiateStreaming(fetch('/console/static/sshclient.wasm'), go.importObject);
      go.run(r.instance);
      while (!window.sectunSSH) await new Promise(res => setTimeout(res, 10));
    })();
  }
  return wasmReady;
}

async function api(op, input) {
  const r = await fetch('/console/api/op/' + op, {method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json', 'X-CSRF-Token': CSRF}, body: JSON.stringify(input)});
  const b = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((b.__type ? b.__type + ': ' : '') + (b.message || 'HTTP ' + r.status));
  return b;
}

// sourceToken returns a fresh source token: the one the console page
// handed over (once), else a new one by rotating the source token (which
// drops any other source).
async function sourceToken() {
  const key = 'sectun-term-' + tunnelId;
  const t = sessionStorage.getItem(key);
  if (t) { sessionStorage.removeItem(key); return t; }
  setState('Getting a new source token (RotateTunnelAccessToken)…');
  const r = await api('RotateTunnelAccessToken', {tunnelId: tunnelId, clientMode: 'SOURCE'});
  return r.sourceAccessToken;
}

function askLogin() {
  return new Promise((resolve) => {
    const dlg = $('login');
    const auth = $('ssh-auth');
    const sync = () => {
      const key = auth.value === 'key';
      $('key-field').hidden = !key;
      $('pass-label').textContent = key ? 'Key passphrase (if any)' : 'Password';
    };
    auth.onchange = sync;
    sync();
    $('ssh-key-file').onchange = async (ev) => {
      const f = ev.target.files[0];
      if (f) $('ssh-key').value = await f.text();
    };
    dlg.hidden = false;
    $('ssh-user').focus();
    $('login-form').onsubmit = (ev) => {
      ev.preventDefault();
      dlg.hidden = true;
      resolve({user: $('ssh-user').value.trim(), auth: auth.value, key: $('ssh-key').value, pass: $('ssh-pass').value});
    };
  });
}

function confirmHostKey(type, fp) {
  return new Promise((resolve) => {
    $('hostkey-type').textContent = type;
    $('hostkey-fp').textContent = fp;
    $('hostkey').hidden = false;
    $('hostkey-accept').focus();
    $('hostkey-accept').onclick = () => { $('hostkey').hidden = true; resolve(true); };
    $('hostkey-reject').onclick = () => { $('hostkey').hidden = true; resolve(false); };
  });
}

async function start() {
  reconnectBtn.hidden = true;
  if (!tunnelId) { setState('No tunnel given.', 'error'); return; }
  try {
    const wasm = loadWasm();
    if (!lastLogin) lastLogin = await askLogin();
    const token = await sourceToken();
    await wasm;
    const url = location.origin.replace(/^http/, 'ws') + '/tunnel?local-proxy-mode=source';
    document.cookie = 'awsiot-tunnel-token=' + token + '; Path=/tunnel; Max-Age=60; Secure; SameSite=Strict';
    term.reset();
    const L = lastLogin;
    let opened = false;
    conn = window.sectunSSH.connect({
      url: url,
      user: L.user,
      password: L.auth === 'password' ? L.pass : '',
      privateKey: L.auth === 'key' ? L.key : '',
      passphrase: L.auth === 'key' ? L.pass : '',
      cols: term.cols, rows: term.rows,
      onStatus: (s) => {
        if (!opened && /^Connected to the relay/.test(s)) {
          opened = true;
          document.cookie = 'awsiot-tunnel-token=; Path=/tunnel; Max-Age=0; Secure; SameSite=Strict';
        }
        setState(s, /^Connected \(/.test(s) ? 'ok' : '');
        if (/^Connected \(/.test(s)) term.focus();
      },
      onData: (u8) => term.write(u8),
      onHostKey: (type, fp) => confirmHostKey(type, fp),
      onEnd: (msg, isErr) => {
        document.cookie = 'awsiot-tunnel-token=; Path=/tunnel; Max-Age=0; Secure; SameSite=Strict';
        conn = null;
        line(msg, isErr ? '31' : '33');
        setState(msg, isErr ? 'error' : 'ended');
        reconnectBtn.hidden = false;
        document.body.dataset.ended = 'true';
      },
    });
    document.body.dataset.ended = '';
  } catch (e) {
    line(String(e.message || e), '31');
    setState(String(e.message || e), 'error');
    reconnectBtn.hidden = false;
  }
}

term.onData((d) => { if (conn) conn.write(d); });
term.onResize(({cols, rows}) => { if (conn) conn.resize(cols, rows); });
window.addEventListener('resize', () => fit.fit());
// Copy: xterm copies a selection with the browser's own shortcut; also
// copy on selection so a right-click paste elsewhere works.
term.onSelectionChange(() => {
  const s = term.getSelection();
  if (s && navigator.clipboard) navigator.clipboard.writeText(s).catch(() => {});
});
// Paste: Ctrl+Shift+V (Ctrl+V is ^V for the shell); xterm handles the
// browser's paste event itself.
term.attachCustomKeyEventHandler((ev) => {
  if (ev.type === 'keydown' && ev.ctrlKey && ev.shiftKey && ev.code === 'KeyV' && navigator.clipboard) {
    navigator.clipboard.readText().then(t => { if (conn && t) conn.write(t); }).catch(() => {});
    return false;
  }
  if (ev.type === 'keydown' && ev.ctrlKey && ev.shiftKey && ev.code === 'KeyC') {
    const s = term.getSelection();
    if (s && navigator.clipboard) navigator.clipboard.writeText(s).catch(() => {});
    return false;
  }
  return true;
});
reconnectBtn.addEventListener('click', () => { if (conn) conn.close(); start(); });
$('term-back').addEventListener('click', () => { location.href = '/console/#/tunnel/' + encodeURIComponent(tunnelId); });
setState('Sign in to the device');
start();
