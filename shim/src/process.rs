//! `fork`, `vfork` and the `exec` family.
//!
//! `exec` keeps the program under the shim: if the new environment lacks `LD_PRELOAD` (or
//! lacks the shim in it) or the `ARRAKIS_*` settings this process started with, they are
//! added ([`crate::carry`]).
//!
//! `vfork` is a tail jump to the real `vfork`: the child shares the parent's stack, so no
//! frame of ours may be live across it. `execl`, `execle` and `execlp` take an unbounded
//! number of arguments, which stable Rust cannot receive as C varargs; a small x86_64
//! trampoline spills the argument registers next to the stack arguments and a Rust function
//! reads them as the array they are.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, pid_t};

use crate::carry::{with_carried_env, Argv};
use crate::real;

extern "C" {
    static environ: Argv;
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

type SpawnFn = unsafe extern "C" fn(
    *mut pid_t,
    *const c_char,
    *const libc::c_void,
    *const libc::c_void,
    *const *mut c_char,
    *const *mut c_char,
) -> c_int;

/// `posix_spawn` and `posix_spawnp` with the carried environment. They report errors as
/// their return value, not through `errno`.
///
/// # Safety
/// The C contract of `posix_spawn(3)`.
unsafe fn spawn(
    real: Option<SpawnFn>,
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const libc::c_void,
    attr: *const libc::c_void,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    let Some(f) = real else { return libc::ENOSYS };
    // SAFETY: the caller's arguments, passed on with the carried environment.
    with_carried_env(envp.cast(), |env| unsafe { f(pid, path, actions, attr, argv, env.cast()) })
}

/// Interposed `posix_spawn`: the child gets the carried settings like an `exec`.
///
/// # Safety
/// The C contract of `posix_spawn(3)`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawn(
    pid: *mut pid_t,
    path: *const c_char,
    actions: *const libc::c_void,
    attr: *const libc::c_void,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: the caller's contract.
    unsafe { spawn(real::posix_spawn(), pid, path, actions, attr, argv, envp) }
}

/// Interposed `posix_spawnp`.
///
/// # Safety
/// The C contract of `posix_spawnp(3)`.
#[no_mangle]
pub unsafe extern "C" fn posix_spawnp(
    pid: *mut pid_t,
    file: *const c_char,
    actions: *const libc::c_void,
    attr: *const libc::c_void,
    argv: *const *mut c_char,
    envp: *const *mut c_char,
) -> c_int {
    // SAFETY: the caller's contract.
    unsafe { spawn(real::posix_spawnp(), pid, file, actions, attr, argv, envp) }
}

/// Interposed `fork`. The child is a copy of this process; in this build every fd is a kernel
/// fd, which the child shares with the parent exactly as without the shim.
///
/// # Safety
/// The C contract of `fork(2)`.
#[no_mangle]
pub unsafe extern "C" fn fork() -> pid_t {
    // The network world's lock is held across the fork so the child's copy is consistent.
    let guard = arrakis_core::net::world::started().then(|| arrakis_core::net::world::net().fork_prepare());
    // Owned volumes are served to the child, which reaches them by RPC (core::fs::mount).
    let mounts = if arrakis_core::fs::mount::active() {
        let _e = crate::errno::Saved::new();
        crate::lib::guarded("fork", || Ok(arrakis_core::fs::mount::fork_prepare()))
    } else {
        None
    };
    let r = real!(fork() else sys(libc::SYS_fork));
    if let Some(m) = mounts {
        if r == 0 {
            m.child();
        } else {
            m.parent();
        }
    }
    if r == 0 {
        crate::libos::forked_child();
    }
    if let Some(g) = guard {
        if r == 0 {
            g.child();
        } else {
            drop(g);
        }
    }
    r
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
    // SAFETY: the trampoline spilled the registers; execl's contract: arguments continue up
    // to and including a NULL pointer (and, for execle, the environment after it).
    let arg = |i: usize| unsafe { nth_arg(regs, stack, i) } as *const c_char;
    let argc = (1..).take_while(|&i| !arg(i).is_null()).count();
    let call = ExeclCall {
        path: arg(0),
        kind,
        envp: if kind == EXECLE { arg(argc + 2).cast() } else { std::ptr::null() },
    };
    // Arrays sized to the call, each tier its own frame: exec runs on small stacks too.
    match argc {
        0..64 => call.exec_with::<64>(argc, arg),
        64..1024 => call.exec_with::<1024>(argc, arg),
        // Rare: more arguments than the stack tiers hold (glibc allows any number).
        _ => {
            let argv: Vec<*const c_char> = (1..=argc).map(arg).chain([std::ptr::null()]).collect();
            call.exec(argv.as_ptr())
        }
    }
}

struct ExeclCall {
    path: *const c_char,
    kind: u32,
    envp: Argv,
}

impl ExeclCall {
    fn exec(&self, argv: Argv) -> c_int {
        // SAFETY: argv is NULL-terminated; the exec functions' contracts are the caller's.
        unsafe {
            match self.kind {
                EXECLP => execvp(self.path, argv),
                EXECLE => execve(self.path, argv, self.envp),
                _ => execv(self.path, argv),
            }
        }
    }

    #[inline(never)]
    fn exec_with<const N: usize>(&self, argc: usize, arg: impl Fn(usize) -> *const c_char) -> c_int {
        let mut argv: [*const c_char; N] = [std::ptr::null(); N];
        for (i, a) in argv.iter_mut().enumerate().take(argc) {
            *a = arg(i + 1);
        }
        self.exec(argv.as_ptr())
    }
}
