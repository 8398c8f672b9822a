//! Start-up: the constructor that runs when ld.so loads the shim, before `main`.
//!
//! Order: (1) resolve every real function, so nothing later resolves lazily on a hot path;
//! (2) read the configuration; (3) install logging, whose sink writes with raw system calls;
//! (4) record what must cross `exec`. Calls that arrive before this (other libraries'
//! constructors) work too: [`crate::real`] resolves on demand and falls back to raw syscalls.

use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::panic::catch_unwind;
use std::sync::{Arc, OnceLock};

use arrakis_core::config::Config;

use crate::{errno, real};

/// `NAME=value` entries to add to an exec'd program's environment when it lacks them.
pub(crate) struct Carry {
    /// The shim's own path, as ld.so loaded it.
    pub shim_path: CString,
    /// `LD_PRELOAD=...` as this process started with it (names the shim), if it did.
    pub preload: Option<CString>,
    /// `ARRAKIS_*=...` entries.
    pub settings: Vec<CString>,
}

static CARRY: OnceLock<Carry> = OnceLock::new();

pub(crate) fn carry() -> Option<&'static Carry> {
    CARRY.get()
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

#[used]
#[link_section = ".fini_array"]
static DESTRUCTOR: extern "C" fn() = destructor;

/// At `exit` (ld.so runs `.fini_array` after the program's `atexit` handlers): the emulator
/// backend's connections end as the kernel would end a dying process's (see
/// `net::world::exit_close`).
extern "C" fn destructor() {
    let _errno = errno::Saved::new();
    let _ = catch_unwind(crate::libos::at_exit);
    if arrakis_core::fs::mount::active() {
        let _ = catch_unwind(arrakis_core::fs::mount::at_exit);
    }
}

extern "C" fn constructor() {
    let _errno = errno::Saved::new();
    if catch_unwind(start).is_err() {
        raw_stderr(b"arrakis: start-up failed; every call stays on the kernel path\n");
    }
}

fn start() {
    real::resolve_all();
    crate::process::init_vfork();
    let (cfg, errors) = Config::from_env(|k| std::env::var(k).ok());
    init_logging(&cfg);
    for e in errors {
        tracing::error!("{e}");
    }
    std::panic::set_hook(Box::new(|info| {
        tracing::error!("panic in the library OS: {info}");
    }));
    arrakis_core::net::world::set_spin_us(cfg.spin_us);
    arrakis_core::net::world::set_spin_max_us(cfg.spin_max_us);
    arrakis_core::keeper::set_keeper_us(cfg.keeper_us);
    arrakis_core::keeper::set_idle_priority(idle_priority);
    crate::libos::configure(&cfg);
    arrakis_core::fs::mount::configure(&cfg.volumes, cfg.backend);
    let carry = record_carry();
    tracing::debug!(shim = ?carry.shim_path, backend = ?cfg.backend, "arrakis shim loaded");
    let _ = CARRY.set(carry);
}

/// Gives the calling thread the idle scheduling class (`SCHED_IDLE`): the CPU keeper's
/// (`arrakis_core::keeper`), which must never take a CPU from anything else.
fn idle_priority() -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param for the call.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0 }
}

fn init_logging(cfg: &Config) {
    let sink: arrakis_core::log::Sink = match &cfg.log_file {
        Some(path) => match CString::new(path.as_os_str().as_bytes()) {
            Ok(path) => Arc::new(move |line: &[u8]| append_to(&path, line)),
            Err(_) => Arc::new(raw_stderr),
        },
        None => Arc::new(raw_stderr),
    };
    if let Err(e) = arrakis_core::log::init(&cfg.log_filter, sink) {
        tracing::error!("{e}");
    }
}

fn record_carry() -> Carry {
    let shim_path = shim_path().unwrap_or_default();
    let mut preload = None;
    let mut settings = Vec::new();
    for (k, v) in std::env::vars_os() {
        let (k, v) = (k.as_bytes(), v.as_bytes());
        if !arrakis_core::exec::is_carried(k) {
            continue;
        }
        let entry = CString::new([k, b"=", v].concat()).ok();
        if k == b"LD_PRELOAD" {
            if arrakis_core::exec::preload_names_shim(v, shim_path.as_bytes()) {
                preload = entry;
            }
        } else if let Some(e) = entry {
            settings.push(e);
        }
    }
    Carry { shim_path, preload, settings }
}

/// The file ld.so loaded this shim from.
fn shim_path() -> Option<CString> {
    let mut info: libc::Dl_info = unsafe_zeroed_dl_info();
    // SAFETY: dladdr reads the address of a function of this object and fills `info`.
    let ok = unsafe { libc::dladdr(constructor as *const libc::c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname points to ld.so's NUL-terminated copy of the object's path.
    Some(unsafe { CStr::from_ptr(info.dli_fname) }.to_owned())
}

fn unsafe_zeroed_dl_info() -> libc::Dl_info {
    libc::Dl_info {
        dli_fname: std::ptr::null(),
        dli_fbase: std::ptr::null_mut(),
        dli_sname: std::ptr::null(),
        dli_saddr: std::ptr::null_mut(),
    }
}

/// Writes all of `buf` to `fd` with the raw system call: never through an intercepted path.
fn raw_write_all(fd: libc::c_long, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice for its length.
        let n = unsafe { libc::syscall(libc::SYS_write, fd, buf.as_ptr(), buf.len()) };
        if n > 0 {
            buf = &buf[n as usize..];
        } else if n < 0 && errno::get() == libc::EINTR {
            continue;
        } else {
            return;
        }
    }
}

/// The default log sink: standard error. Also used before logging is set up.
pub(crate) fn raw_stderr(line: &[u8]) {
    let _e = errno::Saved::new();
    raw_write_all(2, line);
}

/// The `ARRAKIS_LOG_FILE` sink: opens, appends one line, closes. Keeping no fd open means
/// the shim never holds an fd number the program could see, close or collide with.
fn append_to(path: &CStr, line: &[u8]) {
    let _e = errno::Saved::new();
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND | libc::O_CLOEXEC;
    // SAFETY: path is NUL-terminated; the raw syscall bypasses the intercepted open.
    let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, path.as_ptr(), flags, 0o644) };
    if fd < 0 {
        raw_write_all(2, line);
        return;
    }
    raw_write_all(fd, line);
    // SAFETY: closes the fd opened just above.
    unsafe { libc::syscall(libc::SYS_close, fd) };
}
