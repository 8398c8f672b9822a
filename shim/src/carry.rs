//! Carrying the shim across `exec`: building the new program's environment.
//!
//! Constraints, each from a real program:
//! * It runs in vfork children and children of threaded programs: no allocation, no lock.
//! * It runs on small stacks (a thread with a 32 KiB stack calling `subprocess`): the common
//!   case — the environment already carries everything — reads the caller's environment in
//!   a frame of about 1 KiB and copies nothing; only a missing variable makes it rebuild the
//!   array, in a frame sized to the environment (tiers of 64, 256 and 1024 entries).
//! * A bad `envp` must make exec fail with `EFAULT`, not crash the shim: the caller's memory is
//!   read with `process_vm_readv(2)` on our own pid, which reports a fault, and at any fault
//!   the caller's `envp` goes to the real call unchanged so the kernel answers `EFAULT`.
//! * A seccomp filter may kill on `process_vm_readv`: while a filter is active (read from
//!   `/proc/self/status`, once filtered always filtered) memory is read directly, trusting the
//!   caller as glibc does.

use std::sync::atomic::{AtomicBool, Ordering};

use arrakis_core::exec::{is_carried, may_be_carried, preload_names_shim, var_name, var_value};
use libc::{c_char, c_void, iovec};

use crate::{errno, init};

pub(crate) type Argv = *const *const c_char;

/// Most `ARRAKIS_*` settings carried (one bit each in `Scan::present`).
const MAX_SETTINGS: usize = 32;
/// Pointers and name prefixes read per step while scanning.
const STEP: usize = 16;
/// Bytes of each entry read to tell its name: enough for `LD_PRELOAD=` and `ARRAKIS_`.
const PREFIX: usize = 16;
/// Longest `ARRAKIS_*` name compared; longer names are never carried.
const NAME_MAX: usize = 64;
/// Longest `LD_PRELOAD` value examined in the scan; a longer one is rebuilt with the shim
/// prepended (harmless if it named the shim already: ld.so loads an object once).
const VALUE_MAX: usize = 512;
/// The smallest page size: reads are split at its boundaries, so a fault is always at an
/// element boundary.
const PAGE: usize = 4096;

/// The caller's memory could not be read: exec will fail with `EFAULT`.
struct Fault;

/// Set once a seccomp filter is seen (filters are never removed) or `process_vm_readv` is
/// refused: then memory is read directly.
static UNCHECKED: AtomicBool = AtomicBool::new(false);

fn page_rest(addr: usize) -> usize {
    PAGE - (addr % PAGE)
}

fn iov(p: *const u8, len: usize) -> iovec {
    iovec { iov_base: p as *mut c_void, iov_len: len }
}

/// True while a seccomp filter is active, per the `Seccomp:` line of `/proc/self/status`.
/// Unknown (no /proc) counts as filtered: the safe side is not to make the call.
fn seccomp_filtered() -> bool {
    const PATH: &[u8] = b"/proc/self/status\0";
    const KEY: &[u8] = b"\nSeccomp:\t";
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    // SAFETY: raw syscalls on a NUL-terminated path and a buffer of ours.
    let fd = unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, PATH.as_ptr(), flags) };
    if fd < 0 {
        return true;
    }
    let mut buf = [0u8; 256];
    let mut keep = 0; // bytes carried over from the previous read
    let mut answer = true;
    loop {
        // SAFETY: reads into the free part of `buf`.
        let n = unsafe { libc::syscall(libc::SYS_read, fd, buf[keep..].as_mut_ptr(), buf.len() - keep) };
        if n <= 0 {
            break;
        }
        let len = keep + n as usize;
        if let Some(at) = buf[..len].windows(KEY.len()).position(|w| w == KEY) {
            match buf.get(at + KEY.len()) {
                Some(&b) if at + KEY.len() < len => {
                    answer = b != b'0';
                    break;
                }
                _ => {}
            }
        }
        // Keep the tail so a key split across reads is still found.
        keep = KEY.len().min(len);
        buf.copy_within(len - keep..len, 0);
    }
    // SAFETY: closes the fd opened above.
    unsafe { libc::syscall(libc::SYS_close, fd) };
    answer
}

