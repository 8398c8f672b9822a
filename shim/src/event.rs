//! Event calls: `epoll_*`, `poll`, `ppoll`, `select`, `pselect` and their fortified forms.
//! While no fd of the process belongs to the library OS (always, in this build) the sets are
//! not even scanned: one atomic load and the call passes through.

use arrakis_core::fd::table;
use libc::{c_int, epoll_event, fd_set, nfds_t, pollfd, sigset_t, size_t, timespec, timeval};

use crate::io::created;
use crate::lib;

fd_passthrough! {
    fn epoll_wait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int) -> c_int
        = sys(libc::SYS_epoll_wait);
    fn epoll_pwait(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: c_int, mask: *const sigset_t)
        -> c_int;
    fn epoll_pwait2(epfd: c_int, events: *mut epoll_event, max: c_int, timeout: *const timespec,
        mask: *const sigset_t) -> c_int;
}

/// Interposed `epoll_create`.
///
/// # Safety
/// The C contract of `epoll_create(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_create(size: c_int) -> c_int {
    crate::libos::epoll_created(created(real!(epoll_create(size) else sys(libc::SYS_epoll_create, size))))
}

/// Interposed `epoll_create1`.
///
/// # Safety
/// The C contract of `epoll_create1(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_create1(flags: c_int) -> c_int {
    crate::libos::epoll_created(created(real!(epoll_create1(flags) else sys(libc::SYS_epoll_create1, flags))))
}

export! {
    /// Interposed `epoll_ctl`: passes through when both the epoll fd and the target are kernel fds.
    ///
    /// # Safety
    /// The C contract of `epoll_ctl(2)`.
    fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
        fast if table().is_kernel(epfd) && table().is_kernel(fd);
        if table().is_kernel(epfd) && table().is_kernel(fd) {
            return real!(epoll_ctl(epfd, op, fd, ev) else sys(libc::SYS_epoll_ctl, epfd, op, fd, ev));
        }
        if lib::inside() {
            return real!(epoll_ctl(epfd, op, fd, ev) else sys(libc::SYS_epoll_ctl, epfd, op, fd, ev));
        }
        // SAFETY: the caller's arguments, same contract.
        unsafe { crate::libos::epoll_ctl(epfd, op, fd, ev) }
    }
}

/// The first library-OS fd in a poll set, if any.
///
/// # Safety
/// `fds` must point to `n` pollfds (or `n == 0`).
unsafe fn library_fd_in_poll_set(fds: *const pollfd, n: nfds_t) -> Option<c_int> {
    if !table().any_library_fds() || fds.is_null() {
        return None;
    }
    // SAFETY: caller's contract: `fds[..n]` is readable.
    let set = unsafe { std::slice::from_raw_parts(fds, n as usize) };
    set.iter().map(|p| p.fd).find(|&fd| fd >= 0 && !table().is_kernel(fd))
}

/// The first library-OS fd in select's sets, if any.
///
/// # Safety
/// Each non-null set must be a readable `fd_set`.
unsafe fn library_fd_in_fd_sets(nfds: c_int, sets: [*mut fd_set; 3]) -> Option<c_int> {
    if !table().any_library_fds() {
        return None;
    }
    let limit = nfds.clamp(0, libc::FD_SETSIZE as c_int);
    (0..limit).find(|&fd| {
        // SAFETY: fd < FD_SETSIZE, and each non-null set is readable (caller's contract).
        !table().is_kernel(fd) && sets.iter().any(|s| !s.is_null() && unsafe { libc::FD_ISSET(fd, *s) })
    })
}

export! {
    /// Interposed `poll`.
    ///
    /// # Safety
    /// The C contract of `poll(2)`.
    fn poll(fds: *mut pollfd, n: nfds_t, timeout: c_int) -> c_int {
        fast if !table().any_library_fds();
        // SAFETY: `fds[..n]` is the caller's readable poll set.
        match unsafe { library_fd_in_poll_set(fds, n) } {
            None => real!(poll(fds, n, timeout) else sys(libc::SYS_poll, fds, n, timeout)),
            // SAFETY: the caller's arguments, same contract.
            Some(_) => unsafe { crate::libos::poll_mixed(fds, n, ms(timeout), std::ptr::null()) },
        }
    }
}

export! {
    /// Interposed `__poll_chk` (fortified `poll`).
    ///
    /// # Safety
    /// The C contract of `poll(2)`; `fdslen` is the size of the caller's array.
    fn __poll_chk(fds: *mut pollfd, n: nfds_t, timeout: c_int, fdslen: size_t) -> c_int {
        fast if !table().any_library_fds();
        // SAFETY: as for poll; glibc's checker verifies `n` against `fdslen`.
        match unsafe { library_fd_in_poll_set(fds, n.min((fdslen / std::mem::size_of::<pollfd>()) as nfds_t)) } {
            None => real!(__poll_chk(fds, n, timeout, fdslen)),
            Some(_) => {
                if n as usize > fdslen / std::mem::size_of::<pollfd>() {
                    return real!(__poll_chk(fds, n, timeout, fdslen));
                }
                // SAFETY: the caller's arguments, same contract.
                unsafe { crate::libos::poll_mixed(fds, n, ms(timeout), std::ptr::null()) }
            }
        }
    }
}

