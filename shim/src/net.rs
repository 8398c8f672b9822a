//! Socket calls. Under the loopback backend `socket` creates library-OS sockets for TCP and
//! UDP over IPv4/IPv6 (`crate::libos`); every other socket is a kernel socket: creation records
//! the new fd (dropping any stale library-OS entry at that number) and calls pass through.

use libc::{c_int, c_uint, c_void, mmsghdr, msghdr, size_t, sockaddr, socklen_t, ssize_t, timespec};
use libc::{SYS_accept, SYS_accept4, SYS_bind, SYS_connect, SYS_getpeername, SYS_getsockname};
use libc::{SYS_getsockopt, SYS_listen, SYS_recvfrom, SYS_recvmsg, SYS_sendmsg, SYS_sendto};
use libc::{SYS_setsockopt, SYS_shutdown};

use crate::errno;
use crate::io::{created, created_pair};
use arrakis_core::fd::table;

fd_passthrough! {
    fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int = sys(SYS_bind);
    fn listen(fd: c_int, backlog: c_int) -> c_int = sys(SYS_listen);
    fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int = sys(SYS_connect);
    fn shutdown(fd: c_int, how: c_int) -> c_int = sys(SYS_shutdown);
    fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int = sys(SYS_getsockname);
    fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int = sys(SYS_getpeername);
    fn getsockopt(fd: c_int, level: c_int, name: c_int, val: *mut c_void, len: *mut socklen_t) -> c_int
        = sys(SYS_getsockopt);
    fn setsockopt(fd: c_int, level: c_int, name: c_int, val: *const c_void, len: socklen_t) -> c_int
        = sys(SYS_setsockopt);
    fn sendto(fd: c_int, buf: *const c_void, n: size_t, flags: c_int, addr: *const sockaddr, alen: socklen_t)
        -> ssize_t = sys(SYS_sendto);
    fn sendmsg(fd: c_int, msg: *const msghdr, flags: c_int) -> ssize_t = sys(SYS_sendmsg);
    fn sendmmsg(fd: c_int, vec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int = sys(libc::SYS_sendmmsg);
    fn recvfrom(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int, addr: *mut sockaddr, alen: *mut socklen_t)
        -> ssize_t = sys(SYS_recvfrom);
    fn __recv_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int) -> ssize_t;
    fn __recvfrom_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t, flags: c_int,
        addr: *mut sockaddr, alen: *mut socklen_t) -> ssize_t;
}

export! {
    /// Interposed `send`.
    ///
    /// # Safety
    /// The C contract of `send(2)`.
    fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
        fast if table().is_kernel(fd);
        if table().is_kernel(fd) {
            let null = std::ptr::null::<sockaddr>();
            return real!(send(fd, buf, n, flags) else sys(SYS_sendto, fd, buf, n, flags, null, 0));
        }
        // SAFETY: the caller's arguments, same contract.
        unsafe { crate::libos::send(fd, buf, n, flags) }
    }
}

export! {
    /// Interposed `recv`.
    ///
    /// # Safety
    /// The C contract of `recv(2)`.
    fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
        fast if table().is_kernel(fd);
        if table().is_kernel(fd) {
            let null = std::ptr::null_mut::<sockaddr>();
            return real!(recv(fd, buf, n, flags) else sys(SYS_recvfrom, fd, buf, n, flags, null, null));
        }
        // SAFETY: the caller's arguments, same contract.
        unsafe { crate::libos::recv(fd, buf, n, flags) }
    }
}

/// Interposed `socket`: a kernel socket, recorded as such.
///
/// # Safety
/// The C contract of `socket(2)`.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    if !crate::lib::inside() {
        if let Some(fd) = crate::libos::socket(domain, ty, proto) {
            return fd;
        }
    }
    created(real!(socket(domain, ty, proto) else sys(libc::SYS_socket, domain, ty, proto)))
}

/// Interposed `socketpair`.
///
/// # Safety
/// The C contract of `socketpair(2)`.
#[no_mangle]
pub unsafe extern "C" fn socketpair(domain: c_int, ty: c_int, proto: c_int, sv: *mut c_int) -> c_int {
    let r = real!(socketpair(domain, ty, proto, sv) else sys(libc::SYS_socketpair, domain, ty, proto, sv));
    // SAFETY: on success the kernel wrote two fds to `sv`.
    unsafe { created_pair(r, sv) }
}

/// Interposed `accept`.
///
/// # Safety
/// The C contract of `accept(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    if table().is_kernel(fd) {
        return created(real!(accept(fd, addr, len) else sys(SYS_accept, fd, addr, len)));
    }
    // SAFETY: the caller's arguments, same contract.
    unsafe { crate::libos::accept4(fd, addr, len, 0) }
}

/// Interposed `accept4`.
///
/// # Safety
/// The C contract of `accept4(2)`.
#[no_mangle]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    if table().is_kernel(fd) {
        return created(real!(accept4(fd, addr, len, flags) else sys(SYS_accept4, fd, addr, len, flags)));
    }
    // SAFETY: the caller's arguments, same contract.
    unsafe { crate::libos::accept4(fd, addr, len, flags) }
}

/// Interposed `recvmsg`: fds received with `SCM_RIGHTS` are new kernel fds.
///
/// # Safety
/// The C contract of `recvmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut msghdr, flags: c_int) -> ssize_t {
    if !table().is_kernel(fd) {
        // SAFETY: the caller's arguments, same contract.
        return unsafe { crate::libos::recvmsg(fd, msg, flags) };
    }
    let r = real!(recvmsg(fd, msg, flags) else sys(SYS_recvmsg, fd, msg, flags));
    if r >= 0 && table().any_library_fds() {
        // SAFETY: the kernel filled `msg` (caller's buffer) and its control data.
        unsafe { received_rights(msg) };
    }
    r
}

/// Interposed `recvmmsg`.
///
/// # Safety
/// The C contract of `recvmmsg(2)`.
#[no_mangle]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    vec: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
    t: *mut timespec,
) -> c_int {
    if !table().is_kernel(fd) {
        // SAFETY: the caller's arguments, same contract.
        return unsafe { crate::libos::recvmmsg(fd, vec, vlen, flags, t) };
    }
    let r = real!(recvmmsg(fd, vec, vlen, flags, t) else sys(libc::SYS_recvmmsg, fd, vec, vlen, flags, t));
    if r > 0 && table().any_library_fds() {
        for i in 0..r as usize {
            // SAFETY: the kernel filled the first `r` entries of the caller's vector.
            unsafe { received_rights(&mut (*vec.add(i)).msg_hdr) };
        }
    }
    r
}

/// Records every fd passed in `SCM_RIGHTS` control messages of `msg`.
///
/// # Safety
/// `msg` must be a message the kernel just filled.
unsafe fn received_rights(msg: *mut msghdr) {
    let _e = errno::Saved::new();
    // SAFETY: CMSG_* walk the control buffer the kernel filled, within msg_controllen.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<c_int>();
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<c_int>();
                for i in 0..n {
                    created(data.add(i).read_unaligned());
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
}
