//! Carrying the shim across `exec`: building the new program's environment.
//!
//! The environment array and its strings belong to the caller, and exec's contract is that a
//! bad pointer there makes the call fail with `EFAULT` — the shim must not crash where Linux
//! would answer. So the caller's memory is read through `process_vm_readv(2)` on our own pid,
//! which reports a fault instead of raising `SIGSEGV`; at any fault the shim hands the
//! caller's `envp` to the real call unchanged, and the kernel answers `EFAULT` itself.
//!
//! This runs in vfork children and in children of threaded programs: no allocation, no lock.
//! Everything lives in fixed arrays on the stack.

use std::sync::atomic::{AtomicBool, Ordering};

use arrakis_core::exec::{is_carried, may_be_carried, preload_names_shim, var_name, var_value};
use libc::{c_char, c_void, iovec};

use crate::{errno, init};

pub(crate) type Argv = *const *const c_char;

/// Most environment entries rebuilt; a longer environment is passed on unchanged.
const MAX_ENV: usize = 1024;
/// Most `ARRAKIS_*` settings carried.
const MAX_SETTINGS: usize = 32;
/// Entries whose first bytes are read per `process_vm_readv` call.
const BATCH: usize = 128;
/// Bytes of each entry read to tell its name: enough for `LD_PRELOAD=` and `ARRAKIS_`.
const PREFIX: usize = 16;
/// Longest `LD_PRELOAD=`/`ARRAKIS_*` entry the shim reads in full.
const MAX_ENTRY: usize = 4096;
/// The smallest page size: reads are split at its boundaries, so a fault is always at an
/// element boundary.
const PAGE: usize = 4096;

/// The caller's memory could not be read: exec will fail with `EFAULT`.
struct Fault;

/// Set when `process_vm_readv` is not allowed here (seccomp, old kernel): then memory is
/// read directly, as glibc itself would.
static UNCHECKED: AtomicBool = AtomicBool::new(false);

fn page_rest(addr: usize) -> usize {
    PAGE - (addr % PAGE)
}

/// Reads `remote[i]` into `local[i]` from this process's memory. Returns the bytes read,
/// which stop at the first fault.
fn read_own(local: &[iovec], remote: &[iovec]) -> usize {
    let total: usize = remote.iter().map(|v| v.iov_len).sum();
    if !UNCHECKED.load(Ordering::Relaxed) {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::syscall(libc::SYS_getpid) };
        // SAFETY: `local` describes writable buffers of ours; the kernel checks `remote`.
        let r = unsafe {
            libc::syscall(
                libc::SYS_process_vm_readv,
                pid,
                local.as_ptr(),
                local.len(),
                remote.as_ptr(),
                remote.len(),
                0,
            )
        };
        if r >= 0 {
            return r as usize;
        }
        if errno::get() == libc::EFAULT {
            return 0;
        }
        UNCHECKED.store(true, Ordering::Relaxed);
    }
    for (l, r) in local.iter().zip(remote) {
        // SAFETY: without process_vm_readv the shim trusts the caller, as glibc does.
        unsafe { std::ptr::copy_nonoverlapping(r.iov_base as *const u8, l.iov_base as *mut u8, r.iov_len) };
    }
    total
}

fn iov(p: *const u8, len: usize) -> iovec {
    iovec { iov_base: p as *mut c_void, iov_len: len }
}

/// Reads the NULL-terminated pointer array at `addr` into `ptrs`; returns its length, or
/// `Ok(None)` if it is longer than `ptrs` holds.
fn read_ptr_array(addr: usize, ptrs: &mut [usize; MAX_ENV + 1]) -> Result<Option<usize>, Fault> {
    let size = std::mem::size_of::<usize>();
    let mut n = 0;
    while n < ptrs.len() {
        let at = addr + n * size;
        let want = (page_rest(at) / size).clamp(1, ptrs.len() - n);
        let dst = ptrs[n..n + want].as_mut_ptr().cast::<u8>();
        if read_own(&[iov(dst, want * size)], &[iov(at as *const u8, want * size)]) < want * size {
            return Err(Fault);
        }
        if let Some(end) = ptrs[n..n + want].iter().position(|&p| p == 0) {
            return Ok(Some(n + end));
        }
        n += want;
    }
    Ok(None)
}

