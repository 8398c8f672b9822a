#!/usr/bin/env python3
"""Differential runner for external test suites: natively vs under the Arrakis shim.

Runs third-party test suites (CPython's own regression tests, tornado's test suite)
once natively and once under `arrakis run --`, parses the per-test-case outcome of every
test id from the verbose unittest output, and diffs the two runs.  With every fd on the
kernel path the shim must change nothing observable, so the outcome of every test id must
be the same in both modes.

The cpython-net suite runs the socket and event-loop tests with the shim mode's sockets
on the library OS (ARRAKIS_BACKEND=loopback in the shim mode's environment only), prints
per-test-file counts, and honours known-differences.txt: a listed difference is reported
as known with its reason and does not fail the run.

Flake policy: a test id whose outcome differs between the two full runs is re-run alone,
in both modes, up to --reruns times; the difference counts only if it reproduces in every
re-run (native and shim outcomes still differ).  Every re-run is printed.

Invoked by run.sh (which picks the interpreter and builds the workspace); see README.md.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKSPACE = HERE.parent.parent

# --------------------------------------------------------------------------------------
# Suites
# --------------------------------------------------------------------------------------

CPYTHON_TESTS = [
    "test_socket", "test_selectors", "test_select", "test_poll", "test_epoll",
    "test_socketserver", "test_io", "test_fileio", "test_os", "test_posix", "test_fcntl",
    "test_subprocess", "test_asyncio",
]
CPYTHON_QUICK = ["test_select", "test_poll", "test_epoll", "test_fcntl", "test_selectors"]
# *VSOCK*: those tests hang on these VMs.  test_idna: with -u network it resolves
# python.org / pythontest.net over the internet; we keep all traffic on loopback.
CPYTHON_IGNORE = ["*VSOCK*", "test_idna"]

# cpython-net: the socket and event-loop tests, with the shim serving AF_INET/AF_INET6
# TCP/UDP on the library OS (ARRAKIS_BACKEND=loopback); client and server run in one
# process.  test_asyncio runs whole (regrtest splits it into its 29 files; ~1 min): its
# files without INET sockets still drive the selector event loop, i.e. the shim's epoll
# over socketpairs and pipes, next to the socket-heavy ones.
NET_TESTS = ["test_socket", "test_selectors", "test_epoll", "test_poll", "test_select",
             "test_asyncio"]
NET_QUICK = ["test_selectors", "test_epoll", "test_poll", "test_select",
             "test_asyncio.test_sock_lowlevel"]
# Same loopback-only rule as the cpython suite.  Surveyed with strace -f (connect/sendto
# of every test file under -u network, CPython 3.11.7): test_idna's DNS query for
# python.org is the only packet these files send off the host.
NET_IGNORE = CPYTHON_IGNORE
NET_SHIM_ENV = {"ARRAKIS_BACKEND": "loopback"}
# Test files that create AF_INET/AF_INET6 sockets (beyond socket_helper's one IPv6
# probe), from the same survey; the per-file table marks them "inet".  The others use
# socketpair (AF_UNIX), pipes and mocks.
NET_INET_FILES = {
    "test_socket", "test_epoll",
    "test_asyncio.test_base_events", "test_asyncio.test_buffered_proto",
    "test_asyncio.test_events", "test_asyncio.test_sendfile", "test_asyncio.test_server",
    "test_asyncio.test_sock_lowlevel", "test_asyncio.test_ssl",
    "test_asyncio.test_sslproto", "test_asyncio.test_streams",
    "test_asyncio.test_unix_events",
}

SUITES = ("cpython", "tornado", "cpython-net")
DEFAULT_SUITES = ["cpython", "tornado"]

TORNADO_QUICK = ["tornado.test.iostream_test", "tornado.test.ioloop_test",
                 "tornado.test.tcpclient_test"]

# --------------------------------------------------------------------------------------
# Parsing verbose unittest / regrtest output
# --------------------------------------------------------------------------------------

SEVERITY = {
    "missing": 0,
    "skipped": 1,
    "expected failure": 2,
    "ok": 3,
    "unexpected success": 4,
    "FAIL": 5,
    "ERROR": 6,
}
OUTCOME_ORDER = ["ok", "skipped", "expected failure", "unexpected success", "FAIL",
                 "ERROR", "missing"]
HOLDERS = {"setUpClass", "tearDownClass", "setUpModule", "tearDownModule"}

# "test_x (pkg.mod.Class.test_x)" (3.11 format), "setUpClass (pkg.mod.Class)",
# "HTTPHeaders (tornado.httputil)" (doctests)
DESC_RE = re.compile(r"(?P<name>[A-Za-z_]\w*) \((?P<inner>[A-Za-z_][\w.]*)\)")
STATUS_RE = re.compile(
    r"(?P<st>ok|FAIL|ERROR|expected failure|unexpected success|skipped)"
    r"(?P<reason> (?:'.*'|\".*\"))?\s*")
PROGRESS_RE = re.compile(
    r"^\d+:\d\d:\d\d (?:load avg: [\d.]+ )?\[\s*\d+/\d+(?:/\d+)?\] (?P<mod>\S+)"
    r"(?: (?P<status>.*?))?(?: -- running: .*)?$")
# a status glued to the end of test output printed without a trailing newline
TAIL_STATUS_RE = re.compile(
    r"(?P<st>ok|FAIL|ERROR|expected failure|unexpected success|skipped)"
    r"(?P<reason> (?:'.*'|\".*\"))?$")
RAN_RE = re.compile(r"^Ran (\d+) tests? in ")
HEADER_RE = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (.*)$")
SEP1 = "=" * 70


def desc_to_id(m: re.Match) -> tuple[str, bool]:
    """Test id for a description match; second value: is it a plain test method id."""
    name, inner = m.group("name"), m.group("inner")
    if inner.endswith("." + name) and name not in HOLDERS:
        return inner, True
    return f"{name} ({inner})", False


def norm_module_status(st: str | None) -> str:
    st = (st or "").strip()
    if st.startswith("passed"):
        return "passed"
    if "env changed" in st:
        return "env changed"
    if st.startswith("failed"):
        return "failed"
    if "resource denied" in st:
        return "resource denied"
    if st.startswith("skipped"):
        return "skipped"
    if st.startswith("crashed") or "Exit code" in st or "non-zero exit" in st:
        return "crashed"
    if "timed out" in st or "timeout" in st:
        return "timed out"
    if "run no tests" in st:
        return "run no tests"
    return st or "unknown"


MODULE_NORMAL = {"passed", "failed", "skipped", "resource denied", "run no tests"}


@dataclass
class Parsed:
    outcomes: dict = field(default_factory=dict)       # id -> outcome
    skip_reason: dict = field(default_factory=dict)    # id -> reason
    module_of: dict = field(default_factory=dict)      # id -> regrtest module (cpython)
    plain: dict = field(default_factory=dict)          # id -> is a plain test-method id
    modules: dict = field(default_factory=dict)        # regrtest module -> status
    module_raw: dict = field(default_factory=dict)     # regrtest module -> status text
    ran_total: int = 0                                 # sum of "Ran N tests"
    completed: bool = False                            # final summary seen
    logged_line: str = ""                              # tornado: "logged N infos..."


class VerboseParser:
    """Line-based state machine over unittest verbosity=2 output.

    Handles: "desc ... status"; output printed between "desc ... " and the status
    (status then comes alone on a later line); docstring descriptions (desc alone on a
    line, "doc first line ... status" on the next); subtests ("  desc (i=1) ... FAIL",
    counted against the parent id); setUpClass/setUpModule holders; regrtest -j progress
    lines (module status, and which module the following block belongs to); and the
    FAIL:/ERROR: headers printed after each run, which are authoritative for failures.
    """

    def __init__(self, suite: str):
        self.suite = suite
        self.p = Parsed()
        self.module = None
        self.pending = None          # (id, plain, sub) awaiting a status
        self.pending_last = ""       # last non-empty output line while pending
        self.prev_line = ""

    def abandon(self):
        """The pending test's status line never came on a line of its own. If the last
        output line ends with a status word, the test printed output without a trailing
        newline and the status got glued to it; take it. Otherwise drop the test (it
        crashed, or printed nothing, and will show as missing)."""
        if self.pending:
            tid, plain, sub = self.pending
            m = TAIL_STATUS_RE.search(self.pending_last)
            if m:
                self.record(tid, plain, m, sub)
        self.pending = None
        self.pending_last = ""

    def record(self, tid, plain, status_match, sub=False):
        st = status_match.group("st")
        if st == "skipped":
            outcome = "skipped"
            reason = status_match.group("reason") or ""
            reason = reason.strip()
            if not sub:
                self.p.skip_reason.setdefault(tid, reason.strip("'\""))
        else:
            outcome = st
        self.set_outcome(tid, plain, outcome)

    def set_outcome(self, tid, plain, outcome):
        old = self.p.outcomes.get(tid)
        if old is None or SEVERITY[outcome] > SEVERITY[old]:
            self.p.outcomes[tid] = outcome
        self.p.plain.setdefault(tid, plain)
        if self.module and tid not in self.p.module_of:
            self.p.module_of[tid] = self.module

    def feed(self, line: str):
        prev, self.prev_line = self.prev_line, line
        if self.suite == "cpython":     # parser kind: cpython (regrtest) or tornado
            m = PROGRESS_RE.match(line)
            if m:
                self.abandon()
                self.module = m.group("mod")
                self.p.modules[self.module] = norm_module_status(m.group("status"))
                self.p.module_raw[self.module] = (m.group("status") or "").strip()
                return
            if line.startswith("== Tests result:"):
                self.p.completed = True
                self.module = None
        if line == SEP1 or line == "-" * 70:
            self.abandon()
        m = RAN_RE.match(line)
        if m:
            self.abandon()
            self.p.ran_total += int(m.group(1))
            if self.suite == "tornado":
                self.p.completed = True
            return
        if "logged" in line and "bytes to stderr" in line:
            self.p.logged_line = line.strip()
        if prev == SEP1:
            h = HEADER_RE.match(line)
            if h:
                d = DESC_RE.match(h.group(2))
                if d:
                    tid, plain = desc_to_id(d)
                    outcome = {"FAIL": "FAIL", "ERROR": "ERROR",
                               "UNEXPECTED SUCCESS": "unexpected success"}[h.group(1)]
                    self.set_outcome(tid, plain, outcome)
                return
        self.segment(line)

    def segment(self, s: str):
        sub = s.startswith("  ") and not s.startswith("   ")
        body = s[2:] if sub else s
        d = DESC_RE.match(body)
        if d:
            tid, plain = desc_to_id(d)
            rest = body[d.end():]
            idx = rest.find(" ... ")
            if idx == -1:
                if rest.strip() == "" or (sub and rest[:2] in (" (", " [")):
                    # docstring description: status follows on the next line
                    if not sub:
                        self.abandon()
                    self.pending = (tid, plain, sub)
                    self.pending_last = ""
                    return
                d = None   # not a description after all; treat as output
            elif idx == 0 or (sub and rest[:2] in (" (", " [")):
                if not sub:
                    self.abandon()
                tail = rest[idx + 5:]
                self.after_dots(tid, plain, sub, tail)
                return
            else:
                d = None
        # Not a description line: test output, or the status of the pending test.
        if self.pending:
            tid, plain, sub = self.pending
            st = STATUS_RE.fullmatch(s)
            if st:
                self.record(tid, plain, st, sub)
                self.pending = None
                return
            if s.strip():
                self.pending_last = s
            pos = s.find(" ... ")
            while pos != -1:     # "doc first line ... status"
                st = STATUS_RE.fullmatch(s[pos + 5:])
                if st:
                    self.record(tid, plain, st, sub)
                    self.pending = None
                    return
                pos = s.find(" ... ", pos + 1)

    def after_dots(self, tid, plain, sub, tail):
        st = STATUS_RE.fullmatch(tail)
        if st:
            self.record(tid, plain, st, sub)
            self.pending = None
            return
        if DESC_RE.match(tail):
            # The test printed no status at all (tornado's abstract-base-test skip);
            # the next test's description follows on the same line.
            self.pending = None
            self.segment(tail)
            return
        # Test output follows the dots; the status comes on a later line.
        self.pending = (tid, plain, sub)
        self.pending_last = tail


def parse_log(path: Path, suite: str) -> Parsed:
    vp = VerboseParser(suite)
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            vp.feed(line.rstrip("\r\n"))
    return vp.p


# --------------------------------------------------------------------------------------
# Running commands with a bound
# --------------------------------------------------------------------------------------

@dataclass
class RunInfo:
    mode: str
    log: Path
    rc: int | None
    timed_out: bool
    duration: float
    parsed: Parsed | None = None


CURRENT_PROC = None
# time.monotonic() by which everything must be over (--deadline): every run's timeout is
# clipped to it, so that the summary is still written when run.sh's backstop is near.
DEADLINE: float | None = None


def time_left() -> float:
    return float("inf") if DEADLINE is None else DEADLINE - time.monotonic()


def run_bounded(cmd, env, cwd, log: Path, timeout: float) -> tuple[int | None, bool, float]:
    """Run cmd (stdout+stderr -> log) in its own process group; kill the group on timeout
    (or at the overall deadline, whichever comes first)."""
    global CURRENT_PROC
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
    if time_left() < timeout:
        timeout = max(time_left(), 1.0)
        note = " (the overall --deadline)"
    else:
        note = ""
    t0 = time.monotonic()
    timed_out = False
    with open(log, "wb") as out:
        out.write(("$ " + shlex.join(cmd) + "\n").encode())
        out.flush()
        p = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        CURRENT_PROC = p
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_group(p)
            rc = p.returncode
        finally:
            CURRENT_PROC = None
        if timed_out:
            out.write(f"\n[run_external] TIMEOUT after {timeout:.0f}s{note}: process group "
                      f"killed\n".encode())
    return rc, timed_out, time.monotonic() - t0


def _stat(pid) -> tuple[int, int] | None:
    """(parent pid, start time) of a process, from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every process below pid, including those that left its
    process group: regrtest starts each -jN worker in a session of its own."""
    children = {}
    for d in os.listdir("/proc"):
        st = _stat(d) if d.isdigit() else None
        if st:
            children.setdefault(st[0], []).append((int(d), st[1]))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c[0])
    return out


def kill_group(p):
    """SIGTERM, then SIGKILL, the process group of p and every process that was below p
    when the kill began (checked by start time, so a reused pid is never signalled)."""
    below = descendants(p.pid)
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            pass
        for pid, start in below:
            st = _stat(pid)
            if st and st[1] == start:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
        try:
            p.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


# --------------------------------------------------------------------------------------
# Modes
# --------------------------------------------------------------------------------------

class Modes:
    def __init__(self, launcher: list[str], expect_lib: str):
        self.launcher = launcher
        self.expect_lib = expect_lib
        base = dict(os.environ)
        base.pop("LD_PRELOAD", None)       # native means native
        self.env = base

    def wrap(self, mode, cmd):
        return cmd if mode == "native" else self.launcher + cmd

    def env_for(self, mode, base, shim_env, arrakis_log: Path | None):
        """The environment of a run: `base` natively; in shim mode plus the suite's
        extra variables (e.g. ARRAKIS_BACKEND=loopback) and, if asked, ARRAKIS_LOG_FILE
        (so the shim's log lines go to a file, not into the tests' stderr)."""
        env = dict(base)
        if mode == "shim":
            env.update(shim_env)
            if arrakis_log is not None and "ARRAKIS_LOG_FILE" not in shim_env:
                env["ARRAKIS_LOG_FILE"] = str(arrakis_log)
        return env

    def preflight(self, py: str, out: Path) -> bool:
        """Check the preload really is (is not) mapped in each mode, also in a child
        process (regrtest -j and tornado spawn children, which must inherit it)."""
        probe = (
            "import json, os, subprocess, sys\n"
            "def has(n):\n"
            "    return any(n in l for l in open('/proc/self/maps'))\n"
            "child = subprocess.run([sys.executable, '-c', "
            "'import sys; print(any(sys.argv[1] in l for l in open(\"/proc/self/maps\")))',"
            " sys.argv[1]], capture_output=True, text=True).stdout.strip()\n"
            "print('PROBE', json.dumps({'self': has(sys.argv[1]), 'child': child == 'True',"
            " 'LD_PRELOAD': os.environ.get('LD_PRELOAD')}))\n"
        )
        ok = True
        for mode in ("native", "shim"):
            log = out / f"preflight-{mode}.log"
            cmd = self.wrap(mode, [py, "-c", probe, self.expect_lib])
            rc, to, _ = run_bounded(cmd, self.env, out / "work", log, 120)
            text = log.read_text(errors="replace")
            m = re.search(r"^PROBE (.*)$", text, re.M)
            info = json.loads(m.group(1)) if m else None
            want = mode == "shim"
            good = (rc == 0 and info is not None and info["self"] == want
                    and info["child"] == want)
            print(f"  preflight {mode:6}: rc={rc} {info}  -> "
                  f"{'ok' if good else 'FAILED'} (want '{self.expect_lib}' "
                  f"{'mapped' if want else 'not mapped'}; log {log})")
            ok &= good
        return ok

    def backend_probe(self, py: str, env: dict, sdir: Path, say) -> dict:
        """Which backend the shim says it drives with this suite's shim environment, and
        whether a TCP listener on 127.0.0.1 it creates is visible in the kernel's
        /proc/net/tcp (a socket on the library OS is not).  Informational, unless
        --require-backend."""
        probe = (
            "import json, os, socket\n"
            "r = {}\n"
            "try:\n"
            "    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)\n"
            "    s.bind(('127.0.0.1', 0)); s.listen(); s.settimeout(10)\n"
            "    port = s.getsockname()[1]\n"
            "    r['port'] = port\n"
            "    r['fd_link'] = os.readlink('/proc/self/fd/%d' % s.fileno())\n"
            "    r['in_kernel_proc_net_tcp'] = any(\n"
            "        int(l.split()[1].split(':')[1], 16) == port and l.split()[3] == '0A'\n"
            "        for l in open('/proc/net/tcp').readlines()[1:])\n"
            "    c = socket.create_connection(('127.0.0.1', port), timeout=10)\n"
            "    a, _ = s.accept(); a.settimeout(10); c.sendall(b'ping')\n"
            "    r['roundtrip'] = a.recv(4) == b'ping'\n"
            "except Exception as e:\n"
            "    r['error'] = repr(e)\n"
            "print('PROBE', json.dumps(r))\n"
        )
        alog = sdir / "probe-arrakis.log"
        log = sdir / "probe-shim.log"
        penv = dict(env)
        penv.update({"ARRAKIS_LOG": "debug", "ARRAKIS_LOG_FILE": str(alog)})
        rc, to, _ = run_bounded(self.wrap("shim", [py, "-c", probe]), penv, sdir / "work",
                                log, 60)
        text = log.read_text(errors="replace")
        m = re.search(r"^PROBE (.*)$", text, re.M)
        info = json.loads(m.group(1)) if m else {"error": f"no probe output (rc {rc})"}
        lines = alog.read_text(errors="replace").splitlines() if alog.exists() else []
        loaded = [ln for ln in lines if "arrakis shim loaded" in ln]
        bm = re.search(r"backend=(\w+)", loaded[0]) if loaded else None
        problems = [ln for ln in lines if re.search(r"\b(ERROR|WARN)\b", ln)]
        wanted = env.get("ARRAKIS_BACKEND", "kernel")
        rejected = any("is not a backend" in ln for ln in problems)
        reported = bm.group(1) if bm else None
        if rejected:
            verdict = "rejected"
            what = (f"REJECTED by this build: every fd stays on the kernel path, so this "
                    f"run compares the kernel with the kernel")
        elif reported and reported.lower() == wanted.lower():
            verdict = "accepted"
            what = f"accepted (the shim reports backend={reported})"
        else:
            verdict = "unknown"
            what = (f"not confirmed (the shim's start-up line says backend={reported})"
                    if reported else "not confirmed (no start-up line in the shim's log)")
        say(f"  backend probe: ARRAKIS_BACKEND={wanted}: {what}")
        for ln in problems[:5]:
            say(f"    shim log: {ln}")
        if "error" in info:
            say(f"    probe error: {info['error']}  (log {log})")
        else:
            where = ("in the kernel's /proc/net/tcp (a kernel socket)"
                     if info.get("in_kernel_proc_net_tcp")
                     else "NOT in the kernel's /proc/net/tcp (served by the library OS)")
            say(f"    probe: a TCP listener on 127.0.0.1:{info.get('port')} is {where}; "
                f"fd -> {info.get('fd_link')}; connect/send/recv round trip "
                f"{'ok' if info.get('roundtrip') else 'FAILED'}")
        return {"wanted": wanted, "verdict": verdict, "reported": reported,
                "log_problems": problems[:20], "probe": info, "rc": rc, "timed_out": to}


# --------------------------------------------------------------------------------------
# Suite drivers
# --------------------------------------------------------------------------------------

class CPythonSuite:
    name = "cpython"
    parser = "cpython"          # output format: regrtest -v -jN
    ignore = CPYTHON_IGNORE
    file_table = False          # print the per-test-file counts
    inet_files: set = set()
    one_test_timeout = None     # regrtest --timeout of a one-test re-run (None: per file)

    def __init__(self, py, quick, module_timeout, suite_timeout, jobs, shim_env=None):
        self.py = py
        self.tests = CPYTHON_QUICK if quick else CPYTHON_TESTS
        self.module_timeout = module_timeout
        self.suite_timeout = suite_timeout
        self.jobs = jobs
        self.shim_env = dict(shim_env or {})   # extra environment of the shim mode

    def title(self):
        return f"CPython regrtest ({self.py}): {' '.join(self.tests)}"

    def base(self, jobs, timeout=None, match=None):
        cmd = [self.py, "-m", "test", "-v", f"-j{jobs}", "--timeout",
               str(timeout or self.module_timeout), "-u", "network"]
        # -m before -i: regrtest applies -m/-i patterns last-to-first and a test that
        # matches none gets the opposite of the FIRST pattern's verdict, so with an -i
        # first every test not ignored runs and the -m selects nothing.
        if match:
            cmd += ["-m", match]
        for pat in self.ignore:
            cmd += ["-i", pat]
        return cmd

    def full_cmd(self):
        return self.base(self.jobs) + self.tests

    def env(self, env):
        return env

    def rerun_cmd(self, tid, plain, parsed_runs):
        mod = None
        for p in parsed_runs:
            mod = mod or p.module_of.get(tid)
        if mod is None:
            # fall back on the id: test.test_x[.sub].Class.test
            parts = tid.split(" (")[-1].rstrip(")").split(".")
            mod = parts[1] if len(parts) > 1 else None
        if mod is None:
            return None, "no module known"
        if plain:
            return self.base(1, self.one_test_timeout, tid) + [mod], f"{mod} -m {tid}"
        name, inner = tid.split(" (", 1)
        inner = inner.rstrip(")")
        if name in ("setUpClass", "tearDownClass"):
            return (self.base(1, self.one_test_timeout, inner + ".*") + [mod],
                    f"{mod} -m {inner}.*")
        return self.base(1) + [mod], f"whole module {mod}"

    def module_rerun_cmd(self, mod):
        return self.base(1) + [mod]

    def rerun_timeout(self):
        return self.module_timeout + 120


class CPythonNetSuite(CPythonSuite):
    """The socket and event-loop test files with the shim mode on the library OS's
    sockets (NET_SHIM_ENV, i.e. ARRAKIS_BACKEND=loopback, unless --shim-env says
    otherwise).  The shim's log goes to a file per run (ARRAKIS_LOG_FILE), not into the
    tests' stderr."""
    name = "cpython-net"
    ignore = NET_IGNORE
    file_table = True
    inet_files = NET_INET_FILES
    # a test (or class) re-run alone takes seconds natively; one that hangs on the
    # library OS should not hold each re-run for the per-file bound
    one_test_timeout = 120

    def __init__(self, py, quick, module_timeout, suite_timeout, jobs, shim_env):
        super().__init__(py, quick, module_timeout, suite_timeout, jobs, shim_env)
        self.tests = NET_QUICK if quick else NET_TESTS

    def title(self):
        extra = " ".join(f"{k}={v}" for k, v in self.shim_env.items()) or "(none)"
        return (f"CPython regrtest ({self.py}): {' '.join(self.tests)}; "
                f"shim-mode environment: {extra}")

    def rerun_timeout(self):
        # regrtest kills a worker at min(1.5 x --timeout, --timeout + 300 s)
        return self.module_timeout * 1.5 + 60


