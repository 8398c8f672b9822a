//! `fork`, `vfork` and the `exec` family.
//!
//! `exec` keeps the program under the shim: if the new environment lacks `LD_PRELOAD` (or
//! lacks the shim in it) or the `ARRAKIS_*` settings this process started with, they are
//! added. This code runs in vfork children (CPython's subprocess uses vfork) and in children
//! of threaded programs, so it allocates nothing and takes no lock: the new `envp` is built in
//! arrays on the stack.
//!
//! `vfork` is a tail jump to the real `vfork`: the child shares the parent's stack, so no
//! frame of ours may be live across it. `execl`, `execle` and `execlp` take an unbounded
//! number of arguments, which stable Rust cannot receive as C varargs; a small x86_64
//! trampoline spills the argument registers next to the stack arguments and a Rust function
//! reads them as the array they are.

use std::ffi::CStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrakis_core::exec::{is_carried, preload_names_shim, var_name, var_value};
use arrakis_core::Errno;
use libc::{c_char, c_int, pid_t};

use crate::{errno, init, real};

type Argv = *const *const c_char;

extern "C" {
    static environ: Argv;
}

/// Most environment entries and exec arguments the shim rebuilds on the stack. Beyond that,
/// `exec` passes the caller's environment unchanged (the preload may then not survive) and
/// `execl*` fail with `E2BIG`.
const MAX_ENV: usize = 4096;
const MAX_ARGS: usize = 4096;
/// Longest rebuilt `LD_PRELOAD=...` entry.
const MAX_PRELOAD: usize = 4096;

/// Runs `f` with `envp`, or with a copy of it on the stack that carries the shim's settings.
fn with_carried_env<R>(envp: Argv, f: impl FnOnce(Argv) -> R) -> R {
    let Some(carry) = init::carry() else { return f(envp) };
    if carry.preload.is_none() || envp.is_null() {
        return f(envp);
    }
    let mut out: [*const c_char; MAX_ENV + 1] = [std::ptr::null(); MAX_ENV + 1];
    let mut preload_buf = [0u8; MAX_PRELOAD];
    let mut n = 0usize;
    let mut changed = false;
    let mut have_preload = false;
    // Bit i set: carry.settings[i] is already present.
    let mut present = [false; 64];
    let mut i = 0usize;
    loop {
        // SAFETY: envp is a NULL-terminated array of C strings (exec's contract).
        let entry = unsafe { *envp.add(i) };
        if entry.is_null() {
            break;
        }
        i += 1;
        if n >= MAX_ENV {
            return f(envp);
        }
        // SAFETY: each entry is a NUL-terminated string.
        let bytes = unsafe { CStr::from_ptr(entry) }.to_bytes();
        let name = var_name(bytes);
        let mut use_entry = entry;
        if is_carried(name) {
            if name == b"LD_PRELOAD" {
                have_preload = true;
                let value = var_value(bytes);
                if !preload_names_shim(value, carry.shim_path.to_bytes()) {
                    // LD_PRELOAD=<shim>:<theirs>, built in preload_buf.
                    let shim = carry.shim_path.to_bytes();
                    let len = b"LD_PRELOAD=".len() + shim.len() + 1 + value.len();
                    if len < MAX_PRELOAD {
                        let mut w = 0;
                        for part in [&b"LD_PRELOAD="[..], shim, b":", value] {
                            preload_buf[w..w + part.len()].copy_from_slice(part);
                            w += part.len();
                        }
                        preload_buf[w] = 0;
                        use_entry = preload_buf.as_ptr().cast();
                        changed = true;
                    }
                }
            } else if let Some(k) = carry.settings.iter().position(|s| var_name(s.to_bytes()) == name) {
                if k < present.len() {
                    present[k] = true;
                }
            }
        }
        out[n] = use_entry;
        n += 1;
    }
    if !have_preload {
        if let Some(p) = &carry.preload {
            if n >= MAX_ENV {
                return f(envp);
            }
            out[n] = p.as_ptr();
            n += 1;
            changed = true;
        }
    }
    for (k, s) in carry.settings.iter().enumerate().take(present.len()) {
        if !present[k] {
            if n >= MAX_ENV {
                return f(envp);
            }
            out[n] = s.as_ptr();
            n += 1;
            changed = true;
        }
    }
    if !changed {
        return f(envp);
    }
    out[n] = std::ptr::null();
    f(out.as_ptr())
}

/// Interposed `execve`.
///
/// # Safety
/// The C contract of `execve(2)`.
#[no_mangle]
pub unsafe extern "C" fn execve(path: *const c_char, argv: Argv, envp: Argv) -> c_int {
    with_carried_env(envp, |env| real!(execve(path, argv, env) else sys(libc::SYS_execve, path, argv, env)))
}

/// Interposed `execv`.
///
/// # Safety
/// The C contract of `execv(3)`.
#[no_mangle]
pub unsafe extern "C" fn execv(path: *const c_char, argv: Argv) -> c_int {
    // SAFETY: `environ` is the process environment, read at the moment of the call.
    unsafe { execve(path, argv, environ) }
}

/// Interposed `execvpe`.
///
/// # Safety
/// The C contract of `execvpe(3)`.
#[no_mangle]
pub unsafe extern "C" fn execvpe(file: *const c_char, argv: Argv, envp: Argv) -> c_int {
    with_carried_env(envp, |env| real!(execvpe(file, argv, env)))
}

