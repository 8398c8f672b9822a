"""Python workload for the native-vs-shim sweep: http.server + urllib on 127.0.0.1,
asyncio streams and subprocess, multiprocessing Pool (fork and spawn), subprocess,
selectors, os.posix_spawn. Prints only deterministic observations."""
import asyncio, hashlib, http.server, multiprocessing as mp, os, selectors, socket
import subprocess, sys, tempfile, threading, urllib.request


def square(x):
    return x * x


def pid_parity(_):
    return os.getpid() != 0


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (self.path * 1000).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


async def aio():
    out = []

    async def handle(r, w):
        data = await r.read()
        w.write(hashlib.sha1(data).hexdigest().encode())
        await w.drain()
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]

    async def client(i):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(bytes([i]) * 300000)
        await w.drain()
        w.write_eof()
        d = await r.read()
        w.close()
        return d.decode() == hashlib.sha1(bytes([i]) * 300000).hexdigest()

    out.append("asyncio streams: %s" % all(await asyncio.gather(*(client(i) for i in range(10)))))
    srv.close()
    await srv.wait_closed()
    p = await asyncio.create_subprocess_exec(
        "sh", "-c", "cat; echo tail; exit 9", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    o, _ = await p.communicate(b"head\n")
    out.append("asyncio subprocess: %r rc=%d" % (o, p.returncode))
    p = await asyncio.create_subprocess_shell("echo $((3*5))", stdout=asyncio.subprocess.PIPE)
    o, _ = await p.communicate()
    out.append("asyncio shell: %r rc=%d" % (o, p.returncode))
    return out


def main():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    port = srv.server_address[1]
    ok = 0
    for i in range(20):
        with urllib.request.urlopen("http://127.0.0.1:%d/p%d" % (port, i), timeout=10) as r:
            ok += r.read() == (("/p%d" % i) * 1000).encode()
    print("http.server+urllib ok=%d/20" % ok)
    srv.shutdown()
    srv.server_close()

    for line in asyncio.run(aio()):
        print(line)

    for method in ("fork", "spawn", "forkserver"):
        ctx = mp.get_context(method)
        with ctx.Pool(2) as pool:
            print("mp %s: %d %s" % (method, sum(pool.map(square, range(100))), all(pool.map(pid_parity, range(4)))))
        q = ctx.Queue()
        pr = ctx.Process(target=q.put, args=("via-queue-" + method,))
        pr.start()
        print("mp %s process: %s exit=%d" % (method, q.get(timeout=30), (pr.join(30), pr.exitcode)[1]))

    r = subprocess.run(["sh", "-c", "echo out; echo err >&2; exit 2"], capture_output=True)
    print("subprocess.run:", r.stdout, r.stderr, r.returncode)
    r = subprocess.run("echo $0", shell=True, capture_output=True, close_fds=False)
    print("subprocess shell:", r.stdout)
    try:
        subprocess.run(["/no/such/bin"])
    except FileNotFoundError as e:
        print("subprocess missing: FileNotFoundError", e.errno)
    p = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=())
    o, _ = p.communicate(b"x" * 1000000)
    print("subprocess cat 1MB:", len(o), p.returncode)
    pid = os.posix_spawnp("sh", ["sh", "-c", "exit 5"], os.environ)
    print("posix_spawnp exit:", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    pid = os.fork()
    if pid == 0:
        os._exit(11)
    print("os.fork exit:", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))

    sel = selectors.DefaultSelector()
    a, b = socket.socketpair()
    sel.register(a, selectors.EVENT_READ)
    print("selector empty:", sel.select(0.1))
    b.send(b"hi")
    print("selector ready:", [k.fileobj is a for k, _ in sel.select(1)])
    with tempfile.TemporaryDirectory() as d:
        for i in range(100):
            with open(os.path.join(d, "f%d" % i), "w") as f:
                f.write("x" * i)
        print("files:", len(os.listdir(d)), sum(os.stat(os.path.join(d, n)).st_size for n in os.listdir(d)))
    print("done")


if __name__ == "__main__":
    main()