/// Reads the C string at `addr` into `buf`; `Ok(None)` if it does not fit.
fn read_cstr(addr: usize, buf: &mut [u8; MAX_ENTRY]) -> Result<Option<&[u8]>, Fault> {
    let mut n = 0;
    while n < buf.len() {
        let want = page_rest(addr + n).min(buf.len() - n);
        let got = read_own(&[iov(buf[n..].as_mut_ptr(), want)], &[iov((addr + n) as *const u8, want)]);
        if let Some(end) = buf[n..n + got].iter().position(|&b| b == 0) {
            return Ok(Some(&buf[..n + end]));
        }
        if got < want {
            return Err(Fault);
        }
        n += want;
    }
    Ok(None)
}

/// Runs `f` with `envp`, or with a copy that adds the shim's `LD_PRELOAD` and `ARRAKIS_*`
/// settings where the caller's lacks them. A NULL `envp` is an empty environment (Linux).
pub(crate) fn with_carried_env<R>(envp: Argv, f: impl FnOnce(Argv) -> R) -> R {
    let Some(carry) = init::carry() else { return f(envp) };
    let Some(preload) = &carry.preload else { return f(envp) };
    let saved = errno::get();
    let mut out: [*const c_char; MAX_ENV + MAX_SETTINGS + 2] = [std::ptr::null(); MAX_ENV + MAX_SETTINGS + 2];
    let mut preload_buf = [0u8; MAX_ENTRY + 1];
    let built = build(envp, carry, preload.as_ptr(), &mut out, &mut preload_buf);
    errno::set(saved);
    match built {
        Some(true) => f(out.as_ptr()),
        _ => f(envp),
    }
}

/// Fills `out` with the carried environment. `Some(true)`: use `out`; `Some(false)`: nothing
/// to add; `None`: leave the caller's environment alone (a fault, or too large to rebuild).
fn build(
    envp: Argv,
    carry: &init::Carry,
    preload: *const c_char,
    out: &mut [*const c_char; MAX_ENV + MAX_SETTINGS + 2],
    preload_buf: &mut [u8; MAX_ENTRY + 1],
) -> Option<bool> {
    let mut ptrs = [0usize; MAX_ENV + 1];
    let n = if envp.is_null() { 0 } else { read_ptr_array(envp as usize, &mut ptrs).ok()?? };
    let shim = carry.shim_path.to_bytes();
    let settings = &carry.settings[..carry.settings.len().min(MAX_SETTINGS)];
    let mut present = [false; MAX_SETTINGS];
    let mut have_preload = false;
    let mut changed = envp.is_null();
    let mut scratch = [0u8; MAX_ENTRY];

    for start in (0..n).step_by(BATCH) {
        let batch = &ptrs[start..(start + BATCH).min(n)];
        let mut heads = [[0u8; PREFIX]; BATCH];
        let mut local = [iov(std::ptr::null(), 0); BATCH];
        let mut remote = [iov(std::ptr::null(), 0); BATCH];
        let mut want = 0;
        for (i, &p) in batch.iter().enumerate() {
            let len = page_rest(p).min(PREFIX);
            local[i] = iov(heads[i].as_mut_ptr(), len);
            remote[i] = iov(p as *const u8, len);
            want += len;
        }
        if read_own(&local[..batch.len()], &remote[..batch.len()]) < want {
            return None;
        }
        for (i, &p) in batch.iter().enumerate() {
            out[start + i] = p as *const c_char;
            if !may_be_carried(&heads[i][..local[i].iov_len]) {
                continue;
            }
            let Ok(Some(entry)) = read_cstr(p, &mut scratch) else { return None };
            let name = var_name(entry);
            if !is_carried(name) {
                continue;
            }
            if name == b"LD_PRELOAD" {
                have_preload = true;
                let value = var_value(entry);
                if preload_names_shim(value, shim) {
                    continue;
                }
                // LD_PRELOAD=<shim>:<theirs>
                let parts: [&[u8]; 4] = [b"LD_PRELOAD=", shim, b":", value];
                let len: usize = parts.iter().map(|p| p.len()).sum();
                if len >= preload_buf.len() {
                    continue;
                }
                let mut w = 0;
                for part in parts {
                    preload_buf[w..w + part.len()].copy_from_slice(part);
                    w += part.len();
                }
                preload_buf[w] = 0;
                out[start + i] = preload_buf.as_ptr().cast();
                changed = true;
            } else if let Some(k) = settings.iter().position(|s| var_name(s.to_bytes()) == name) {
                present[k] = true;
            }
        }
    }
    let mut len = n;
    if !have_preload {
        out[len] = preload;
        len += 1;
        changed = true;
    }
    for (k, s) in settings.iter().enumerate() {
        if !present[k] {
            out[len] = s.as_ptr();
            len += 1;
            changed = true;
        }
    }
    out[len] = std::ptr::null();
    Some(changed)
}
