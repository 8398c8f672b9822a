//! The differential test: every case program runs natively (twice, to prove
//! it is deterministic) and twice with `LD_PRELOAD=libarrakis.so` — sockets on
//! the kernel (`ARRAKIS_BACKEND=kernel`) and on the library OS
//! (`ARRAKIS_BACKEND=loopback`); the observation lines must agree with the
//! native ones case by case, every `#shim=` meta line must
//! read 0 natively and 1 under the shim (exec'd children included), and the
//! suite must hold at least `MIN_CASES` cases.
//!
//! The file programs `cases/vsa_*.c` work only inside `mnt/` of their run
//! directory. Natively `mnt/` is a kernel directory; their second shim run
//! (instead of the loopback-sockets run) mounts a volume there
//! (`ARRAKIS_BACKEND=loopback ARRAKIS_VOLUMES=vsa:<run dir>/mnt`). Their
//! `#fstype=` meta lines (`statfs("mnt")`) must never read `4152524b` (the
//! library OS's f_type) natively or on the kernel path, and always under the
//! volume run, so a case cannot pass on the kernel by accident; they must hold
//! at least `MIN_VSA_CASES` cases.
//!
//! Needs the shim built first: `cargo build --release` at the workspace root
//! (or `ARRAKIS_SHIM=/path/to/libarrakis.so`). Needs gcc for the C cases.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use compat_tests::observe::{compare, Observations, EXIT_STATUS};
use compat_tests::runner::{build_c, locate_shim, run, shim_candidates, RunResult, RunSpec};

const MIN_CASES: usize = 150;
/// Cases of the `vsa_*` programs (files on a volume vs a kernel directory), counted apart.
const MIN_VSA_CASES: usize = 100;
/// Prefix of the programs whose cases run on a volume mounted at `mnt/`.
const VSA_PREFIX: &str = "vsa_";
/// `f_type` of a path on a volume, as `statfs` reports it ("ARRK"), in `#fstype=` form.
const ARRAKIS_FSTYPE: &str = "4152524b";
/// The mount point inside a `vsa_*` program's run directory.
const MOUNT_DIR: &str = "mnt";
const TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent runs: the machines have two shared cores.
const WORKERS: usize = 2;
/// The fortified entry points fortify.c must reference.
const FORTIFIED: &[&str] = &[
    "__read_chk",
    "__recv_chk",
    "__recvfrom_chk",
    "__poll_chk",
    "__ppoll_chk",
    "__pread_chk",
    "__pread64_chk",
];

struct Program {
    name: String,
    path: PathBuf,
}

impl Program {
    /// A file program whose cases run on a volume mounted at `mnt/`.
    fn on_volume(&self) -> bool {
        self.name.starts_with(VSA_PREFIX)
    }

    /// The runs this program gets: the loopback-sockets run is replaced by the volume run for
    /// the `vsa_*` programs.
    fn modes(&self) -> [Mode; 4] {
        let last = if self.on_volume() { Mode::Volume } else { Mode::Loopback };
        [Mode::Native1, Mode::Native2, Mode::Shim, last]
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Native1,
    Native2,
    /// Under the shim, sockets on the kernel (`ARRAKIS_BACKEND=kernel`).
    Shim,
    /// Under the shim, TCP/UDP sockets on the library OS (`ARRAKIS_BACKEND=loopback`).
    Loopback,
    /// Under the shim with `mnt/` of the run directory mounted as an in-memory volume
    /// (`ARRAKIS_BACKEND=loopback`, `ARRAKIS_VOLUMES=vsa:<run dir>/mnt`); `vsa_*` programs only.
    Volume,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Native1 => "native",
            Mode::Native2 => "native-rerun",
            Mode::Shim => "shim",
            Mode::Loopback => "loopback",
            Mode::Volume => "vsa",
        }
    }

    fn backend(self) -> Option<&'static str> {
        match self {
            Mode::Shim => Some("kernel"),
            Mode::Loopback | Mode::Volume => Some("loopback"),
            _ => None,
        }
    }
}

/// Compile every `cases/*.c` into `bin`, two at a time.
fn build_programs(bin: &Path) -> Vec<Program> {
    let cases = Path::new(env!("CARGO_MANIFEST_DIR")).join("cases");
    let mut sources: Vec<PathBuf> = fs::read_dir(&cases)
        .expect("read cases/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "c"))
        .collect();
    sources.sort();
    assert!(!sources.is_empty(), "no C cases in {}", cases.display());
    fs::create_dir_all(bin).expect("create bin dir");
    let queue = Mutex::new(sources.iter().collect::<VecDeque<_>>());
    let errors = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let Some(src) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let out = bin.join(src.file_stem().expect("stem"));
                if let Err(e) = build_c(src, &out) {
                    errors.lock().expect("errors").push(e);
                }
            });
        }
    });
    let errors = errors.into_inner().expect("errors");
    assert!(errors.is_empty(), "building the C cases failed:\n{}", errors.join("\n"));
    sources
        .iter()
        .map(|src| {
            let name = src.file_stem().expect("stem").to_string_lossy().into_owned();
            Program { path: bin.join(&name), name }
        })
        .collect()
}