/// Reads `remote[i]` into `local[i]` from this process's memory. Returns the bytes read,
/// which stop at the first fault.
fn read_own(local: &[iovec], remote: &[iovec], checked: bool) -> usize {
    if checked && !UNCHECKED.load(Ordering::Relaxed) {
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
                // A full-width 0: syscall(2) is variadic and the sixth argument travels in an
                // 8-byte stack slot, whose upper half a 32-bit literal would leave undefined.
                0 as libc::c_ulong,
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
    remote.iter().map(|v| v.iov_len).sum()
}

/// Reads the C string at `addr` into `buf`; `Ok(None)` if it does not fit.
fn read_cstr(addr: usize, buf: &mut [u8], checked: bool) -> Result<Option<usize>, Fault> {
    let mut n = 0;
    while n < buf.len() {
        let want = page_rest(addr + n).min(buf.len() - n);
        let got =
            read_own(&[iov(buf[n..].as_mut_ptr(), want)], &[iov((addr + n) as *const u8, want)], checked);
        if let Some(end) = buf[n..n + got].iter().position(|&b| b == 0) {
            return Ok(Some(n + end));
        }
        if got < want {
            return Err(Fault);
        }
        n += want;
    }
    Ok(None)
}

/// What the caller's environment holds of the carried variables.
struct Scan {
    /// Entries before the terminating NULL.
    len: usize,
    /// Index of `LD_PRELOAD`, if present.
    preload: Option<usize>,
    /// Its value's length if it must be rebuilt with the shim in front.
    preload_fix: Option<usize>,
    /// Bit k: `carry.settings[k]` is present.
    present: u32,
}

/// Walks `envp` with small buffers. `Err` on a fault (exec will answer `EFAULT`).
fn scan(envp: Argv, carry: &init::Carry, checked: bool) -> Result<Scan, Fault> {
    let mut s = Scan { len: 0, preload: None, preload_fix: None, present: 0 };
    if envp.is_null() {
        return Ok(s);
    }
    let size = std::mem::size_of::<usize>();
    loop {
        let mut ptrs = [0usize; STEP];
        let at = envp as usize + s.len * size;
        let want = (page_rest(at) / size).clamp(1, STEP);
        let dst = ptrs.as_mut_ptr().cast::<u8>();
        if read_own(&[iov(dst, want * size)], &[iov(at as *const u8, want * size)], checked) < want * size {
            return Err(Fault);
        }
        let count = ptrs[..want].iter().position(|&p| p == 0).unwrap_or(want);
        // The first bytes of each entry, in one read.
        let mut heads = [[0u8; PREFIX]; STEP];
        let mut local = [iov(std::ptr::null(), 0); STEP];
        let mut remote = [iov(std::ptr::null(), 0); STEP];
        let mut total = 0;
        for i in 0..count {
            let len = page_rest(ptrs[i]).min(PREFIX);
            local[i] = iov(heads[i].as_mut_ptr(), len);
            remote[i] = iov(ptrs[i] as *const u8, len);
            total += len;
        }
        if read_own(&local[..count], &remote[..count], checked) < total {
            return Err(Fault);
        }
        for i in 0..count {
            if may_be_carried(&heads[i][..local[i].iov_len]) {
                examine(ptrs[i], s.len + i, carry, checked, &mut s)?;
            }
        }
        s.len += count;
        if count < want {
            return Ok(s);
        }
    }
}

/// Looks at one entry that may be `LD_PRELOAD` or an `ARRAKIS_*` setting.
fn examine(p: usize, index: usize, carry: &init::Carry, checked: bool, s: &mut Scan) -> Result<(), Fault> {
    let mut buf = [0u8; NAME_MAX + 1 + VALUE_MAX];
    let (entry, whole) = match read_cstr(p, &mut buf, checked)? {
        Some(n) => (&buf[..n], true),
        None => (&buf[..], false),
    };
    let name = var_name(entry);
    if !is_carried(name) {
        return Ok(());
    }
    if name == b"LD_PRELOAD" {
        if s.preload.is_none() {
            s.preload = Some(index);
            if !whole || !preload_names_shim(var_value(entry), carry.shim_path.to_bytes()) {
                let len = if whole { var_value(entry).len() } else { value_len(p, checked)? };
                s.preload_fix = Some(len);
            }
        }
    } else if let Some(k) =
        carry.settings.iter().take(MAX_SETTINGS).position(|c| var_name(c.to_bytes()) == name)
    {
        s.present |= 1 << k;
    }
    Ok(())
}

/// The length of the value of the (long) `LD_PRELOAD=` entry at `p`.
fn value_len(p: usize, checked: bool) -> Result<usize, Fault> {
    let mut chunk = [0u8; 256];
    let mut n = 0;
    loop {
        let want = page_rest(p + n).min(chunk.len());
        let got = read_own(&[iov(chunk.as_mut_ptr(), want)], &[iov((p + n) as *const u8, want)], checked);
        if let Some(end) = chunk[..got].iter().position(|&b| b == 0) {
            return Ok((n + end).saturating_sub(b"LD_PRELOAD=".len()));
        }
        if got < want {
            return Err(Fault);
        }
        n += want;
    }
}

/// Runs `f` with `envp`, or with a copy that adds the shim's `LD_PRELOAD` and `ARRAKIS_*`
/// settings where the caller's lacks them. A NULL `envp` is an empty environment (Linux).
pub(crate) fn with_carried_env<R>(envp: Argv, f: impl FnOnce(Argv) -> R) -> R {
    let Some(carry) = init::carry() else { return f(envp) };
    if carry.preload.is_none() {
        return f(envp);
    }
    let saved = errno::get();
    let checked = !UNCHECKED.load(Ordering::Relaxed) && {
        let filtered = seccomp_filtered();
        if filtered {
            UNCHECKED.store(true, Ordering::Relaxed);
        }
        !filtered
    };
    let scanned = scan(envp, carry, checked);
    errno::set(saved);
    let Ok(s) = scanned else { return f(envp) };
    let settings = carry.settings.len().min(MAX_SETTINGS);
    let missing =
        (0..settings).filter(|k| s.present & (1 << k) == 0).count() + usize::from(s.preload.is_none());
    if missing == 0 && s.preload_fix.is_none() && !envp.is_null() {
        return f(envp);
    }
    let need = s.len + missing + 1;
    // "LD_PRELOAD=" + shim + ":" + theirs + NUL
    let entry = s.preload_fix.map_or(0, |v| b"LD_PRELOAD=:".len() + carry.shim_path.as_bytes().len() + v + 1);
    // Each tier is its own function, so only the chosen frame is on the stack.
    match (need, entry) {
        (0..=64, 0..=512) => rebuild::<64, 512, R>(envp, carry, &s, checked, f),
        (0..=256, 0..=4096) => rebuild::<256, 4096, R>(envp, carry, &s, checked, f),
        (0..=1024, 0..=4096) => rebuild::<1024, 4096, R>(envp, carry, &s, checked, f),
        // Too large to rebuild on the stack: pass it on unchanged.
        _ => f(envp),
    }
}

/// Builds the carried environment in arrays of `N` pointers and a `P`-byte `LD_PRELOAD`
/// entry, and runs `f` with it.
#[inline(never)]
fn rebuild<const N: usize, const P: usize, R>(
    envp: Argv,
    carry: &init::Carry,
    s: &Scan,
    checked: bool,
    f: impl FnOnce(Argv) -> R,
) -> R {
    let mut out: [*const c_char; N] = [std::ptr::null(); N];
    let mut preload_buf = [0u8; P];
    let saved = errno::get();
    let ok = fill(envp, carry, s, checked, &mut out, &mut preload_buf).is_ok();
    errno::set(saved);
    if ok {
        f(out.as_ptr())
    } else {
        f(envp)
    }
}

fn fill(
    envp: Argv,
    carry: &init::Carry,
    s: &Scan,
    checked: bool,
    out: &mut [*const c_char],
    preload_buf: &mut [u8],
) -> Result<(), Fault> {
    let size = std::mem::size_of::<usize>();
    // The caller's pointers, read (checked) straight into `out`.
    let mut n = 0;
    while n < s.len {
        let at = envp as usize + n * size;
        let want = (page_rest(at) / size).clamp(1, s.len - n);
        let dst = out[n..n + want].as_mut_ptr().cast::<u8>();
        if read_own(&[iov(dst, want * size)], &[iov(at as *const u8, want * size)], checked) < want * size {
            return Err(Fault);
        }
        n += want;
    }
    if let (Some(i), Some(_)) = (s.preload, s.preload_fix) {
        // LD_PRELOAD=<shim>:<theirs>
        let shim = carry.shim_path.to_bytes();
        let head = b"LD_PRELOAD=".len();
        let mut w = 0;
        for part in [&b"LD_PRELOAD="[..], shim, b":"] {
            preload_buf[w..w + part.len()].copy_from_slice(part);
            w += part.len();
        }
        let theirs = out[i] as usize + head;
        if read_cstr(theirs, &mut preload_buf[w..], checked)?.is_none() {
            return Err(Fault);
        }
        out[i] = preload_buf.as_ptr().cast();
    }
    let mut len = s.len;
    if s.preload.is_none() {
        if let Some(p) = &carry.preload {
            out[len] = p.as_ptr();
            len += 1;
        }
    }
    for (k, c) in carry.settings.iter().take(MAX_SETTINGS).enumerate() {
        if s.present & (1 << k) == 0 {
            out[len] = c.as_ptr();
            len += 1;
        }
    }
    out[len] = std::ptr::null();
    Ok(())
}