class TornadoSuite:
    name = "tornado"
    parser = "tornado"
    file_table = False
    inet_files: set = set()

    def __init__(self, py, quick, suite_timeout, shim_env=None):
        self.py = py
        self.quick = quick
        self.suite_timeout = suite_timeout
        self.shim_env = dict(shim_env or {})

    def title(self):
        import_ver = subprocess.run([self.py, "-c", "import tornado; print(tornado.version)"],
                                    capture_output=True, text=True).stdout.strip()
        what = " ".join(TORNADO_QUICK) if self.quick else "full suite"
        return f"tornado {import_ver} ({self.py}): NO_NETWORK=1 runtests --verbose, {what}"

    def base(self):
        return [self.py, "-m", "tornado.test.runtests", "--verbose"]

    def full_cmd(self):
        return self.base() + (TORNADO_QUICK if self.quick else [])

    def env(self, env):
        e = dict(env)
        e["NO_NETWORK"] = "1"
        return e

    def rerun_cmd(self, tid, plain, parsed_runs):
        if plain:
            return self.base() + [tid], tid
        name, inner = tid.split(" (", 1)
        inner = inner.rstrip(")")
        if name in ("setUpClass", "tearDownClass"):
            return self.base() + [inner], f"class {inner}"
        # doctests (and anything else unusual) are only reachable through the full suite
        return self.full_cmd(), "whole suite (doctest / non-method id)"

    def module_rerun_cmd(self, mod):
        return None

    def rerun_timeout(self):
        return min(self.suite_timeout, 600)