/// The `#fstype=` checks of a `vsa_*` program's run: at least one line (the program's own),
/// as many as natively, and all of them the volume's type under [`Mode::Volume`] and never it
/// otherwise.
fn check_fstypes(name: &str, mode: Mode, native: &[String], seen: &[String]) -> Option<String> {
    let label = mode.label();
    if seen.is_empty() {
        return Some(format!(
            "{name} ({label}): no #fstype= line; every vsa_* program prints statfs(\"{MOUNT_DIR}\")'s f_type"
        ));
    }
    if mode == Mode::Volume {
        if seen.len() != native.len() || seen.iter().any(|t| t != ARRAKIS_FSTYPE) {
            return Some(format!(
                "{name} ({label}): {MOUNT_DIR}/ is NOT served by the library OS: statfs(\"{MOUNT_DIR}\") reported \
                 f_type {seen:?} ({} line(s) natively), expected {ARRAKIS_FSTYPE} on every line. The volume \
                 was not mounted (ARRAKIS_VOLUMES=vsa:<run dir>/{MOUNT_DIR} with ARRAKIS_BACKEND=loopback) \
                 or the shim does not answer statfs for it; until the shim serves volumes this check fails.",
                native.len()
            ));
        }
    } else if seen.iter().any(|t| t == ARRAKIS_FSTYPE) {
        return Some(format!(
            "{name} ({label}): statfs(\"{MOUNT_DIR}\") reported the library OS's f_type {ARRAKIS_FSTYPE} \
             without a volume mounted: {seen:?}"
        ));
    }
    None
}

fn check_fortified(bin: &Path) -> Vec<String> {
    let path = bin.join("fortify");
    let Ok(bytes) = fs::read(&path) else {
        return vec![format!("{} missing", path.display())];
    };
    FORTIFIED
        .iter()
        .filter(|sym| {
            let needle = format!("{sym}\0");
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
        })
        .map(|sym| format!("fortify: the binary does not reference {sym}"))
        .collect()
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    let start = v.len().saturating_sub(lines);
    v[start..].join("\n")
}

/// `#shim=` values, one per line, each with the case printed next (for an
/// exec'd child, the case it reports under).
fn describe_flags(flags: &[(String, Option<String>)]) -> String {
    let mut s = String::new();
    for (i, (f, ctx)) in flags.iter().enumerate() {
        let bad = if f == "1" { "" } else { "   <--" };
        s.push_str(&format!("  #{i} shim={f} (next case: {}){bad}\n", ctx.as_deref().unwrap_or("none")));
    }
    s
}

fn observations(r: &RunResult) -> Observations {
    let mut o = Observations::parse(&r.stdout);
    o.push_case(EXIT_STATUS, vec![r.status_text()]);
    o
}

