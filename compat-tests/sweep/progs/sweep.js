// Node workload for the native-vs-shim sweep: http server + client on 127.0.0.1, fs calls,
// child_process.spawn/execFile, worker_threads. Prints only deterministic observations.
'use strict';
const http = require('http');
const fs = require('fs');
const os = require('os');
const path = require('path');
const cp = require('child_process');
const { Worker, isMainThread, parentPort, workerData } = require('worker_threads');
const crypto = require('crypto');

if (!isMainThread) {
  let s = 0;
  for (let i = 0; i < 1e6; i++) s = (s + i * workerData) % 1000003;
  const f = path.join(os.tmpdir(), `sweep-worker-${process.pid}-${workerData}`);
  fs.writeFileSync(f, String(s));
  const back = fs.readFileSync(f, 'utf8');
  fs.unlinkSync(f);
  parentPort.postMessage(`${workerData}:${back}`);
  return;
}

function get(port, p) {
  return new Promise((resolve, reject) => {
    http.get({ host: '127.0.0.1', port, path: p, agent: new http.Agent({ keepAlive: true }) }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve([res.statusCode, Buffer.concat(chunks)]));
    }).on('error', reject);
  });
}

(async () => {
  // http
  const big = crypto.createHash('sha256');
  const payload = Buffer.alloc(2 << 20, 'x');
  const srv = http.createServer((req, res) => {
    if (req.url === '/big') { res.end(payload); return; }
    if (req.method === 'POST') { let n = 0; req.on('data', (c) => (n += c.length)); req.on('end', () => res.end(`got ${n}`)); return; }
    res.end(`hello ${req.url}`);
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const port = srv.address().port;
  const results = await Promise.all(Array.from({ length: 20 }, (_, i) => get(port, `/r${i}`)));
  console.log('http 20 gets:', results.every(([s, b], i) => s === 200 && b.toString() === `hello /r${i}`));
  const [st, body] = await get(port, '/big');
  console.log('http big:', st, body.length, big.update(body).digest('hex').slice(0, 16));
  const posted = await new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, method: 'POST', path: '/p' }, (res) => {
      let d = ''; res.on('data', (c) => (d += c)); res.on('end', () => resolve(d));
    });
    req.on('error', reject);
    for (let i = 0; i < 100; i++) req.write(Buffer.alloc(10000, 'y'));
    req.end();
  });
  console.log('http post:', posted);
  await new Promise((r) => srv.close(r));

  // fs
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sweepn-'));
  for (let i = 0; i < 50; i++) fs.writeFileSync(path.join(dir, `f${i}`), 'z'.repeat(i));
  await fs.promises.appendFile(path.join(dir, 'f1'), 'more');
  const st2 = await fs.promises.stat(path.join(dir, 'f1'));
  console.log('fs size f1:', st2.size, 'entries:', fs.readdirSync(dir).length);
  const fh = await fs.promises.open(path.join(dir, 'f49'), 'r');
  const b = Buffer.alloc(5); const { bytesRead } = await fh.read(b, 0, 5, 10); await fh.close();
  console.log('fs pread:', bytesRead, b.toString());
  fs.renameSync(path.join(dir, 'f2'), path.join(dir, 'g2'));
  fs.symlinkSync('g2', path.join(dir, 'link'));
  console.log('fs readlink:', fs.readlinkSync(path.join(dir, 'link')), fs.lstatSync(path.join(dir, 'link')).isSymbolicLink());
  const w = fs.createWriteStream(path.join(dir, 'stream'));
  for (let i = 0; i < 1000; i++) w.write(`line ${i}\n`);
  await new Promise((r) => w.end(r));
  let lines = 0;
  for await (const c of fs.createReadStream(path.join(dir, 'stream'))) lines += c.toString().split('\n').length - 1;
  console.log('fs stream lines:', lines);
  fs.rmSync(dir, { recursive: true });
  console.log('fs rm:', fs.existsSync(dir));

  // child_process
  const out = await new Promise((resolve) => {
    const c = cp.spawn('sh', ['-c', 'read x; echo "got $x"; echo err >&2; exit 7']);
    let o = '', e = '';
    c.stdout.on('data', (d) => (o += d)); c.stderr.on('data', (d) => (e += d));
    c.on('close', (code) => resolve(`${o.trim()}|${e.trim()}|${code}`));
    c.stdin.end('abc\n');
  });
  console.log('spawn:', out);
  console.log('execFileSync:', cp.execFileSync('echo', ['one', 'two']).toString().trim());
  console.log('spawnSync missing:', cp.spawnSync('/no/such/bin').error?.code);
  const kids = await Promise.all(Array.from({ length: 8 }, (_, i) => new Promise((r) => cp.execFile('sh', ['-c', `exit ${i}`], (err) => r(err ? err.code : 0)))));
  console.log('8 children:', kids.join(','));
  const shell = cp.execSync('echo $((6*7)) | cat', { shell: '/bin/sh' }).toString().trim();
  console.log('execSync shell:', shell);

  // worker_threads
  const ws = await Promise.all([1, 2, 3, 4].map((n) => new Promise((resolve, reject) => {
    const wk = new Worker(__filename, { workerData: n });
    wk.on('message', resolve); wk.on('error', reject);
  })));
  console.log('workers:', ws.join(' '));
  console.log('done');
})().catch((e) => { console.log('ERROR', e); process.exitCode = 1; });