def ensure_tornado(py) -> bool:
    chk = subprocess.run([py, "-c", "import tornado.test.runtests"], capture_output=True)
    if chk.returncode == 0:
        return True
    print("  tornado (with its tests) not importable: installing with pip")
    r = subprocess.run([py, "-m", "pip", "install", "tornado"], timeout=600)
    chk = subprocess.run([py, "-c", "import tornado.test.runtests"], capture_output=True)
    return r.returncode == 0 and chk.returncode == 0


# --------------------------------------------------------------------------------------
# Known differences
# --------------------------------------------------------------------------------------

# "name (pkg.mod.Class)" ids (setUpClass holders, doctests) contain a space
KNOWN_RE = re.compile(r"^(?P<id>[A-Za-z_]\w* \([^)]*\)|\S+)\s+(?P<reason>\S.*)$")


@dataclass
class KnownEntry:
    pattern: str       # a test id, a regrtest test-file name, or an fnmatch pattern
    reason: str
    suites: tuple      # the suites it applies to; () = all
    line: int

    @property
    def skip(self) -> bool:
        """"skip: ..." entries are not run in either mode (regrtest -i): for a test that
        hangs, or breaks the tests after it in its file, on the library OS."""
        return self.reason.lower().startswith("skip:")

    def matches(self, what: str) -> bool:
        if any(c in self.pattern for c in "*?["):
            return fnmatch.fnmatchcase(what, self.pattern)
        return what == self.pattern