#[test]
fn native_and_shim_agree() {
    let started = Instant::now();
    let shim = locate_shim(&shim_candidates(Path::new(env!("CARGO_TARGET_TMPDIR"))))
        .unwrap_or_else(|e| panic!("{e}"));
    println!("shim under test: {}", shim.display());

    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("compat");
    // Run directories by their canonical path: the volume's mount point is given as an
    // absolute path and must be what getcwd and realpath report.
    let runs = tmp.join("runs");
    fs::create_dir_all(&runs).expect("create runs dir");
    let runs = fs::canonicalize(&runs).expect("canonicalize runs dir");
    let mut programs = build_programs(&tmp.join("bin"));
    programs
        .push(Program { name: "rust_cases".into(), path: PathBuf::from(env!("CARGO_BIN_EXE_rust_cases")) });
    let mut problems = check_fortified(&tmp.join("bin"));

    // Run every (program, mode) pair on a small worker pool.
    let jobs: VecDeque<(usize, Mode)> =
        programs.iter().enumerate().flat_map(|(i, p)| p.modes().into_iter().map(move |m| (i, m))).collect();
    let queue = Mutex::new(jobs);
    let results = Mutex::new(Vec::new());
    thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| loop {
                let Some((i, mode)) = queue.lock().expect("queue").pop_front() else {
                    break;
                };
                let p = &programs[i];
                let dir = runs.join(format!("{}-{}", p.name, mode.label()));
                let mut env: Vec<(OsString, OsString)> = mode
                    .backend()
                    .map(|b| vec![(OsString::from("ARRAKIS_BACKEND"), OsString::from(b))])
                    .unwrap_or_default();
                if mode == Mode::Volume {
                    let mut v = OsString::from("vsa:");
                    v.push(dir.join(MOUNT_DIR));
                    env.push((OsString::from("ARRAKIS_VOLUMES"), v));
                }
                let spec = RunSpec {
                    program: p.path.clone(),
                    args: Vec::<OsString>::new(),
                    mkdirs: if p.on_volume() { vec![PathBuf::from(MOUNT_DIR)] } else { Vec::new() },
                    dir,
                    preload: mode.backend().map(|_| shim.clone()),
                    env,
                    timeout: TIMEOUT,
                };
                let r = run(&spec).unwrap_or_else(|e| panic!("cannot run {}: {e}", p.name));
                results.lock().expect("results").push((i, mode, r));
            });
        }
    });
    let results = results.into_inner().expect("results");
    let get = |i: usize, m: Mode| -> &RunResult {
        &results.iter().find(|(j, n, _)| *j == i && *n == m).expect("every job ran").2
    };

    let mut total_cases = 0;
    let mut vsa_cases = 0;
    let mut differing_cases = 0;
    println!(
        "\n{:<12} {:>6}  {:<10} {:<10} {:>6}  {:<12} {:>6}",
        "program", "cases", "native", "shim", "diffs", "loopback/vsa", "diffs"
    );
    for (i, p) in programs.iter().enumerate() {
        let (n1, n2) = (get(i, Mode::Native1), get(i, Mode::Native2));
        let (o1, o2) = (observations(n1), observations(n2));
        let cases = o1.case_names().count();
        if p.on_volume() {
            vsa_cases += cases;
        } else {
            total_cases += cases;
        }

        if n1.timed_out || !n1.status.is_some_and(|s| s.success()) {
            problems.push(format!(
                "{}: the native run failed ({}); the program itself is broken.\nstderr:\n{}",
                p.name,
                n1.status_text(),
                tail(&n1.stderr, 30)
            ));
        }
        let nondet = compare(&o1, &o2);
        if !nondet.is_empty() {
            let mut msg = format!(
                "{}: NOT DETERMINISTIC natively ({} case(s) differ between two native runs); \
                 fix the case, not the shim:\n",
                p.name,
                nondet.len()
            );
            for d in &nondet {
                msg.push_str(&d.render("native", "native-rerun"));
            }
            problems.push(msg);
        }

        // Shim presence, in the program and in every exec'd child.
        let f1 = o1.shim_flags();
        if f1.is_empty() || f1.iter().any(|(f, _)| f != "0") {
            problems.push(format!(
                "{}: native #shim= lines should all be 0, got:\n{}",
                p.name,
                describe_flags(&f1)
            ));
        }
        let native_fstypes = o1.fstypes();
        if p.on_volume() {
            for (mode, o) in [(Mode::Native1, &o1), (Mode::Native2, &o2)] {
                problems.extend(check_fstypes(&p.name, mode, &native_fstypes, &o.fstypes()));
            }
        }
        let mut row = Vec::new();
        for mode in [Mode::Shim, p.modes()[3]] {
            let sh = get(i, mode);
            let os = observations(sh);
            let label = mode.label();
            if p.on_volume() {
                problems.extend(check_fstypes(&p.name, mode, &native_fstypes, &os.fstypes()));
            }
            let fs = os.shim_flags();
            if fs.len() != f1.len() || fs.iter().any(|(f, _)| f != "1") {
                problems.push(format!(
                    "{} ({label}): under the shim every #shim= line should be 1 ({} lines natively); \
                     a program or exec'd child ran without the shim:\n{}",
                    p.name,
                    f1.len(),
                    describe_flags(&fs)
                ));
            }
            let diffs = compare(&o1, &os);
            differing_cases += diffs.len();
            row.push((sh.status_text(), diffs.len()));
            if !diffs.is_empty() {
                let mut msg = format!(
                    "{}: {} case(s) differ between native and {label} (run: {}, {:.1}s):\n",
                    p.name,
                    diffs.len(),
                    sh.status_text(),
                    sh.elapsed.as_secs_f64()
                );
                for d in &diffs {
                    msg.push_str(&d.render("native", label));
                }
                if !sh.stderr.trim().is_empty() {
                    msg.push_str(&format!("{label} run stderr (tail):\n{}\n", tail(&sh.stderr, 30)));
                }
                problems.push(msg);
            }
        }
        println!(
            "{:<12} {:>6}  {:<10} {:<10} {:>6}  {:<12} {:>6}",
            p.name,
            cases,
            n1.status_text(),
            row[0].0,
            row[0].1,
            row[1].0,
            row[1].1
        );
    }
    println!(
        "\n{total_cases} cases + {vsa_cases} file cases on a volume in {} programs; {differing_cases} differ \
         under the shim (both backends, and on the volume); {:.1}s",
        programs.len(),
        started.elapsed().as_secs_f64()
    );
    if total_cases < MIN_CASES {
        problems.push(format!("only {total_cases} cases; the suite must keep at least {MIN_CASES}"));
    }
    if vsa_cases < MIN_VSA_CASES {
        problems.push(format!(
            "only {vsa_cases} cases in the {VSA_PREFIX}* programs; the suite must keep at least {MIN_VSA_CASES} \
             file cases on a volume"
        ));
    }
    if !problems.is_empty() {
        panic!(
            "\n{} problem(s):\n\n{}\n",
            problems.len(),
            problems.join("\n----------------------------------------\n")
        );
    }
}