export! {
    /// Interposed `ppoll`.
    ///
    /// # Safety
    /// The C contract of `ppoll(2)`.
    fn ppoll(
    fds: *mut pollfd,
    n: nfds_t,
    t: *const timespec,
    mask: *const sigset_t,
) -> c_int {
        fast if !table().any_library_fds();
        // SAFETY: `fds[..n]` is the caller's readable poll set.
        match unsafe { library_fd_in_poll_set(fds, n) } {
            None => real!(ppoll(fds, n, t, mask)),
            // SAFETY: the caller's arguments, same contract.
            Some(_) => match unsafe { ts(t) } {
                Ok(d) => unsafe { crate::libos::poll_mixed(fds, n, d, mask) },
                Err(e) => crate::errno::fail(e),
            },
        }
    }
}

export! {
    /// Interposed `__ppoll_chk` (fortified `ppoll`).
    ///
    /// # Safety
    /// The C contract of `ppoll(2)`; `fdslen` is the size of the caller's array.
    fn __ppoll_chk(
    fds: *mut pollfd,
    n: nfds_t,
    t: *const timespec,
    mask: *const sigset_t,
    fdslen: size_t,
) -> c_int {
        fast if !table().any_library_fds();
        // SAFETY: as for __poll_chk.
        match unsafe { library_fd_in_poll_set(fds, n.min((fdslen / std::mem::size_of::<pollfd>()) as nfds_t)) } {
            None => real!(__ppoll_chk(fds, n, t, mask, fdslen)),
            Some(_) => {
                if n as usize > fdslen / std::mem::size_of::<pollfd>() {
                    return real!(__ppoll_chk(fds, n, t, mask, fdslen));
                }
                // SAFETY: the caller's arguments, same contract.
                match unsafe { ts(t) } {
                    Ok(d) => unsafe { crate::libos::poll_mixed(fds, n, d, mask) },
                    Err(e) => crate::errno::fail(e),
                }
            }
        }
    }
}

export! {
    /// Interposed `select`.
    ///
    /// # Safety
    /// The C contract of `select(2)`.
    fn select(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    t: *mut timeval,
) -> c_int {
        fast if !table().any_library_fds();
        // SAFETY: the sets are the caller's readable fd_sets.
        match unsafe { library_fd_in_fd_sets(n, [r, w, e]) } {
            None => real!(select(n, r, w, e, t) else sys(libc::SYS_select, n, r, w, e, t)),
            Some(_) => {
                let d = if t.is_null() {
                    None
                } else {
                    // SAFETY: the caller's timeval.
                    let tv = unsafe { *t };
                    if tv.tv_sec < 0 || !(0..1_000_000).contains(&tv.tv_usec) {
                        return crate::errno::fail(arrakis_core::Errno::EINVAL);
                    }
                    Some(std::time::Duration::new(tv.tv_sec as u64, tv.tv_usec as u32 * 1000))
                };
                // SAFETY: the caller's arguments, same contract.
                let r = unsafe { crate::libos::select_mixed(n, [r, w, e], d, std::ptr::null()) };
                if r >= 0 && !t.is_null() {
                    // Linux writes back the time not slept; a full sleep leaves 0.
                    if r == 0 {
                        // SAFETY: the caller's timeval.
                        unsafe { *t = timeval { tv_sec: 0, tv_usec: 0 } };
                    }
                }
                r
            }
        }
    }
}

export! {
    /// Interposed `pselect`.
    ///
    /// # Safety
    /// The C contract of `pselect(2)`.
    fn pselect(
    n: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    t: *const timespec,
    mask: *const sigset_t,
) -> c_int {
        fast if !table().any_library_fds();
        // SAFETY: the sets are the caller's readable fd_sets.
        match unsafe { library_fd_in_fd_sets(n, [r, w, e]) } {
            None => real!(pselect(n, r, w, e, t, mask)),
            // SAFETY: the caller's arguments, same contract.
            Some(_) => match unsafe { ts(t) } {
                Ok(d) => unsafe { crate::libos::select_mixed(n, [r, w, e], d, mask) },
                Err(e) => crate::errno::fail(e),
            },
        }
    }
}

fn ms(timeout: c_int) -> Option<std::time::Duration> {
    (timeout >= 0).then(|| std::time::Duration::from_millis(timeout as u64))
}

/// A C timespec timeout (`NULL`: forever).
///
/// # Safety
/// `t` must be null or a readable timespec.
unsafe fn ts(t: *const timespec) -> Result<Option<std::time::Duration>, arrakis_core::Errno> {
    if t.is_null() {
        return Ok(None);
    }
    // SAFETY: caller's contract.
    let t = unsafe { *t };
    if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
        return Err(arrakis_core::Errno::EINVAL);
    }
    Ok(Some(std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32)))
}