def load_known(path: Path) -> list[KnownEntry]:
    """Parse the known-differences file (format in its header). Raises ValueError."""
    entries, suites = [], ()
    if not path.exists():
        return entries
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        sec = re.fullmatch(r"\[([\w., -]+)\]", line)
        if sec:
            suites = tuple(x.strip() for x in sec.group(1).split(",") if x.strip())
            bad = [x for x in suites if x not in SUITES]
            if bad:
                raise ValueError(f"{path}:{n}: unknown suite {bad[0]!r} (one of "
                                 f"{', '.join(SUITES)})")
            continue
        m = KNOWN_RE.match(line)
        if not m:
            raise ValueError(f"{path}:{n}: want 'TEST-ID  REASON' (a reason is required): "
                             f"{raw!r}")
        entries.append(KnownEntry(m.group("id"), m.group("reason").strip(), suites, n))
    return entries


# --------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------

def counts(p: Parsed) -> dict:
    c = {k: 0 for k in OUTCOME_ORDER if k != "missing"}
    for tid, o in p.outcomes.items():
        c[o] += 1
    return c


def file_counts(p: Parsed) -> dict:
    """Per regrtest test file: passed (ok, expected failure), failed (FAIL, ERROR,
    unexpected success), skipped; ids of no known file count under "?"."""
    c = {}
    for tid, o in p.outcomes.items():
        d = c.setdefault(p.module_of.get(tid, "?"), {"passed": 0, "failed": 0, "skipped": 0})
        d["passed" if o in ("ok", "expected failure") else
          "skipped" if o == "skipped" else "failed"] += 1
    return c


def file_table(suite, nat: Parsed, shim: Parsed, say) -> dict:
    fn, fs = file_counts(nat), file_counts(shim)
    files = sorted(set(fn) | set(fs) | set(nat.modules) | set(shim.modules))
    zero = {"passed": 0, "failed": 0, "skipped": 0}
    result, rows = {}, []

    def pfs(d):
        return f"{d['passed']}/{d['failed']}/{d['skipped']}"

    def add(label, n, s_, inet, sn, ss):
        rows.append((label, inet, pfs(n), pfs(s_), sn, ss,
                     "" if (pfs(n), sn) == (pfs(s_), ss) else "<- differs"))

    sub = {"native": dict(zero), "shim": dict(zero), "files": 0}
    tot = {"native": dict(zero), "shim": dict(zero)}
    for f in files:
        n, s_ = fn.get(f, zero), fs.get(f, zero)
        sn, ss = nat.modules.get(f, "missing"), shim.modules.get(f, "missing")
        result[f] = {"native": dict(n, status=sn), "shim": dict(s_, status=ss),
                     "inet": f in suite.inet_files}
        add(f, n, s_, "inet" if f in suite.inet_files else "", sn, ss)
        for k in zero:
            tot["native"][k] += n[k]
            tot["shim"][k] += s_[k]
            if f.startswith("test_asyncio."):
                sub["native"][k] += n[k]
                sub["shim"][k] += s_[k]
        sub["files"] += f.startswith("test_asyncio.")
    if sub["files"] > 1:
        add(f"test_asyncio ({sub['files']} files)", sub["native"], sub["shim"], "", "", "")
        result["test_asyncio (all)"] = {"native": sub["native"], "shim": sub["shim"]}
    add("TOTAL", tot["native"], tot["shim"], "", "", "")
    say("\n  per test file: passed/failed/skipped (passed = ok + expected failure; failed = "
        "FAIL + ERROR + unexpected success; inet = creates AF_INET/AF_INET6 sockets)")
    say(fmt_table(rows, ("test file", "", "native", "shim", "file native", "file shim", "")))
    return result


