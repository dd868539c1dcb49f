// Runs the terminal's WebAssembly SSH client (assets/sshclient.wasm) under
// Node against a real relay, as TestWasmUnderNode drives it: connects as
// the source (token in the awsiot-tunnel-token cookie), signs in with a
// key, runs a command and prints what the terminal would show.
// Env: WASM, WASM_EXEC, URL, TOKEN, SSH_USER, SSH_KEY_FILE, COMMAND, WANT.
'use strict';
const fs = require('fs');
require(process.env.WASM_EXEC);
const env = process.env;
const go = new Go();
const out = [];
const timer = setTimeout(() => { console.log('TIMEOUT output=' + JSON.stringify(Buffer.concat(out).toString())); process.exit(2); }, 60000);
WebAssembly.instantiate(fs.readFileSync(env.WASM), go.importObject).then(async (r) => {
  go.run(r.instance);
  while (!globalThis.sectunSSH) await new Promise(res => setTimeout(res, 5));
  let sent = false;
  const conn = globalThis.sectunSSH.connect({
    url: env.URL,
    headers: {Cookie: 'awsiot-tunnel-token=' + env.TOKEN},
    user: env.SSH_USER,
    privateKey: fs.readFileSync(env.SSH_KEY_FILE, 'utf8'),
    cols: 90, rows: 25,
    onStatus: (s) => {
      console.log('STATUS ' + s);
      if (/^Connected \(/.test(s) && !sent) { sent = true; conn.write(env.COMMAND + '\n'); }
    },
    onHostKey: (type, fp) => { console.log('HOSTKEY ' + type + ' ' + fp); return Promise.resolve(true); },
    onData: (u8) => {
      out.push(Buffer.from(u8));
      if (Buffer.concat(out).toString().includes(env.WANT)) {
        console.log('OUTPUT ' + JSON.stringify(Buffer.concat(out).toString()));
        conn.close();
      }
    },
    onEnd: (msg, isErr) => {
      console.log('END ' + (isErr ? 'error ' : '') + msg);
      clearTimeout(timer);
      process.exit(Buffer.concat(out).toString().includes(env.WANT) ? 0 : 1);
    },
  });
});
