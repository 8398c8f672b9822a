//! Behaviour of the shim itself that the differential suite cannot see: start-up before our
//! constructor, logging, bad settings, and the `arrakis run` launcher's errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use compat_tests::runner::locate_shim;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn shim() -> PathBuf {
    let r = root();
    locate_shim(&[r.join("target/release/libarrakis.so"), r.join("target/debug/libarrakis.so")])
        .unwrap_or_else(|e| panic!("{e}"))
}

fn arrakis() -> PathBuf {
    let p = shim().with_file_name("arrakis");
    assert!(p.is_file(), "{} missing: run `cargo build --release` first", p.display());
    p
}

fn tmp(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("shim_start").join(name);
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `cmd` with a clean environment plus `env`.
fn run(cmd: &mut Command, env: &[(&str, &str)]) -> Output {
    cmd.env_clear().env("PATH", "/usr/bin:/bin").env("LC_ALL", "C").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn gcc(args: &[&str]) {
    let o = Command::new("gcc").args(args).output().expect("gcc (apt-get install gcc)");
    assert!(o.status.success(), "gcc {args:?}: {}", text(&o.stderr));
}

#[test]
fn calls_made_before_the_shims_constructor_behave_as_natively() {
    let d = tmp("early");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/start");
    let lib = d.join("libearly.so");
    let main = d.join("main");
    gcc(&["-shared", "-fPIC", "-o", lib.to_str().unwrap(), src.join("early.c").to_str().unwrap()]);
    gcc(&["-o", main.to_str().unwrap(), src.join("main.c").to_str().unwrap(), "-ldl"]);

    let native = run(&mut Command::new(&main), &[("LD_PRELOAD", lib.to_str().unwrap())]);
    // Listed after the shim, libearly is initialised before it.
    let preload = format!("{}:{}", shim().display(), lib.display());
    let under = run(&mut Command::new(&main), &[("LD_PRELOAD", &preload), ("ARRAKIS_LOG", "debug")]);
    assert!(native.status.success() && under.status.success(), "{native:?} {under:?}");
    assert!(text(&native.stdout).starts_with("early: fd=3 read=8 fstat=0 close=0 reclose=-1 errno=EBADF"));
    assert_eq!(text(&native.stdout), text(&under.stdout));
    let err = text(&under.stderr);
    let early = err.find("early-constructor").expect("early constructor ran");
    let loaded = err.find("arrakis shim loaded").unwrap_or_else(|| panic!("no start-up log line in {err}"));
    assert!(early < loaded, "the early library's constructor must run first for this test: {err}");
}

#[test]
fn logging_goes_to_stderr_or_to_a_file_that_holds_no_fd() {
    let d = tmp("log");
    let lsfd = || {
        let mut c = Command::new("ls");
        c.arg("/proc/self/fd");
        c
    };
    let native = run(&mut lsfd(), &[]);
    let shim = shim();
    let shim = shim.to_str().unwrap();

    let to_stderr = run(&mut lsfd(), &[("LD_PRELOAD", shim), ("ARRAKIS_LOG", "debug")]);
    assert!(text(&to_stderr.stderr).contains("arrakis shim loaded"), "{}", text(&to_stderr.stderr));
    assert_eq!(text(&native.stdout), text(&to_stderr.stdout));

    let quiet = run(&mut lsfd(), &[("LD_PRELOAD", shim)]);
    assert_eq!(text(&quiet.stderr), "", "the default level is warn: nothing at start-up");

    let log = d.join("arrakis.log");
    let to_file = run(
        &mut lsfd(),
        &[("LD_PRELOAD", shim), ("ARRAKIS_LOG", "debug"), ("ARRAKIS_LOG_FILE", log.to_str().unwrap())],
    );
    assert_eq!(text(&to_file.stderr), "");
    assert_eq!(text(&native.stdout), text(&to_file.stdout), "the log file must not show in /proc/self/fd");
    let logged = std::fs::read_to_string(&log).expect("log file written");
    assert!(logged.contains("arrakis shim loaded"), "{logged}");
}

#[test]
fn bad_settings_are_named_and_the_program_still_runs() {
    let shim = shim();
    let shim = shim.to_str().unwrap();
    let o = run(Command::new("true").arg("x"), &[("LD_PRELOAD", shim), ("ARRAKIS_BACKEND", "warp-drive")]);
    assert!(o.status.success());
    let err = text(&o.stderr);
    assert!(err.contains("ARRAKIS_BACKEND=\"warp-drive\"") && err.contains("kernel"), "{err}");

    let o = run(&mut Command::new("true"), &[("LD_PRELOAD", shim), ("ARRAKIS_LOG", "=[bad")]);
    assert!(o.status.success());
    assert!(text(&o.stderr).contains("ARRAKIS_LOG="), "{}", text(&o.stderr));
}

#[test]
fn arrakis_run_preloads_the_shim_and_explains_its_errors() {
    let a = arrakis();
    let o = run(Command::new(&a).args(["run", "--", "sh", "-c", "echo $LD_PRELOAD"]), &[]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(text(&o.stdout).trim(), shim().to_str().unwrap());

    let o = run(Command::new(&a).args(["run", "--", "/nonexistent/prog"]), &[]);
    assert_eq!(o.status.code(), Some(127));
    assert!(text(&o.stderr).contains("cannot run /nonexistent/prog"), "{}", text(&o.stderr));

    let o = run(Command::new(&a).args(["run", "true"]), &[("ARRAKIS_SHIM", "/nonexistent.so")]);
    assert_eq!(o.status.code(), Some(127));
    assert!(text(&o.stderr).contains("ARRAKIS_SHIM=/nonexistent.so"), "{}", text(&o.stderr));

    let o = run(Command::new(&a).args(["run", "--backend", "warp", "true"]), &[]);
    assert_eq!(o.status.code(), Some(127));
    assert!(text(&o.stderr).contains("kernel"), "{}", text(&o.stderr));

    // The exit status of the program is the launcher's (it execs).
    let o = run(Command::new(&a).args(["run", "--", "sh", "-c", "exit 7"]), &[]);
    assert_eq!(o.status.code(), Some(7));
}

/// Every entry point the shim must interpose, and nothing else: the export list is the
/// contract with ld.so.
const EXPORTS: &[&str] = &[
    // sockets
    "socket",
    "socketpair",
    "bind",
    "listen",
    "accept",
    "accept4",
    "connect",
    "shutdown",
    "getsockname",
    "getpeername",
    "getsockopt",
    "setsockopt",
    "send",
    "sendto",
    "sendmsg",
    "sendmmsg",
    "recv",
    "recvfrom",
    "recvmsg",
    "recvmmsg",
    // I/O
    "read",
    "write",
    "readv",
    "writev",
    "pread",
    "pread64",
    "pwrite",
    "pwrite64",
    "preadv",
    "preadv64",
    "pwritev",
    "pwritev64",
    "preadv2",
    "preadv64v2",
    "pwritev2",
    "pwritev64v2",
    "sendfile",
    "sendfile64",
    "lseek",
    "lseek64",
    "fsync",
    "fdatasync",
    "ftruncate",
    "ftruncate64",
    // descriptors
    "close",
    "close_range",
    "dup",
    "dup2",
    "dup3",
    "fcntl",
    "fcntl64",
    "ioctl",
    "pipe",
    "pipe2",
    "eventfd",
    // events
    "epoll_create",
    "epoll_create1",
    "epoll_ctl",
    "epoll_wait",
    "epoll_pwait",
    "epoll_pwait2",
    "poll",
    "ppoll",
    "select",
    "pselect",
    // files
    "open",
    "open64",
    "openat",
    "openat64",
    "__open_2",
    "__open64_2",
    "__openat_2",
    "__openat64_2",
    "creat",
    "creat64",
    "fopen",
    "fopen64",
    "fdopen",
    "fclose",
    "stat",
    "stat64",
    "lstat",
    "lstat64",
    "fstat",
    "fstat64",
    "fstatat",
    "fstatat64",
    "statx",
    "__xstat",
    "__xstat64",
    "__lxstat",
    "__lxstat64",
    "__fxstat",
    "__fxstat64",
    "__fxstatat",
    "__fxstatat64",
    "truncate",
    "truncate64",
    "unlink",
    "unlinkat",
    "rename",
    "renameat",
    "renameat2",
    "mkdir",
    "mkdirat",
    "rmdir",
    "access",
    "faccessat",
    "opendir",
    "fdopendir",
    "readdir",
    "readdir64",
    "closedir",
    // processes
    "fork",
    "vfork",
    "execve",
    "execv",
    "execvp",
    "execvpe",
    "execl",
    "execlp",
    "execle",
    "fexecve",
    "posix_spawn",
    "posix_spawnp",
    // fortified
    "__read_chk",
    "__pread_chk",
    "__pread64_chk",
    "__recv_chk",
    "__recvfrom_chk",
    "__poll_chk",
    "__ppoll_chk",
    // files on volumes (issue 5)
    "__realpath_chk",
    "canonicalize_file_name",
    "chdir",
    "chmod",
    "chown",
    "copy_file_range",
    "dirfd",
    "eaccess",
    "euidaccess",
    "fallocate",
    "fallocate64",
    "fchdir",
    "fchmod",
    "fchmodat",
    "fchown",
    "fchownat",
    "fgetxattr",
    "fileno",
    "fileno_unlocked",
    "flistxattr",
    "flock",
    "freopen",
    "freopen64",
    "fstatfs",
    "fstatfs64",
    "fstatvfs",
    "fstatvfs64",
    "futimens",
    "futimes",
    "get_current_dir_name",
    "getcwd",
    "getdents64",
    "getxattr",
    "lchown",
    "lgetxattr",
    "listxattr",
    "llistxattr",
    "lutimes",
    "mkdtemp",
    "mkostemp",
    "mkostemp64",
    "mkostemps",
    "mkostemps64",
    "mkstemp",
    "mkstemp64",
    "mkstemps",
    "mkstemps64",
    "mmap",
    "mmap64",
    "posix_fadvise",
    "posix_fadvise64",
    "posix_fallocate",
    "posix_fallocate64",
    "readdir64_r",
    "readdir_r",
    "readlink",
    "readlinkat",
    "realpath",
    "rewinddir",
    "scandir",
    "scandir64",
    "seekdir",
    "statfs",
    "statfs64",
    "statvfs",
    "statvfs64",
    "sync",
    "syncfs",
    "syscall",
    "telldir",
    "utime",
    "utimensat",
    "utimes",
];

#[test]
fn the_shim_exports_exactly_the_interposed_symbols() {
    let o = Command::new("nm").args(["-D", "--defined-only"]).arg(shim()).output().expect("nm (binutils)");
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mut exported: Vec<String> =
        text(&o.stdout).lines().filter_map(|l| l.split_whitespace().nth(2)).map(str::to_string).collect();
    exported.sort();
    let mut expected: Vec<String> = EXPORTS.iter().map(|s| s.to_string()).collect();
    expected.sort();
    let missing: Vec<_> = expected.iter().filter(|s| !exported.contains(s)).collect();
    let extra: Vec<_> = exported.iter().filter(|s| !expected.contains(s)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing exports {missing:?}, unexpected exports {extra:?}"
    );
}

/// `sh -c SCRIPT` with `$1` the launcher.
fn sh(script: &str) -> Output {
    run(Command::new("sh").args(["-c", script, "sh"]).arg(arrakis()), &[])
}

#[test]
fn arrakis_run_passes_on_the_environment_and_signal_state_it_was_given() {
    let d = tmp("launcher");
    let dupenv = d.join("dupenv");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/start/dupenv.c");
    gcc(&["-o", dupenv.to_str().unwrap(), src.to_str().unwrap()]);

    // Order, a repeated name and an entry without '=' survive; LD_PRELOAD is added.
    let native = run(Command::new(&dupenv).args(["/usr/bin/env"]), &[]);
    let under = run(Command::new(&dupenv).arg(arrakis()).args(["run", "--", "/usr/bin/env"]), &[]);
    let without_preload: Vec<String> =
        text(&under.stdout).lines().filter(|l| !l.starts_with("LD_PRELOAD=")).map(str::to_string).collect();
    let native_lines: Vec<String> = text(&native.stdout).lines().map(str::to_string).collect();
    assert_eq!(native_lines, ["Z=1", "A=2", "Z=dup", "NOEQUALS", "PATH=/usr/bin:/bin"]);
    assert_eq!(without_preload, native_lines);

    // An ignored SIGPIPE stays ignored, a default one stays default.
    for trap in ["trap '' PIPE;", ""] {
        let native = sh(&format!("{trap} exec grep SigIgn /proc/self/status"));
        let under = sh(&format!("{trap} exec \"$1\" run -- grep SigIgn /proc/self/status"));
        assert_eq!(text(&native.stdout), text(&under.stdout), "SIGPIPE disposition with {trap:?}");
    }

    // A closed stdin stays closed (Rust's runtime would open /dev/null there).
    let native = sh("exec 0<&-; exec ls /proc/self/fd");
    let under = sh("exec 0<&-; exec \"$1\" run -- ls /proc/self/fd");
    assert_eq!(text(&native.stdout), text(&under.stdout));

    // Found but not executable: 126, as shells say.
    let script = d.join("not-executable");
    std::fs::write(&script, "#!/bin/sh\n").unwrap();
    let o = run(Command::new(arrakis()).args(["run", "--"]).arg(&script), &[]);
    assert_eq!(o.status.code(), Some(126), "{}", text(&o.stderr));
}