def fmt_table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = ["  " + "  ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    for r in rows:
        lines.append("  " + "  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
    return "\n".join(lines)


class Report:
    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "w")

    def __call__(self, *args):
        s = " ".join(str(a) for a in args)
        print(s, flush=True)
        self.f.write(s + "\n")
        self.f.flush()

    def close(self):
        self.f.close()


FRAME_RE = re.compile(r'^\s*File "(?P<file>[^"]*/test/(?!libregrtest/)[^"]*)", line (?P<line>\d+) '
                      r'in (?P<func>\S+)')


def hang_points(log: Path) -> list[str]:
    """Where regrtest's faulthandler found the tests at a --timeout ("Timeout (0:05:00)!"
    and a traceback of every thread): the test-file frames of each dump."""
    out, cur = [], None
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if re.match(r"^Timeout \(\d+:\d\d:\d\d\)!", line):
                cur = []
                out.append(cur)
                continue
            if cur is None:
                continue
            m = FRAME_RE.match(line)
            if m:
                where = (f"{m.group('file').split('/test/', 1)[1]}:{m.group('line')} "
                         f"{m.group('func')}")
                if where not in cur:
                    cur.append(where)
            elif not (line.startswith("Thread 0x") or line.startswith("  File")
                      or not line.strip()):
                cur = None
    return ["; ".join(c[:4]) for c in out if c]


def shim_log_summary(path: Path, say, indent="  "):
    """Count the shim's log lines of a run (ARRAKIS_LOG_FILE) and show the commonest."""
    if not path.exists():
        say(f"{indent}shim log {path.name}: empty (nothing logged at the default level)")
        return {"lines": 0, "top": []}
    lines = path.read_text(errors="replace").splitlines()
    norm = {}
    for ln in lines:
        k = re.sub(r"^\S+Z\s+", "", ln)              # timestamp
        k = re.sub(r"\d+", "N", k)[:160]
        norm[k] = norm.get(k, 0) + 1
    top = sorted(norm.items(), key=lambda kv: -kv[1])[:8]
    say(f"{indent}shim log {path}: {len(lines)} lines, {len(norm)} distinct")
    for k, n in top:
        say(f"{indent}  {n:6}x {k}")
    return {"lines": len(lines), "top": top}


def run_suite(suite, modes: Modes, out: Path, args, say, known_all) -> dict:
    sdir = out / suite.name
    if sdir.exists():
        shutil.rmtree(sdir)
    (sdir / "reruns").mkdir(parents=True)
    work = sdir / "work"
    base_env = suite.env(modes.env)
    to_file = bool(suite.shim_env) or suite.name == "cpython-net"
    known = [k for k in known_all if not k.suites or suite.name in k.suites]
    skips = [k for k in known if k.skip]

    def env_of(mode, log: Path):
        alog = log.with_suffix(".arrakis.log") if to_file else None
        return modes.env_for(mode, base_env, suite.shim_env, alog)

    if skips and suite.parser == "cpython":
        suite.ignore = list(suite.ignore) + [k.pattern for k in skips]
    say(f"\n=== {suite.name}: {suite.title()} ===")
    if known:
        say(f"  {len(known)} known-difference entries for this suite in {args.known}")
    if skips:
        if suite.parser == "cpython":
            say(f"  not run in either mode ('skip:' entries, regrtest -i): {len(skips)}")
            for k in skips:
                say(f"    line {k.line}: {k.pattern} -- {k.reason}")
        else:
            say(f"  note: {len(skips)} 'skip:' entries ignored (only regrtest suites can "
                f"exclude tests)")
    probe = None
    if "ARRAKIS_BACKEND" in suite.shim_env:
        probe = modes.backend_probe(suite.py, env_of("shim", sdir / "probe.log"), sdir, say)
        if args.require_backend and probe["verdict"] != "accepted":
            say(f"  VERDICT {suite.name}: FAIL (setup: --require-backend and the shim does "
                f"not confirm ARRAKIS_BACKEND={probe['wanted']})")
            return {"suite": suite.name, "verdict": "FAIL", "setup_problem": True,
                    "backend_probe": probe}
    runs = {}
    shim_log = None
    for mode in ("native", "shim"):
        cmd = modes.wrap(mode, suite.full_cmd())
        log = sdir / f"{mode}.log"
        env = env_of(mode, log)
        extra = ""
        if mode == "shim" and suite.shim_env:
            extra = " ".join(f"{k}={v}" for k, v in suite.shim_env.items()) + " "
        say(f"  [{time.strftime('%H:%M:%S')}] full run, {mode}: {extra}{shlex.join(cmd)}")
        rc, to, dur = run_bounded(cmd, env, work / mode, log, suite.suite_timeout)
        ri = RunInfo(mode, log, rc, to, dur, parse_log(log, suite.parser))
        runs[mode] = ri
        say(f"      rc={rc}{' TIMEOUT' if to else ''} in {dur:.0f}s, "
            f"{len(ri.parsed.outcomes)} test ids parsed, log {log}")
        for h in hang_points(log):
            say(f"      hang at the per-file --timeout: {h}")
        if mode == "shim" and to_file:
            shim_log = shim_log_summary(log.with_suffix(".arrakis.log"), say, "      ")

    nat, shim = runs["native"].parsed, runs["shim"].parsed
    cn, cs = counts(nat), counts(shim)

    # ---- counts
    say("")
    rows = [
        ("run completed", fmt_completed(runs["native"]), fmt_completed(runs["shim"])),
        ("exit status", runs["native"].rc, runs["shim"].rc),
        ("duration (s)", f"{runs['native'].duration:.0f}", f"{runs['shim'].duration:.0f}"),
        ("passed (ok)", cn["ok"], cs["ok"]),
        ("skipped", cn["skipped"], cs["skipped"]),
        ("expected failure", cn["expected failure"], cs["expected failure"]),
        ("unexpected success", cn["unexpected success"], cs["unexpected success"]),
        ("failed (FAIL)", cn["FAIL"], cs["FAIL"]),
        ("failed (ERROR)", cn["ERROR"], cs["ERROR"]),
        ("test ids parsed", len(nat.outcomes), len(shim.outcomes)),
        ("unittest 'Ran N' total", nat.ran_total, shim.ran_total),
    ]
    if suite.parser == "cpython":
        for st in sorted(set(nat.modules.values()) | set(shim.modules.values())):
            rows.append((f"test files {st}",
                         sum(1 for v in nat.modules.values() if v == st),
                         sum(1 for v in shim.modules.values() if v == st)))
    say(fmt_table(rows, ("", "native", "shim")))
    per_file = file_table(suite, nat, shim, say) if suite.file_table else None
    for mode in ("native", "shim"):
        p = runs[mode].parsed
        if p.logged_line:
            say(f"  {mode}: tornado runner says: {p.logged_line}")

    # ---- differences in the full runs
    def o(p, t):
        return p.outcomes.get(t, "missing")

    def mod_of(t):
        return nat.module_of.get(t) or shim.module_of.get(t)

    ids = sorted(set(nat.outcomes) | set(shim.outcomes))
    diffs = [t for t in ids if o(nat, t) != o(shim, t)]
    both_fail = [t for t in ids if o(nat, t) in ("FAIL", "ERROR")
                 and o(shim, t) in ("FAIL", "ERROR")]
    mod_diffs = []
    if suite.parser == "cpython":
        mod_diffs = [m for m in sorted(set(nat.modules) | set(shim.modules))
                     if nat.modules.get(m, "missing") != shim.modules.get(m, "missing")]

    # Ids missing on one side because their test file crashed / timed out there are
    # judged together with their test file (re-run as a whole); ids missing because the
    # whole run did not complete are a suite-level problem.
    covered = {}
    for t in diffs:
        for p, r in ((nat, runs["native"]), (shim, runs["shim"])):
            if t in p.outcomes:
                continue
            m = mod_of(t)
            if m and p.modules.get(m, "missing") not in MODULE_NORMAL:
                covered[t] = m
            elif fmt_completed(r) != "yes":
                covered[t] = "<incomplete run>"
    individual = [t for t in diffs if t not in covered]
    individual.sort(key=lambda t: ("missing" in (o(nat, t), o(shim, t)), t))

    # Known differences (--known file): listed test ids and test files are reported as
    # "known" with their reason, not re-run and not failures; ids of a listed test file
    # that crashed on one side are known with it.
    def known_for(what):
        return next((k for k in known if k.matches(what)), None)

    known_hit = {}         # test id or test file -> KnownEntry
    for m in mod_diffs:
        if known_for(m):
            known_hit[m] = known_for(m)
    for t in diffs:
        k = known_for(t) or known_hit.get(covered.get(t, ""))
        if k:
            known_hit[t] = k

    say(f"\n  differences between the full runs: {len(diffs)} test ids"
        + (f", {len(mod_diffs)} test files" if suite.parser == "cpython" else ""))
    for t in individual:
        say(f"    {t}: native={o(nat, t)} shim={o(shim, t)}"
            + ("  [known]" if t in known_hit else ""))
    for grp in sorted(set(covered.values())):
        members = [t for t in diffs if covered.get(t) == grp]
        if grp == "<incomplete run>":
            say(f"    {len(members)} test ids ran in one mode only because the other run "
                f"did not complete (suite-level problem; list in results.json)")
        else:
            say(f"    {len(members)} test ids of test file {grp} ran in one mode only "
                f"(file: native={nat.modules.get(grp, 'missing')} "
                f"shim={shim.modules.get(grp, 'missing')}); judged with the file")
    for mname in mod_diffs:
        say(f"    test file {mname}: native={nat.modules.get(mname, 'missing')} "
            f"shim={shim.modules.get(mname, 'missing')}"
            f"  [native: {nat.module_raw.get(mname, '-')!r}; "
            f"shim: {shim.module_raw.get(mname, '-')!r}]"
            + ("  [known]" if mname in known_hit else ""))

    # ---- re-runs of single test ids (flake policy)
    verdicts = {}          # id -> (verdict, history-or-reason)
    for t in diffs:
        if t in known_hit:
            verdicts[t] = ("known", known_hit[t].reason)
    to_rerun = [t for t in individual if t not in known_hit]
    budget_end = min(time.monotonic() + args.rerun_budget, time.monotonic() + time_left())
    counter = [0]

    def rerun_pair(cmd):
        res = {}
        for mode in ("native", "shim"):
            counter[0] += 1
            log = sdir / "reruns" / f"{counter[0]:03d}-{mode}.log"
            rc, to, dur = run_bounded(modes.wrap(mode, cmd), env_of(mode, log),
                                      work / f"rerun-{mode}", log, suite.rerun_timeout())
            res[mode] = (parse_log(log, suite.parser), to, log.name)
        return res

    if to_rerun:
        say(f"\n  re-running each differing test id alone, both modes, up to "
            f"{args.reruns} times (stop at the first agreement):")
    for i, t in enumerate(to_rerun):
        if i >= args.max_rerun_ids or time.monotonic() > budget_end:
            why = ("more than --max-rerun-ids differing ids" if i >= args.max_rerun_ids
                   else "re-run time budget exhausted")
            verdicts[t] = ("not re-run", why)
            say(f"    {t}: NOT re-run ({why}); counts as a difference")
            continue
        cmd, what = suite.rerun_cmd(t, nat.plain.get(t, shim.plain.get(t, False)),
                                    [nat, shim])
        if cmd is None:
            verdicts[t] = ("not re-run", what)
            say(f"    {t}: NOT re-run ({what}); counts as a difference")
            continue
        history = []
        agreed = False
        for attempt in range(1, args.reruns + 1):
            res = rerun_pair(cmd)
            h = {m: o(res[m][0], t) + (" (timeout)" if res[m][1] else "")
                 for m in ("native", "shim")}
            history.append(h)
            same = h["native"] == h["shim"]
            say(f"    re-run {attempt}/{args.reruns} {t} [{what}]: native={h['native']} "
                f"shim={h['shim']} -> {'agree' if same else 'DIFFER'} "
                f"(reruns/{res['native'][2]}, reruns/{res['shim'][2]})")
            if same:
                agreed = True
                break
        verdicts[t] = ("flaky" if agreed else "reproducible", history)

    # ---- test files (cpython) whose status differs
    mod_verdicts = {}
    for mname in mod_diffs:
        a, b = nat.modules.get(mname, "missing"), shim.modules.get(mname, "missing")
        in_mod = [t for t in individual if mod_of(t) == mname]
        in_cov = [t for t in diffs if covered.get(t) == mname]
        if mname in known_hit:
            mod_verdicts[mname] = ("known", known_hit[mname].reason)
            say(f"    test file {mname}: {a} vs {b}: known ({known_hit[mname].reason})")
            continue
        if a in ("passed", "failed") and b in ("passed", "failed") and in_mod and not in_cov:
            if all(verdicts[t][0] == "known" for t in in_mod):
                mod_verdicts[mname] = ("known", "all its test-id differences are known")
            elif any(verdicts[t][0] not in ("flaky", "known") for t in in_mod):
                mod_verdicts[mname] = ("explained", "by its reproducible test-id differences")
            else:
                mod_verdicts[mname] = ("flaky", "all its test-id differences were flaky")
            say(f"    test file {mname}: {a} vs {b}: {mod_verdicts[mname][0]} "
                f"({mod_verdicts[mname][1]})")
            continue
        cmd = suite.module_rerun_cmd(mname)
        if time.monotonic() > budget_end or cmd is None:
            mod_verdicts[mname] = ("not re-run", "re-run time budget exhausted")
            say(f"    test file {mname}: NOT re-run (budget); counts as a difference")
            for t in in_cov:
                if t not in known_hit:
                    verdicts[t] = ("not re-run", f"test file {mname} not re-run")
            continue
        agreed = False
        cov_hist = {t: [] for t in in_cov}
        last_diff = []
        for attempt in range(1, args.reruns + 1):
            res = rerun_pair(cmd)
            pn, ps = res["native"][0], res["shim"][0]
            sn = pn.modules.get(mname, "missing") + (" (timeout)" if res["native"][1] else "")
            ss = ps.modules.get(mname, "missing") + (" (timeout)" if res["shim"][1] else "")
            last_diff = [t for t in sorted(set(pn.outcomes) | set(ps.outcomes))
                         if o(pn, t) != o(ps, t)]
            for t in in_cov:
                cov_hist[t].append({"native": o(pn, t), "shim": o(ps, t)})
            same = sn == ss and not last_diff
            say(f"    re-run {attempt}/{args.reruns} whole test file {mname}: native={sn} "
                f"shim={ss}, {len(last_diff)} test ids differ -> "
                f"{'agree' if same else 'DIFFER'} "
                f"(reruns/{res['native'][2]}, reruns/{res['shim'][2]})")
            for t in last_diff[:10]:
                say(f"        {t}: native={o(pn, t)} shim={o(ps, t)}")
            if len(last_diff) > 10:
                say(f"        ... and {len(last_diff) - 10} more (see the re-run logs)")
            if same:
                agreed = True
                break
        mod_verdicts[mname] = ("flaky" if agreed else "reproducible",
                               f"{len(last_diff)} test ids differ in the last re-run")
        for t in in_cov:
            if t in known_hit:
                continue
            ok_once = any(h["native"] == h["shim"] for h in cov_hist[t])
            verdicts[t] = ("flaky" if ok_once else "reproducible", cov_hist[t])
    for t in diffs:
        if covered.get(t) == "<incomplete run>" and t not in known_hit:
            verdicts[t] = ("not re-run", "the full run did not complete in one mode")

    # ---- suite-level problems
    suite_problems = []
    rn, rs = runs["native"], runs["shim"]
    if fmt_completed(rn) != fmt_completed(rs):
        suite_problems.append(f"run completion differs: native {fmt_completed(rn)}, "
                              f"shim {fmt_completed(rs)}")
    elif fmt_completed(rn) != "yes":
        suite_problems.append(f"neither run completed (native {fmt_completed(rn)}, "
                              f"shim {fmt_completed(rs)}): comparison is incomplete")
    if rn.rc != rs.rc and not diffs and not mod_diffs:
        suite_problems.append(f"exit status differs (native {rn.rc}, shim {rs.rc}) with no "
                              f"per-test difference to explain it"
                              + (f"; shim run: {shim.logged_line}" if shim.logged_line else ""))
    if not nat.outcomes:
        suite_problems.append("no test outcomes parsed from the native run")

    # ---- informational
    reason_diffs = [t for t in ids if nat.outcomes.get(t) == "skipped"
                    and shim.outcomes.get(t) == "skipped"
                    and nat.skip_reason.get(t) != shim.skip_reason.get(t)]

    say("")
    if both_fail:
        say(f"  failing in BOTH modes ({len(both_fail)}; environment problems, not shim "
            f"problems):")
        for t in both_fail:
            say(f"    {t}: native={nat.outcomes[t]} shim={shim.outcomes[t]}")
    if suite.parser == "cpython":
        bad_mods = [m for m in sorted(nat.modules) if nat.modules[m] not in ("passed", "skipped")
                    and shim.modules.get(m) == nat.modules[m]]
        if bad_mods:
            say("  test files with the same non-passing status in both modes: "
                + ", ".join(f"{m} ({nat.modules[m]})" for m in bad_mods))
    if reason_diffs:
        say(f"  note: {len(reason_diffs)} tests skipped in both modes with different "
            f"reasons (not counted):")
        for t in reason_diffs[:20]:
            say(f"    {t}: native={nat.skip_reason.get(t)!r} shim={shim.skip_reason.get(t)!r}")
    for mode in ("native", "shim"):
        p = runs[mode].parsed
        n_tests = sum(1 for t in p.outcomes if t.split(" ")[0] not in HOLDERS)
        if p.ran_total != n_tests:
            say(f"  parse check ({mode}): {n_tests} test ids parsed vs unittest 'Ran' "
                f"total {p.ran_total} (a crash mid-test, or output that hid a status line)")

    flaky = [t for t in diffs if verdicts.get(t, ("?",))[0] == "flaky"]
    known_ids = [t for t in diffs if verdicts.get(t, ("?",))[0] == "known"]
    repro = [t for t in diffs if verdicts.get(t, ("?",))[0] not in ("flaky", "known")]
    mod_repro = [m for m, v in mod_verdicts.items() if v[0] in ("reproducible", "not re-run")]
    if flaky:
        say(f"  flaky (difference did not reproduce when re-run; not counted): {len(flaky)}")
        for t in flaky:
            say(f"    {t}: full run native={o(nat, t)} shim={o(shim, t)}")
    known_mods = [m for m in mod_diffs if mod_verdicts.get(m, ("?",))[0] == "known"]
    if known_ids or known_mods:
        say(f"  known differences (listed in {args.known}; not counted): "
            f"{len(known_ids)} test ids, {len(known_mods)} test files")
        for m in known_mods:
            say(f"    test file {m}: native={nat.modules.get(m, 'missing')} "
                f"shim={shim.modules.get(m, 'missing')} -- {mod_verdicts[m][1]}")
        for t in known_ids:
            e = known_hit[t]
            via = "" if e.matches(t) else f" (with test file {covered.get(t)})"
            say(f"    {t}: native={o(nat, t)} shim={o(shim, t)} -- {e.reason}{via}")
    used = {id(e) for e in known_hit.values()}
    stale = [e for e in known if id(e) not in used
             and not (e.skip and suite.parser == "cpython")]
    if stale:
        say(f"  stale entries in {args.known} (listed for {suite.name}, but no such "
            f"difference in this run; not a failure, remove them once confirmed): "
            f"{len(stale)}")
        for e in stale:
            say(f"    line {e.line}: {e.pattern} -- {e.reason}")
    ok = not repro and not mod_repro and not suite_problems
    say(f"\n  VERDICT {suite.name}: {'PASS' if ok else 'FAIL'}")
    if repro:
        say(f"  reproducible differences ({len(repro)} test ids):")
        for t in repro:
            v = verdicts.get(t, ("?", ""))
            if isinstance(v[1], list):
                extra = "; re-runs: " + ", ".join(f"native={h['native']} shim={h['shim']}"
                                                  for h in v[1])
            else:
                extra = f" [{v[0]}: {v[1]}]"
            if covered.get(t) and len([x for x in repro if covered.get(x) == covered[t]]) > 20:
                continue    # summarised per test file below
            say(f"    {t}: full run native={o(nat, t)} shim={o(shim, t)}{extra}")
        for grp in sorted(set(covered.get(t) for t in repro if covered.get(t))):
            n = len([x for x in repro if covered.get(x) == grp])
            if n > 20:
                say(f"    ... {n} test ids of {grp} (full list in results.json)")
    for m in mod_repro:
        say(f"    test file {m}: native={nat.modules.get(m, 'missing')} "
            f"shim={shim.modules.get(m, 'missing')} [{mod_verdicts[m][0]}: "
            f"{mod_verdicts[m][1]}]")
    for s_ in suite_problems:
        say(f"    suite: {s_}")

    result = {
        "suite": suite.name,
        "verdict": "PASS" if ok else "FAIL",
        "runs": {m: {"rc": r.rc, "timed_out": r.timed_out, "duration": round(r.duration, 1),
                     "completed": fmt_completed(r), "counts": counts(r.parsed),
                     "log": str(r.log)} for m, r in runs.items()},
        "differences": {t: {"native": nat.outcomes.get(t, "missing"),
                            "shim": shim.outcomes.get(t, "missing"),
                            "verdict": verdicts.get(t, ("?",))[0],
                            "detail": verdicts.get(t, ("?", None))[1]} for t in diffs},
        "module_differences": {m: {"native": nat.modules.get(m, "missing"),
                                   "shim": shim.modules.get(m, "missing"),
                                   "verdict": list(mod_verdicts.get(m, ("?", "")))}
                               for m in mod_diffs},
        "suite_problems": suite_problems,
        "fail_in_both": {t: [nat.outcomes[t], shim.outcomes[t]] for t in both_fail},
        "shim_env": suite.shim_env,
        "backend_probe": probe,
        "shim_log": shim_log,
        "per_file": per_file,
        "known": {t: {"native": nat.outcomes.get(t, nat.modules.get(t, "missing")),
                      "shim": shim.outcomes.get(t, shim.modules.get(t, "missing")),
                      "reason": e.reason, "line": e.line} for t, e in known_hit.items()
                  if verdicts.get(t, mod_verdicts.get(t, ("?",)))[0] == "known"},
        "stale_known": [{"line": e.line, "pattern": e.pattern, "reason": e.reason}
                        for e in stale],
        "not_run": [{"line": e.line, "pattern": e.pattern, "reason": e.reason}
                    for e in skips] if suite.parser == "cpython" else [],
        "outcomes": {"native": nat.outcomes, "shim": shim.outcomes},
    }
    (sdir / "results.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def fmt_completed(r: RunInfo) -> str:
    if r.timed_out:
        return "TIMEOUT"
    if r.parsed and r.parsed.completed:
        return "yes"
    return f"no (rc {r.rc})"


# --------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------

def build_dummy(out: Path) -> Path:
    src = HERE / "dummy_preload.c"
    so = out / "libxt_passthrough.so"
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", str(so), str(src), "-ldl"],
                   check=True)
    return so


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suites", nargs="*", metavar="SUITE",
                    help=f"any of {', '.join(SUITES)} (default: "
                         f"{' '.join(DEFAULT_SUITES)})")
    ap.add_argument("--quick", action="store_true", help="a small subset, for development")
    ap.add_argument("--python", default=sys.executable,
                    help="interpreter whose tests run (default: this one)")
    ap.add_argument("--out", default=os.environ.get("ARRAKIS_EXTERNAL_OUT",
                                                    str(WORKSPACE / "target/external-tests")))
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR",
                                                           str(WORKSPACE / "target")))
    ap.add_argument("--launcher", default=None,
                    help="command prefix for the shim mode (default: "
                         "'<target>/release/arrakis run --')")
    ap.add_argument("--expect-lib", default=None,
                    help="substring of the preloaded library's path that must be mapped in "
                         "shim mode and absent natively (default: libarrakis)")
    ap.add_argument("--dummy", action="store_true",
                    help="plumbing check: shim mode = LD_PRELOAD of a pass-through "
                         "interposer built from dummy_preload.c instead of the real shim")
    ap.add_argument("--reruns", type=int, default=2)
    ap.add_argument("--max-rerun-ids", type=int, default=60)
    ap.add_argument("--rerun-budget", type=float, default=1800,
                    help="seconds of re-runs per suite; beyond it differences count")
    ap.add_argument("--cpython-jobs", type=int, default=2)
    ap.add_argument("--cpython-test-timeout", type=float, default=600,
                    help="regrtest --timeout (per test file)")
    ap.add_argument("--cpython-suite-timeout", type=float, default=2400)
    ap.add_argument("--tornado-suite-timeout", type=float, default=900)
    ap.add_argument("--net-test-timeout", type=float, default=300,
                    help="cpython-net: regrtest --timeout (per test file; natively the "
                         "slowest, test_socket, takes 30-50 s)")
    ap.add_argument("--net-suite-timeout", type=float, default=1200,
                    help="cpython-net: bound of each full run")
    ap.add_argument("--shim-env", action="append", default=[], metavar="NAME=VALUE",
                    help="extra environment of the shim mode, for every suite (repeat it); "
                         "overrides the suite's own (cpython-net: "
                         + " ".join(f"{k}={v}" for k, v in NET_SHIM_ENV.items())
                         + "); NAME= with no value removes NAME")
    ap.add_argument("--require-backend", action="store_true",
                    help="setup failure unless the shim confirms the ARRAKIS_BACKEND a suite "
                         "asks for (default: the backend probe is only reported)")
    ap.add_argument("--known", default=str(HERE / "known-differences.txt"),
                    help="file of known differences (format in its header)")
    ap.add_argument("--deadline", type=float, default=None, metavar="SECONDS",
                    help="everything ends within SECONDS of the start: each run's timeout "
                         "is clipped to it and the summary is still written (run.sh passes "
                         "its backstop minus 2 minutes)")
    ap.add_argument("--no-snapshot", action="store_true",
                    help="run target/release/{arrakis,libarrakis.so} in place instead of "
                         "from a copy under the output directory (the copy keeps a rebuild "
                         "during the run from mixing two builds)")
    args = ap.parse_args()

    global DEADLINE
    if args.deadline is not None:
        DEADLINE = time.monotonic() + args.deadline
    suites = args.suites or DEFAULT_SUITES
    for s in suites:
        if s not in SUITES:
            ap.error(f"unknown suite {s!r} (choose from {', '.join(SUITES)})")
    extra_env = {}
    for kv in args.shim_env:
        k, eq, v = kv.partition("=")
        if not eq or not k:
            ap.error(f"--shim-env wants NAME=VALUE, not {kv!r}")
        extra_env[k] = v
    try:
        known = load_known(Path(args.known))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    py = os.path.realpath(args.python)

    if args.dummy:
        so = build_dummy(out)
        launcher = ["env", f"LD_PRELOAD={so}"]
        expect = args.expect_lib or so.name
    elif args.launcher:
        launcher = shlex.split(args.launcher)
        expect = args.expect_lib or "libarrakis"
    else:
        arrakis = Path(args.target_dir) / "release" / "arrakis"
        lib = Path(args.target_dir) / "release" / "libarrakis.so"
        if not arrakis.exists() or not lib.exists():
            print(f"error: {arrakis} or {lib} missing (build with `cargo build --release`, "
                  f"or use --dummy to check the plumbing)", file=sys.stderr)
            return 2
        if not args.no_snapshot:
            snap = out / "bin"
            snap.mkdir(exist_ok=True)
            for f in (arrakis, lib):
                tmp = snap / (f.name + ".tmp")
                shutil.copy2(f, tmp)
                os.replace(tmp, snap / f.name)
            arrakis = snap / "arrakis"
        launcher = [str(arrakis), "run", "--"]
        expect = args.expect_lib or "libarrakis"

    say = Report(out / "summary.txt")
    t0 = time.monotonic()
    say(f"external differential tests  {time.strftime('%Y-%m-%d %H:%M:%S')}")
    say(f"  python: {py}")
    say(f"  shim mode: {shlex.join(launcher)} CMD...   (expect '{expect}' mapped)")
    say(f"  output: {out}")
    if not (args.dummy or args.launcher):
        so = Path(launcher[0]).parent / "libarrakis.so"
        st = so.stat()
        say(f"  shim: {so} ({st.st_size} bytes, built "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(st.st_mtime))}"
            + ("" if args.no_snapshot else f"; a copy of {args.target_dir}/release") + ")")
    if known:
        say(f"  known differences: {len(known)} entries in {args.known}")
    modes = Modes(launcher, expect)
    if not modes.preflight(py, out):
        say("VERDICT: FAIL (preflight: the preload is not where it should be; "
            "a comparison would be meaningless)")
        say.close()
        return 2

    def shim_env(default):
        env = dict(default)
        env.update(extra_env)
        return {k: v for k, v in env.items() if v != ""}

    results = []
    for s in suites:
        if time_left() < 120:
            say(f"\n=== {s}: NOT run (less than 2 minutes left before the --deadline) ===\n"
                f"  VERDICT {s}: FAIL")
            results.append({"suite": s, "verdict": "FAIL"})
            continue
        if s == "cpython":
            suite = CPythonSuite(py, args.quick, args.cpython_test_timeout,
                                 args.cpython_suite_timeout, args.cpython_jobs,
                                 shim_env({}))
        elif s == "cpython-net":
            suite = CPythonNetSuite(py, args.quick, args.net_test_timeout,
                                    args.net_suite_timeout, args.cpython_jobs,
                                    shim_env(NET_SHIM_ENV))
        else:
            if not ensure_tornado(py):
                say("\n=== tornado: could not install tornado ===\n  VERDICT tornado: FAIL")
                results.append({"suite": "tornado", "verdict": "FAIL"})
                continue
            suite = TornadoSuite(py, args.quick, args.tornado_suite_timeout, shim_env({}))
        results.append(run_suite(suite, modes, out, args, say, known))

    total = time.monotonic() - t0
    say(f"\n=== overall ({total / 60:.1f} min) ===")
    for r in results:
        say(f"  {r['suite']:11} {r['verdict']}")
    ok = all(r["verdict"] == "PASS" for r in results)
    say(f"VERDICT: {'PASS' if ok else 'FAIL'}   (logs and results.json under {out})")
    say.close()
    if any(r.get("setup_problem") for r in results):
        return 2
    return 0 if ok else 1


def _on_signal(signum, frame):
    if CURRENT_PROC is not None:
        kill_group(CURRENT_PROC)
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sys.exit(main())