/// Interposed `execvp`.
///
/// # Safety
/// The C contract of `execvp(3)`.
#[no_mangle]
pub unsafe extern "C" fn execvp(file: *const c_char, argv: Argv) -> c_int {
    // SAFETY: as in execv.
    unsafe { execvpe(file, argv, environ) }
}

/// Interposed `fexecve`.
///
/// # Safety
/// The C contract of `fexecve(3)`.
#[no_mangle]
pub unsafe extern "C" fn fexecve(fd: c_int, argv: Argv, envp: Argv) -> c_int {
    with_carried_env(envp, |env| real!(fexecve(fd, argv, env)))
}

/// Interposed `fork`. The child is a copy of this process; in this build every fd is a kernel
/// fd, which the child shares with the parent exactly as without the shim.
///
/// # Safety
/// The C contract of `fork(2)`.
#[no_mangle]
pub unsafe extern "C" fn fork() -> pid_t {
    real!(fork() else sys(libc::SYS_fork))
}

/// The real `vfork`, for the trampoline (0 until resolved: then `vfork` behaves as `fork`).
static REAL_VFORK: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn init_vfork() {
    let p = real::vfork().map_or(0, |f| f as usize);
    REAL_VFORK.store(p, Ordering::Release);
}

/// Interposed `vfork`: a tail jump to the real one, so that the stack the child shares with
/// the parent holds no frame of the shim.
///
/// # Safety
/// The C contract of `vfork(2)`.
#[unsafe(naked)]
#[no_mangle]
pub unsafe extern "C" fn vfork() -> pid_t {
    core::arch::naked_asm!(
        "mov rax, qword ptr [rip + {slot}]",
        "test rax, rax",
        "jz 2f",
        "jmp rax",
        "2:",
        "jmp {fallback}",
        slot = sym REAL_VFORK,
        fallback = sym fork,
    )
}

/// Which `execl*` a trampoline serves.
const EXECL: u32 = 0;
const EXECLP: u32 = 1;
const EXECLE: u32 = 2;

macro_rules! execl_trampoline {
    ($name:ident, $kind:expr) => {
        /// Interposed `execl`-family function (variadic in C).
        ///
        /// # Safety
        /// The C contract of `execl(3)`.
        #[unsafe(naked)]
        #[no_mangle]
        pub unsafe extern "C" fn $name(path: *const c_char, arg: *const c_char) -> c_int {
            // Spill the six integer-argument registers below the frame; the seventh and later
            // arguments sit above the return address. Pass both areas to `execl_impl`.
            core::arch::naked_asm!(
                "push rbp",
                "mov rbp, rsp",
                "sub rsp, 48",
                "mov qword ptr [rsp], rdi",
                "mov qword ptr [rsp + 8], rsi",
                "mov qword ptr [rsp + 16], rdx",
                "mov qword ptr [rsp + 24], rcx",
                "mov qword ptr [rsp + 32], r8",
                "mov qword ptr [rsp + 40], r9",
                "mov rdi, rsp",
                "lea rsi, [rbp + 16]",
                "mov edx, {kind}",
                "call {imp}",
                "leave",
                "ret",
                kind = const $kind,
                imp = sym execl_impl,
            )
        }
    };
}

execl_trampoline!(execl, EXECL);
execl_trampoline!(execlp, EXECLP);
execl_trampoline!(execle, EXECLE);

/// The `i`-th integer argument of a variadic call spilled by the trampoline.
///
/// # Safety
/// `regs` must hold the six register arguments and `stack` point at the stack arguments of a
/// call that has at least `i + 1` arguments.
unsafe fn nth_arg(regs: *const usize, stack: *const usize, i: usize) -> usize {
    // SAFETY: caller's contract.
    unsafe {
        if i < 6 {
            *regs.add(i)
        } else {
            *stack.add(i - 6)
        }
    }
}

extern "C" fn execl_impl(regs: *const usize, stack: *const usize, kind: u32) -> c_int {
    let mut argv: [*const c_char; MAX_ARGS + 1] = [std::ptr::null(); MAX_ARGS + 1];
    // SAFETY: the trampoline spilled the registers; argument 0 always exists.
    let path = unsafe { nth_arg(regs, stack, 0) } as *const c_char;
    let mut n = 0;
    loop {
        // SAFETY: execl's contract: arguments continue up to and including a NULL pointer.
        let a = unsafe { nth_arg(regs, stack, n + 1) } as *const c_char;
        if a.is_null() {
            break;
        }
        if n >= MAX_ARGS {
            return errno::fail(Errno(libc::E2BIG));
        }
        argv[n] = a;
        n += 1;
    }
    // SAFETY: for execle the environment pointer follows the terminating NULL.
    let envp: Argv =
        if kind == EXECLE { (unsafe { nth_arg(regs, stack, n + 2) }) as Argv } else { std::ptr::null() };
    // SAFETY: argv is NULL-terminated; the exec functions' contracts are the caller's.
    unsafe {
        match kind {
            EXECLP => execvp(path, argv.as_ptr()),
            EXECLE => execve(path, argv.as_ptr(), envp),
            _ => execv(path, argv.as_ptr()),
        }
    }
}
