#!/usr/bin/env python3
"""Differential runner for external test suites: natively vs under the Arrakis shim.

Runs third-party test suites (CPython's own regression tests, tornado's test suite)
once natively and once under `arrakis run --`, parses the per-test-case outcome of every
test id from the verbose unittest output, and diffs the two runs.  With every fd on the
kernel path the shim must change nothing observable, so the outcome of every test id must
be the same in both modes.

Flake policy: a test id whose outcome differs between the two full runs is re-run alone,
in both modes, up to --reruns times; the difference counts only if it reproduces in every
re-run (native and shim outcomes still differ).  Every re-run is printed.

Invoked by run.sh (which picks the interpreter and builds the workspace); see README.md.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
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
        if self.suite == "cpython":
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


def run_bounded(cmd, env, cwd, log: Path, timeout: float) -> tuple[int | None, bool, float]:
    """Run cmd (stdout+stderr -> log) in its own process group; kill the group on timeout."""
    global CURRENT_PROC
    log.parent.mkdir(parents=True, exist_ok=True)
    cwd.mkdir(parents=True, exist_ok=True)
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
            out.write(f"\n[run_external] TIMEOUT after {timeout:.0f}s: process group "
                      f"killed\n".encode())
    return rc, timed_out, time.monotonic() - t0


def kill_group(p):
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 20)):
        try:
            os.killpg(p.pid, sig)
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


# --------------------------------------------------------------------------------------
# Suite drivers
# --------------------------------------------------------------------------------------

class CPythonSuite:
    name = "cpython"

    def __init__(self, py, quick, module_timeout, suite_timeout, jobs):
        self.py = py
        self.tests = CPYTHON_QUICK if quick else CPYTHON_TESTS
        self.module_timeout = module_timeout
        self.suite_timeout = suite_timeout
        self.jobs = jobs

    def title(self):
        return f"CPython regrtest ({self.py}): {' '.join(self.tests)}"

    def base(self, jobs):
        cmd = [self.py, "-m", "test", "-v", f"-j{jobs}", "--timeout",
               str(self.module_timeout), "-u", "network"]
        for pat in CPYTHON_IGNORE:
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
            return self.base(1) + [mod, "-m", tid], f"{mod} -m {tid}"
        name, inner = tid.split(" (", 1)
        inner = inner.rstrip(")")
        if name in ("setUpClass", "tearDownClass"):
            return self.base(1) + [mod, "-m", inner + ".*"], f"{mod} -m {inner}.*"
        return self.base(1) + [mod], f"whole module {mod}"

    def module_rerun_cmd(self, mod):
        return self.base(1) + [mod]

    def rerun_timeout(self):
        return self.module_timeout + 120


class TornadoSuite:
    name = "tornado"

    def __init__(self, py, quick, suite_timeout):
        self.py = py
        self.quick = quick
        self.suite_timeout = suite_timeout

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
# Comparison
# --------------------------------------------------------------------------------------

def counts(p: Parsed) -> dict:
    c = {k: 0 for k in OUTCOME_ORDER if k != "missing"}
    for tid, o in p.outcomes.items():
        c[o] += 1
    return c


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


def run_suite(suite, modes: Modes, out: Path, args, say) -> dict:
    sdir = out / suite.name
    if sdir.exists():
        shutil.rmtree(sdir)
    (sdir / "reruns").mkdir(parents=True)
    work = sdir / "work"
    env = suite.env(modes.env)

    say(f"\n=== {suite.name}: {suite.title()} ===")
    runs = {}
    for mode in ("native", "shim"):
        cmd = modes.wrap(mode, suite.full_cmd())
        log = sdir / f"{mode}.log"
        say(f"  [{time.strftime('%H:%M:%S')}] full run, {mode}: {shlex.join(cmd)}")
        rc, to, dur = run_bounded(cmd, env, work / mode, log, suite.suite_timeout)
        ri = RunInfo(mode, log, rc, to, dur, parse_log(log, suite.name))
        runs[mode] = ri
        say(f"      rc={rc}{' TIMEOUT' if to else ''} in {dur:.0f}s, "
            f"{len(ri.parsed.outcomes)} test ids parsed, log {log}")

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
    if suite.name == "cpython":
        for st in sorted(set(nat.modules.values()) | set(shim.modules.values())):
            rows.append((f"test files {st}",
                         sum(1 for v in nat.modules.values() if v == st),
                         sum(1 for v in shim.modules.values() if v == st)))
    say(fmt_table(rows, ("", "native", "shim")))
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
    if suite.name == "cpython":
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

    say(f"\n  differences between the full runs: {len(diffs)} test ids"
        + (f", {len(mod_diffs)} test files" if suite.name == "cpython" else ""))
    for t in individual:
        say(f"    {t}: native={o(nat, t)} shim={o(shim, t)}")
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
            f"shim: {shim.module_raw.get(mname, '-')!r}]")

    # ---- re-runs of single test ids (flake policy)
    verdicts = {}          # id -> (verdict, history-or-reason)
    budget_end = time.monotonic() + args.rerun_budget
    counter = [0]

    def rerun_pair(cmd):
        res = {}
        for mode in ("native", "shim"):
            counter[0] += 1
            log = sdir / "reruns" / f"{counter[0]:03d}-{mode}.log"
            rc, to, dur = run_bounded(modes.wrap(mode, cmd), env, work / f"rerun-{mode}",
                                      log, suite.rerun_timeout())
            res[mode] = (parse_log(log, suite.name), to, log.name)
        return res

    if individual:
        say(f"\n  re-running each differing test id alone, both modes, up to "
            f"{args.reruns} times (stop at the first agreement):")
    for i, t in enumerate(individual):
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
        if a in ("passed", "failed") and b in ("passed", "failed") and in_mod and not in_cov:
            if any(verdicts[t][0] != "flaky" for t in in_mod):
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
            ok_once = any(h["native"] == h["shim"] for h in cov_hist[t])
            verdicts[t] = ("flaky" if ok_once else "reproducible", cov_hist[t])
    for t in diffs:
        if covered.get(t) == "<incomplete run>":
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
    if suite.name == "cpython":
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
    repro = [t for t in diffs if verdicts.get(t, ("?",))[0] != "flaky"]
    mod_repro = [m for m, v in mod_verdicts.items() if v[0] in ("reproducible", "not re-run")]
    if flaky:
        say(f"  flaky (difference did not reproduce when re-run; not counted): {len(flaky)}")
        for t in flaky:
            say(f"    {t}: full run native={o(nat, t)} shim={o(shim, t)}")
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
                    help="cpython and/or tornado (default: both)")
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
    args = ap.parse_args()

    suites = args.suites or ["cpython", "tornado"]
    for s in suites:
        if s not in ("cpython", "tornado"):
            ap.error(f"unknown suite {s!r} (choose from cpython, tornado)")
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
        launcher = [str(arrakis), "run", "--"]
        expect = args.expect_lib or "libarrakis"

    say = Report(out / "summary.txt")
    t0 = time.monotonic()
    say(f"external differential tests  {time.strftime('%Y-%m-%d %H:%M:%S')}")
    say(f"  python: {py}")
    say(f"  shim mode: {shlex.join(launcher)} CMD...   (expect '{expect}' mapped)")
    say(f"  output: {out}")
    modes = Modes(launcher, expect)
    if not modes.preflight(py, out):
        say("VERDICT: FAIL (preflight: the preload is not where it should be; "
            "a comparison would be meaningless)")
        say.close()
        return 2

    results = []
    for s in suites:
        if s == "cpython":
            suite = CPythonSuite(py, args.quick, args.cpython_test_timeout,
                                 args.cpython_suite_timeout, args.cpython_jobs)
        else:
            if not ensure_tornado(py):
                say("\n=== tornado: could not install tornado ===\n  VERDICT tornado: FAIL")
                results.append({"suite": "tornado", "verdict": "FAIL"})
                continue
            suite = TornadoSuite(py, args.quick, args.tornado_suite_timeout)
        results.append(run_suite(suite, modes, out, args, say))

    total = time.monotonic() - t0
    say(f"\n=== overall ({total / 60:.1f} min) ===")
    for r in results:
        say(f"  {r['suite']:8} {r['verdict']}")
    ok = all(r["verdict"] == "PASS" for r in results)
    say(f"VERDICT: {'PASS' if ok else 'FAIL'}   (logs and results.json under {out})")
    say.close()
    return 0 if ok else 1


def _on_signal(signum, frame):
    if CURRENT_PROC is not None:
        kill_group(CURRENT_PROC)
    sys.exit(128 + signum)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    sys.exit(main())
