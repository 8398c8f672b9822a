//! Calls on library-OS fds: C arguments become safe Rust values, `core` does the work, and
//! errors become `errno` (through `lib::guarded`). Every function here has the name and C
//! signature of the export that dispatches to it (see `fd_passthrough!`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use arrakis_core::config::{Backend, Config};
use arrakis_core::event::{self as cev, Epoll, Op, PollObj, Poller, Target};
use arrakis_core::fd::table;
use arrakis_core::net::socket::{self, msg, Family, Kind, Socket};
use arrakis_core::{Errno, FdObject, SysResult};
use libc::{c_char, c_int, c_uint, c_void, epoll_event, iovec, mmsghdr, msghdr, off64_t, off_t, size_t};
use libc::{sigset_t, sockaddr, socklen_t, ssize_t, timespec, DIR, FILE};
use smallvec::SmallVec;

use crate::lib;

type Stat = c_void;

/// Which backend serves new sockets: [`KERNEL`] (none), [`LOOPBACK`] or [`EMULATOR`].
static MODE: AtomicU8 = AtomicU8::new(KERNEL);
const KERNEL: u8 = 0;
const LOOPBACK: u8 = 1;
const EMULATOR: u8 = 2;
/// The emulator backend, not attached yet: the process registers and takes its NIC when it
/// first needs the library OS (its first socket or epoll instance), so that the many
/// processes that never open a socket (a shell script's `basename`, `sed`, ...) take no NIC and
/// no port block.
const EMULATOR_PENDING: u8 = 3;

/// Serialises the attachment of a pending process.
static ATTACHING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Called once by the constructor, before any socket: picks the backend (the emulator
/// attaches the process to the daemon's switch at its first socket, [`serving`]); then sets
/// whether library-OS TCP sockets get kernel halves.
pub(crate) fn configure(cfg: &Config) {
    let mode = match cfg.backend {
        Backend::Kernel => KERNEL,
        Backend::Loopback => LOOPBACK,
        Backend::Emulator => EMULATOR_PENDING,
    };
    MODE.store(mode, Ordering::Release);
    arrakis_core::net::set_kernel_clients(cfg.kernel_clients());
    arrakis_core::net::set_bindings(cfg.bindings);
}

/// Registers with the daemon and takes this process's NIC (`core::net::control::start`).
fn attach() -> u8 {
    use arrakis_core::net::control;
    let name = std::fs::read_to_string("/proc/self/comm").map(|s| s.trim().to_string()).unwrap_or_default();
    let name = if name.is_empty() { "program".to_string() } else { name };
    match control::start(&name, &control::default_socket()) {
        Ok(nic) => {
            tracing::debug!(
                tcp = %format!("{}-{}", nic.tcp_ports.lo(), nic.tcp_ports.hi()),
                udp = %format!("{}-{}", nic.udp_ports.lo(), nic.udp_ports.hi()),
                "attached to the arrakis switch"
            );
            EMULATOR
        }
        Err(e) => {
            tracing::warn!("{e}");
            KERNEL
        }
    }
}

/// In a child after `fork`: the emulator's NIC is the parent's, so new sockets go to the
/// kernel (the inherited world is detached, `net::world::ForkGuard::child`). A child of a
/// process that had not attached yet attaches on its own at its first socket.
pub(crate) fn forked_child() {
    let _ = MODE.compare_exchange(EMULATOR, KERNEL, Ordering::AcqRel, Ordering::Acquire);
}

/// The process exits: under the emulator backend its connections send their FINs (or
/// RSTs) to the peers in other processes, waiting at most [`EXIT_BUDGET`] for the
/// exchanges to finish. Not in a forked child (its world is detached).
pub(crate) fn at_exit() {
    if MODE.load(Ordering::Acquire) == EMULATOR {
        arrakis_core::net::world::exit_close(EXIT_BUDGET);
    }
}

/// How long `exit` waits for the peers to answer the FINs.
const EXIT_BUDGET: std::time::Duration = std::time::Duration::from_millis(100);

/// Whether new sockets of the library OS's families go to the library OS.
pub(crate) fn serving() -> bool {
    match MODE.load(Ordering::Acquire) {
        KERNEL => false,
        EMULATOR_PENDING => {
            // Registers with the daemon and takes the NIC (or, with no daemon, logs one
            // line and leaves every socket on the kernel).
            let _g = ATTACHING.lock().unwrap_or_else(|e| e.into_inner());
            if MODE.load(Ordering::Acquire) == EMULATOR_PENDING {
                MODE.store(attach(), Ordering::Release);
            }
            MODE.load(Ordering::Acquire) != KERNEL
        }
        _ => true,
    }
}

/// The socket at `fd`, if it is one of ours.
pub(crate) fn sock(fd: c_int) -> Option<Arc<Socket>> {
    table().get(fd)?.into_any().downcast::<Socket>().ok()
}

/// The epoll instance at `fd`, if it is one of ours.
pub(crate) fn epoll(fd: c_int) -> Option<Arc<Epoll>> {
    table().get(fd)?.into_any().downcast::<Epoll>().ok()
}

fn with_sock<T: crate::Fail>(
    fd: c_int,
    call: &'static str,
    f: impl FnOnce(&Arc<Socket>) -> SysResult<T>,
) -> T {
    lib::guarded(call, || {
        let s = sock(fd).ok_or(Errno::ENOTSOCK)?;
        f(&s)
    })
}

/// A pointer no program could have meant: the null page or a kernel address. Linux answers
/// `EFAULT` for these; the library OS checks them instead of crashing. (Other unmapped user
/// addresses are not detected.)
fn bad<T>(p: *const T) -> bool {
    let a = p as usize;
    !(4096..USER_END).contains(&a)
}

/// End of the user address space on x86-64 (`TASK_SIZE_MAX` rounded).
const USER_END: usize = 0x0000_8000_0000_0000;

// ---- addresses ----------------------------------------------------------------------

/// Reads a C socket address. `Ok(None)` is `AF_UNSPEC`.
///
/// # Safety
/// `p` must point to `len` readable bytes (or be null).
unsafe fn read_sa(p: *const sockaddr, len: socklen_t) -> SysResult<Option<SocketAddr>> {
    // SAFETY: caller's contract.
    let fam = unsafe { sa_family(p, len)? };
    match fam {
        libc::AF_UNSPEC => Ok(None),
        // SAFETY: caller's contract.
        libc::AF_INET => unsafe { read_in(p, len) },
        libc::AF_INET6 => {
            // SIN6_LEN_RFC2133: the 24-byte sockaddr_in6 without sin6_scope_id is accepted.
            if (len as usize) < SIN6_LEN_RFC2133 {
                return Err(Errno::EINVAL);
            }
            let mut a: libc::sockaddr_in6 = zeroed_in6();
            // SAFETY: `len` covers at least the first 24 bytes of a sockaddr_in6, and `a` is a
            // sockaddr_in6; the copy is of the smaller of the two.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    p.cast::<u8>(),
                    (&mut a as *mut libc::sockaddr_in6).cast::<u8>(),
                    (len as usize).min(std::mem::size_of::<libc::sockaddr_in6>()),
                )
            };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Ok(Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            ))))
        }
        _ => Err(Errno::EAFNOSUPPORT),
    }
}

/// The family of a C socket address after the kernel's length and pointer checks
/// (`move_addr_to_kernel`).
///
/// # Safety
/// `p` must point to `len` readable bytes (or be null).
unsafe fn sa_family(p: *const sockaddr, len: socklen_t) -> SysResult<c_int> {
    if (len as i32) < 0 || len as usize > std::mem::size_of::<libc::sockaddr_storage>() {
        return Err(Errno::EINVAL);
    }
    if bad(p) {
        return Err(if len == 0 { Errno::EINVAL } else { Errno::EFAULT });
    }
    if (len as usize) < std::mem::size_of::<libc::sa_family_t>() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: at least the family is readable (checked length; caller's contract).
    Ok(unsafe { (*p).sa_family } as c_int)
}

/// A `sockaddr_in` of at least its size (`EINVAL` if shorter).
///
/// # Safety
/// `p` must point to `len` readable bytes.
unsafe fn read_in(p: *const sockaddr, len: socklen_t) -> SysResult<Option<SocketAddr>> {
    if (len as usize) < std::mem::size_of::<libc::sockaddr_in>() {
        return Err(Errno::EINVAL);
    }
    // SAFETY: `len` covers a sockaddr_in; read unaligned (the caller's buffer).
    let a = unsafe { p.cast::<libc::sockaddr_in>().read_unaligned() };
    let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
    Ok(Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port)))))
}

/// `SIN6_LEN_RFC2133`: a sockaddr_in6 without `sin6_scope_id`.
const SIN6_LEN_RFC2133: usize = 24;

/// An all-zero `sockaddr_in6`.
fn zeroed_in6() -> libc::sockaddr_in6 {
    libc::sockaddr_in6 {
        sin6_family: 0,
        sin6_port: 0,
        sin6_flowinfo: 0,
        sin6_addr: libc::in6_addr { s6_addr: [0; 16] },
        sin6_scope_id: 0,
    }
}

/// The destination of a datagram `sendto`/`sendmsg`, read as `udp_sendmsg` (AF_INET
/// sockets: at least a `sockaddr_in`; `AF_UNSPEC` counts as `AF_INET`) and `udpv6_sendmsg`
/// (AF_INET6 sockets: `AF_INET6` of at least 24 bytes, `AF_INET` for IPv4, `AF_UNSPEC` for
/// no address) do.
///
/// # Safety
/// `p` must point to `len` readable bytes (or be null).
unsafe fn read_dest(fam: Family, p: *const sockaddr, len: socklen_t) -> SysResult<Option<SocketAddr>> {
    // SAFETY: caller's contract.
    let af = unsafe { sa_family(p, len)? };
    // SAFETY: caller's contract.
    let v4 = || unsafe { read_in(p, len) };
    match (fam, af) {
        (Family::V4, libc::AF_INET | libc::AF_UNSPEC) => v4(),
        (Family::V4, _) => {
            if (len as usize) < std::mem::size_of::<libc::sockaddr_in>() {
                return Err(Errno::EINVAL);
            }
            Err(Errno::EAFNOSUPPORT)
        }
        (Family::V6, libc::AF_INET) => v4(),
        (Family::V6, libc::AF_UNSPEC) => Ok(None),
        // SAFETY: caller's contract.
        (Family::V6, libc::AF_INET6) => unsafe { read_sa(p, len) },
        (Family::V6, _) => Err(Errno::EINVAL),
    }
}

/// Writes a socket address as the kernel's `move_addr_to_user`: truncated to `*len`, and
/// `*len` set to the full size.
///
/// # Safety
/// `p`/`len` must be the caller's buffer and length pointer (either may be null).
unsafe fn write_sa(a: SocketAddr, p: *mut sockaddr, len: *mut socklen_t) -> SysResult<()> {
    if p.is_null() || len.is_null() {
        return Ok(());
    }
    if bad(p) || bad(len) {
        return Err(Errno::EFAULT);
    }
    // SAFETY: caller's contract.
    let have = unsafe { *len } as i32;
    if have < 0 {
        return Err(Errno::EINVAL);
    }
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let size = match a {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from(*v4.ip()).to_be() },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in.
            unsafe { std::ptr::addr_of_mut!(st).cast::<libc::sockaddr_in>().write(sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6.
            unsafe { std::ptr::addr_of_mut!(st).cast::<libc::sockaddr_in6>().write(sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let n = size.min(have as usize);
    // SAFETY: the caller's buffer holds `*len` bytes; we copy at most that many.
    unsafe {
        std::ptr::copy_nonoverlapping(std::ptr::addr_of!(st).cast::<u8>(), p.cast::<u8>(), n);
        *len = size as socklen_t;
    }
    Ok(())
}

/// The caller's iovecs, checked as the kernel's `import_iovec` does (count, total length,
/// bad bases), as `(base, len)` pairs with empty ones dropped.
///
/// # Safety
/// `iov[..cnt]` must be readable.
/// `msg_iovlen` of a `msghdr`: more than `UIO_MAXIOV` is `EMSGSIZE` (`__copy_msghdr`), where
/// `readv`/`writev` say `EINVAL`.
fn msg_iovlen(n: usize) -> SysResult<usize> {
    if n > 1024 {
        return Err(Errno::EMSGSIZE);
    }
    Ok(n)
}

unsafe fn iov_checked(iov: *const iovec, cnt: usize) -> SysResult<Vec<(*mut u8, usize)>> {
    if cnt > 1024 {
        return Err(Errno::EINVAL);
    }
    if cnt == 0 {
        return Ok(Vec::new());
    }
    if bad(iov) {
        return Err(Errno::EFAULT);
    }
    // SAFETY: caller's contract.
    let v = unsafe { std::slice::from_raw_parts(iov, cnt) };
    let mut total = 0usize;
    let mut out = Vec::with_capacity(cnt);
    for e in v {
        total = total.checked_add(e.iov_len).filter(|&t| t <= isize::MAX as usize).ok_or(Errno::EINVAL)?;
        if e.iov_len == 0 {
            continue;
        }
        if bad(e.iov_base) {
            return Err(Errno::EFAULT);
        }
        out.push((e.iov_base.cast::<u8>(), e.iov_len));
    }
    Ok(out)
}

/// The caller's iovecs as slices.
///
/// # Safety
/// `iov[..cnt]` must be readable and each describe readable memory.
unsafe fn iov_in<'a>(iov: *const iovec, cnt: usize) -> SysResult<Vec<&'a [u8]>> {
    // SAFETY: caller's contract: each iovec describes readable memory.
    Ok(unsafe { iov_checked(iov, cnt)? }
        .into_iter()
        .map(|(p, n)| unsafe { std::slice::from_raw_parts(p, n) })
        .collect())
}

/// As [`iov_in`], writable.
///
/// # Safety
/// `iov[..cnt]` must be readable and each describe writable memory.
unsafe fn iov_out<'a>(iov: *const iovec, cnt: usize) -> SysResult<Vec<&'a mut [u8]>> {
    // SAFETY: caller's contract: each iovec describes writable memory.
    Ok(unsafe { iov_checked(iov, cnt)? }
        .into_iter()
        .map(|(p, n)| unsafe { std::slice::from_raw_parts_mut(p, n) })
        .collect())
}

/// `EPIPE` on a stream socket raises `SIGPIPE` unless `MSG_NOSIGNAL`, as Linux's
/// `sk_stream_error`.
fn sigpipe<T>(s: &Socket, flags: c_int, r: SysResult<T>) -> SysResult<T> {
    if matches!(r, Err(Errno::EPIPE)) && s.sock_kind() == Kind::Stream && flags & msg::NOSIGNAL == 0 {
        // SAFETY: raising a signal at ourselves; the program's disposition applies.
        unsafe { libc::raise(libc::SIGPIPE) };
    }
    r
}

fn do_send(s: &Socket, bufs: &[&[u8]], flags: c_int, to: Option<SocketAddr>) -> SysResult<ssize_t> {
    do_send_msg(s, bufs, flags, to, &[])
}

fn do_send_msg(
    s: &Socket,
    bufs: &[&[u8]],
    flags: c_int,
    to: Option<SocketAddr>,
    control: &[u8],
) -> SysResult<ssize_t> {
    let to = if s.sock_kind() == Kind::Stream { None } else { to };
    let r = s.send_msg(bufs, flags, to, control).map(|n| n as ssize_t);
    sigpipe(s, flags, r)
}

// ---- creation -------------------------------------------------------------------------

/// `socket(2)` for the library OS: `None` if the library OS does not take this kind of socket.
pub(crate) fn socket(domain: c_int, ty: c_int, proto: c_int) -> Option<c_int> {
    if MODE.load(Ordering::Acquire) == KERNEL {
        return None;
    }
    let fam = match domain {
        libc::AF_INET => Family::V4,
        libc::AF_INET6 => Family::V6,
        _ => return None,
    };
    let base = ty & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC);
    let kind = match (base, proto) {
        (libc::SOCK_STREAM, 0 | libc::IPPROTO_TCP) => Kind::Stream,
        (libc::SOCK_DGRAM, 0 | libc::IPPROTO_UDP) => Kind::Dgram,
        _ => return None,
    };
    if ty & !(base | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
        return None;
    }
    // A pending emulator process attaches here, at its first TCP/UDP socket.
    if !serving() {
        return None;
    }
    let nonblock = ty & libc::SOCK_NONBLOCK != 0;
    let cloexec = ty & libc::SOCK_CLOEXEC != 0;
    Some(lib::guarded("socket", || {
        let ph = socket::placeholder(nonblock, cloexec)?;
        let obj = Socket::new(fam, kind, nonblock);
        install(ph, obj)
    }))
}

fn install(ph: rustix::fd::OwnedFd, obj: Arc<dyn FdObject>) -> SysResult<c_int> {
    let fd = rustix::fd::IntoRawFd::into_raw_fd(ph);
    match table().install(fd, obj) {
        Ok(stale) => {
            drop(stale);
            Ok(fd)
        }
        Err(e) => {
            real!(close(fd) else sys(libc::SYS_close, fd));
            Err(e)
        }
    }
}

/// `epoll_create*` under the loopback backend: the kernel instance becomes a library-OS
/// epoll (with our wake eventfd in it).
pub(crate) fn epoll_created(kfd: c_int) -> c_int {
    if kfd < 0 || !serving() {
        return kfd;
    }
    lib::guarded("epoll_create", || {
        let (obj, wake) = Epoll::new()?;
        let mut ev = epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: cev::WAKE_DATUM };
        // SAFETY: registering our own eventfd in the instance the kernel just created.
        let r = unsafe { real_epoll_ctl(kfd, libc::EPOLL_CTL_ADD, wake, &mut ev) };
        if r < 0 {
            let e = Errno(crate::errno::get());
            real!(close(kfd) else sys(libc::SYS_close, kfd));
            return Err(e);
        }
        // Over the emulator's NIC, its doorbell too (edge-triggered: a wake-up per ring;
        // EPOLLEXCLUSIVE: one thread asleep on one instance is woken, not every thread of a
        // program with many, as memcached's workers each have one).
        // Failing only costs the direct wake-up (the progress thread still takes frames).
        if let Some(bell) = arrakis_core::net::world::device_doorbell() {
            if add_bell(kfd, bell) {
                obj.bell_registered();
            }
        }
        match table().install(kfd, obj) {
            Ok(stale) => {
                drop(stale);
                Ok(kfd)
            }
            // Too high a number for the table: it stays a plain kernel epoll.
            Err(_) => Ok(kfd),
        }
    })
}

/// Registers the NIC's doorbell `bell` in the kernel epoll instance `kfd`, as every
/// library-OS instance holds it (see `epoll_created`).
fn add_bell(kfd: c_int, bell: c_int) -> bool {
    let flags = libc::EPOLLIN | libc::EPOLLET | libc::EPOLLEXCLUSIVE;
    let mut ev = epoll_event { events: flags as u32, u64: cev::DEVICE_DATUM };
    // SAFETY: an eventfd of ours into an epoll instance of ours; the event is ours.
    unsafe { real_epoll_ctl(kfd, libc::EPOLL_CTL_ADD, bell, &mut ev) == 0 }
}

/// # Safety
/// The C contract of `epoll_ctl(2)`.
unsafe fn real_epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
    real!(epoll_ctl(epfd, op, fd, ev) else sys(libc::SYS_epoll_ctl, epfd, op, fd, ev))
}

/// `accept`/`accept4` on a library-OS listener.
///
/// # Safety
/// `addr`/`len` as `accept(2)`.
pub(crate) unsafe fn accept4(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t, flags: c_int) -> c_int {
    with_sock(fd, "accept", |s| {
        if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
            return Err(Errno::EINVAL);
        }
        if s.sock_kind() != Kind::Stream {
            return Err(Errno::EOPNOTSUPP);
        }
        let nb = flags & libc::SOCK_NONBLOCK != 0;
        let cloexec = flags & libc::SOCK_CLOEXEC != 0;
        let (new, peer) = s.accept(nb, cloexec)?;
        // SAFETY: caller's buffers.
        unsafe { write_sa(peer, addr, len)? };
        match new {
            socket::Accepted::Lib(new) => {
                let ph = socket::placeholder(nb, cloexec)?;
                install(ph, new)
            }
            // A kernel client: the fd is a plain kernel socket, at the number the kernel chose.
            socket::Accepted::Kernel(fd) => {
                let fd = rustix::fd::IntoRawFd::into_raw_fd(fd);
                drop(table().kernel_fd_created(fd));
                Ok(fd)
            }
        }
    })
}

// ---- socket calls -------------------------------------------------------------------

/// # Safety
/// The C contract of `bind(2)`.
pub(crate) unsafe fn bind(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    /// `bind` moved the socket to the kernel: the real `bind` answers.
    const TO_KERNEL: c_int = 1;
    // SAFETY: caller's contract.
    if unsafe { handed_to_kernel(fd, addr, len, false) } {
        return real!(bind(fd, addr, len) else sys(libc::SYS_bind, fd, addr, len));
    }
    let r = with_sock(fd, "bind", |s| {
        // inet6_bind: the length first, then the family.
        if s.family() == Family::V6 && (len as usize) < SIN6_LEN_RFC2133 && !bad(addr) {
            return Err(Errno::EINVAL);
        }
        // SAFETY: caller's contract.
        let a = unsafe { read_sa(addr, len)? };
        if s.family() == Family::V6 && matches!(a, Some(SocketAddr::V4(_))) {
            return Err(Errno::EAFNOSUPPORT);
        }
        let a = match a {
            Some(a) => a,
            // AF_UNSPEC with INADDR_ANY is accepted as AF_INET by Linux.
            None if s.family() == Family::V4 => SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
            None => return Err(Errno::EAFNOSUPPORT),
        };
        match s.bind_granted(a)? {
            socket::BindTo::Library => Ok(0),
            socket::BindTo::Kernel(why) => {
                // The daemon cannot give the port: the kernel takes the socket and the bind.
                let h = s.kernel_handover()?.ok_or(Errno::EADDRNOTAVAIL)?;
                hand_over(fd, s, &h)?;
                tracing::warn!(fd, addr = %a, "socket handed to the kernel: no grant for its port ({why})");
                Ok(TO_KERNEL)
            }
        }
    });
    if r == TO_KERNEL {
        return real!(bind(fd, addr, len) else sys(libc::SYS_bind, fd, addr, len));
    }
    r
}

/// # Safety
/// The C contract of `listen(2)`.
pub(crate) unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    with_sock(fd, "listen", |s| s.listen(backlog).map(|()| 0))
}

/// # Safety
/// The C contract of `connect(2)`.
pub(crate) unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: caller's contract.
    if unsafe { handed_to_kernel(fd, addr, len, true) } {
        return real!(connect(fd, addr, len) else sys(libc::SYS_connect, fd, addr, len));
    }
    with_sock(fd, "connect", |s| {
        // tcp_v6_connect wants an AF_INET6 address's length even for another family (UDP
        // takes an AF_INET address on an AF_INET6 socket).
        if s.family() == Family::V6
            && s.sock_kind() == Kind::Stream
            && (len as usize) < SIN6_LEN_RFC2133
            && !bad(addr)
            && (len as usize) >= std::mem::size_of::<libc::sa_family_t>()
            // SAFETY: the family is readable (checked length; caller's contract).
            && unsafe { (*addr).sa_family } as c_int != libc::AF_UNSPEC
        {
            return Err(Errno::EINVAL);
        }
        // SAFETY: caller's contract.
        let a = unsafe { read_sa(addr, len)? };
        if let Some(a) = a {
            if !socket::serves(&a) {
                return Err(Errno::ENETUNREACH);
            }
        }
        s.connect(a).map(|()| 0)
    })
}

/// A socket of ours addressed to a peer the library OS does not serve (a name server, a
/// host elsewhere; under the emulator backend also a port of this host that no container
/// serves, e.g. a server not under the shim): if it has no life here yet, a kernel socket
/// takes its place — same family, type, flags, options and bound address, `dup3` onto the
/// same fd number — and the call goes to the kernel. Returns whether that happened. A
/// socket that cannot move (listening, connected, in an epoll) stays and the call fails as
/// before. `peer`: `addr` is a destination (`connect`, `sendto`), not a local address.
///
/// # Safety
/// `addr`/`len` as the caller passed them.
unsafe fn handed_to_kernel(fd: c_int, addr: *const sockaddr, len: socklen_t, peer: bool) -> bool {
    let Some(s) = sock(fd) else { return false };
    if addr.is_null() {
        return false;
    }
    // SAFETY: caller's contract.
    let Ok(Some(to)) = (unsafe { read_sa(addr, len) }) else { return false };
    let here = if peer {
        lib::guarded("connect", || Ok(i32::from(s.serves_peer(&to)))) == 1
    } else {
        socket::serves(&to)
    };
    if here {
        return false;
    }
    let r = lib::guarded("handover", || {
        let Some(h) = s.kernel_handover()? else { return Ok(0) };
        hand_over(fd, &s, &h)?;
        tracing::info!(fd, peer = %to, "socket handed to the kernel: nothing under the library OS serves that address");
        Ok(1)
    });
    r == 1
}

fn hand_over(fd: c_int, s: &Socket, h: &socket::Handover) -> SysResult<()> {
    let dom = if s.family() == Family::V4 { libc::AF_INET } else { libc::AF_INET6 };
    let ty = if s.sock_kind() == Kind::Stream { libc::SOCK_STREAM } else { libc::SOCK_DGRAM };
    let raw = |r: libc::c_long| if r < 0 { Err(Errno(crate::errno::get())) } else { Ok(r) };
    // SAFETY: raw system calls on a new fd of our own; the option bytes are ours.
    unsafe {
        let k = raw(libc::syscall(libc::SYS_socket, dom, ty | libc::SOCK_CLOEXEC, 0))? as c_int;
        let done = (|| -> SysResult<()> {
            for (level, name, v) in &h.options {
                // An option the kernel refuses was accepted by us: keep going, as the
                // program saw success.
                let _ =
                    libc::syscall(libc::SYS_setsockopt, k, *level, *name, v.as_ptr(), v.len() as socklen_t);
            }
            if let Some(b) = h.bound {
                let mut ss: libc::sockaddr_storage = std::mem::zeroed();
                let mut sl = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
                write_sa(b, (&mut ss as *mut libc::sockaddr_storage).cast(), &mut sl)?;
                raw(libc::syscall(libc::SYS_bind, k, &ss as *const libc::sockaddr_storage, sl))?;
            }
            if s.nonblocking() {
                raw(libc::syscall(libc::SYS_fcntl, k, libc::F_SETFL, libc::O_NONBLOCK))?;
            }
            let fdflags = raw(libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD))?;
            let cloexec =
                if fdflags & libc::c_long::from(libc::FD_CLOEXEC) != 0 { libc::O_CLOEXEC } else { 0 };
            raw(libc::syscall(libc::SYS_dup3, k, fd, cloexec))?;
            Ok(())
        })();
        libc::syscall(libc::SYS_close, k);
        done?;
    }
    // The fd number is a kernel socket now; our socket goes (its port with it).
    drop(table().remove(fd));
    Ok(())
}

/// # Safety
/// The C contract of `shutdown(2)`.
pub(crate) unsafe fn shutdown(fd: c_int, how: c_int) -> c_int {
    with_sock(fd, "shutdown", |s| s.shutdown(how).map(|()| 0))
}

/// # Safety
/// The C contract of `getsockname(2)`.
pub(crate) unsafe fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    with_sock(fd, "getsockname", |s| {
        let a = s.local_addr()?;
        // SAFETY: caller's buffers.
        unsafe { write_sa(a, addr, len)? };
        Ok(0)
    })
}

/// # Safety
/// The C contract of `getpeername(2)`.
pub(crate) unsafe fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    with_sock(fd, "getpeername", |s| {
        let a = s.peer_addr()?;
        // SAFETY: caller's buffers.
        unsafe { write_sa(a, addr, len)? };
        Ok(0)
    })
}

/// # Safety
/// The C contract of `getsockopt(2)`.
pub(crate) unsafe fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    with_sock(fd, "getsockopt", |s| {
        if bad(len) {
            return Err(Errno::EFAULT);
        }
        // SAFETY: caller's contract.
        let have = unsafe { *len } as i32;
        if have < 0 {
            return Err(Errno::EINVAL);
        }
        let v = s.getsockopt(level, name)?;
        let n = v.len().min(have as usize);
        if n > 0 && bad(val) {
            return Err(Errno::EFAULT);
        }
        // SAFETY: the caller's buffer holds `*len` bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), val.cast::<u8>(), n);
            *len = n as socklen_t;
        }
        Ok(0)
    })
}

/// # Safety
/// The C contract of `setsockopt(2)`.
pub(crate) unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    val: *const c_void,
    len: socklen_t,
) -> c_int {
    with_sock(fd, "setsockopt", |s| {
        if (len as i32) < 0 {
            return Err(Errno::EINVAL);
        }
        let bytes: &[u8] = if len == 0 {
            &[]
        } else if bad(val) {
            return Err(Errno::EFAULT);
        } else {
            // SAFETY: the caller's option value of `len` bytes.
            unsafe { std::slice::from_raw_parts(val.cast::<u8>(), len as usize) }
        };
        s.setsockopt(level, name, bytes).map(|()| 0)
    })
}

/// # Safety
/// The C contract of `sendto(2)`.
pub(crate) unsafe fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: size_t,
    flags: c_int,
    addr: *const sockaddr,
    alen: socklen_t,
) -> ssize_t {
    // SAFETY: caller's contract.
    if unsafe { handed_to_kernel(fd, addr, alen, true) } {
        return real!(sendto(fd, buf, n, flags, addr, alen) else sys(libc::SYS_sendto, fd, buf, n, flags, addr, alen));
    }
    with_sock(fd, "sendto", |s| {
        let to = if addr.is_null() {
            None
        } else if s.sock_kind() == Kind::Stream {
            // SAFETY: caller's contract.
            unsafe { read_sa(addr, alen)? }
        } else {
            // SAFETY: caller's contract.
            unsafe { read_dest(s.family(), addr, alen)? }
        };
        let data: &[u8] = if n == 0 {
            &[]
        } else if bad(buf) {
            return Err(Errno::EFAULT);
        } else {
            // SAFETY: the caller's buffer of `n` bytes.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), n) }
        };
        do_send(s, &[data], flags, to)
    })
}

/// # Safety
/// The C contract of `send(2)`.
pub(crate) unsafe fn send(fd: c_int, buf: *const c_void, n: size_t, flags: c_int) -> ssize_t {
    // SAFETY: same contract.
    unsafe { sendto(fd, buf, n, flags, std::ptr::null(), 0) }
}

/// # Safety
/// The C contract of `sendmsg(2)`.
pub(crate) unsafe fn sendmsg(fd: c_int, m: *const msghdr, flags: c_int) -> ssize_t {
    // SAFETY: caller's contract (the header is read only if it looks valid).
    if !bad(m) && unsafe { handed_to_kernel(fd, (*m).msg_name.cast(), (*m).msg_namelen, true) } {
        return real!(sendmsg(fd, m, flags) else sys(libc::SYS_sendmsg, fd, m, flags));
    }
    with_sock(fd, "sendmsg", |s| {
        // SAFETY: caller's contract.
        unsafe { sendmsg_one(s, m, flags) }
    })
}

/// # Safety
/// `m` as `sendmsg(2)`.
unsafe fn sendmsg_one(s: &Socket, m: *const msghdr, flags: c_int) -> SysResult<ssize_t> {
    if bad(m) {
        return Err(Errno::EFAULT);
    }
    // SAFETY: caller's contract.
    let m = unsafe { &*m };
    // copy_msghdr_from_user: more than UIO_MAXIOV iovecs is EMSGSIZE here (EINVAL for writev).
    if m.msg_iovlen > 1024 {
        return Err(Errno::EMSGSIZE);
    }
    let to = if m.msg_name.is_null() || m.msg_namelen == 0 {
        None
    } else if s.sock_kind() == Kind::Stream {
        // SAFETY: the caller's name buffer.
        unsafe { read_sa(m.msg_name.cast(), m.msg_namelen)? }
    } else {
        // SAFETY: the caller's name buffer.
        unsafe { read_dest(s.family(), m.msg_name.cast(), m.msg_namelen)? }
    };
    // SAFETY: the caller's iovecs.
    let bufs = unsafe { iov_in(m.msg_iov, msg_iovlen(m.msg_iovlen)?)? };
    // ____sys_sendmsg: the control buffer is copied in after the iovecs were checked.
    if m.msg_controllen > i32::MAX as usize {
        return Err(Errno::ENOBUFS);
    }
    let control: &[u8] = if m.msg_controllen == 0 {
        &[]
    } else if bad(m.msg_control) {
        return Err(Errno::EFAULT);
    } else {
        // SAFETY: the caller's control buffer of `msg_controllen` bytes.
        unsafe { std::slice::from_raw_parts(m.msg_control.cast::<u8>(), m.msg_controllen) }
    };
    do_send_msg(s, &bufs, flags, to, control)
}

/// # Safety
/// The C contract of `sendmmsg(2)`.
pub(crate) unsafe fn sendmmsg(fd: c_int, vec: *mut mmsghdr, vlen: c_uint, flags: c_int) -> c_int {
    with_sock(fd, "sendmmsg", |s| {
        let vlen = vlen.min(1024) as usize;
        let mut done = 0;
        for i in 0..vlen {
            // SAFETY: the caller's vector of `vlen` entries.
            let e = unsafe { &mut *vec.add(i) };
            // SAFETY: as sendmsg.
            match unsafe { sendmsg_one(s, &e.msg_hdr, flags) } {
                Ok(n) => {
                    e.msg_len = n as c_uint;
                    done += 1;
                }
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    })
}

/// # Safety
/// The C contract of `recvfrom(2)`.
pub(crate) unsafe fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    with_sock(fd, "recvfrom", |s| {
        if s.sock_kind() == Kind::Stream && flags & msg::TRUNC != 0 {
            // TCP's MSG_TRUNC discards the bytes: the buffer is never touched.
            let mut scratch = vec![0u8; n.min(1 << 20)];
            return Ok(s.recv(&mut [&mut scratch[..]], flags)?.n as ssize_t);
        }
        let data: &mut [u8] = if n == 0 {
            &mut []
        } else if bad(buf) {
            return Err(Errno::EFAULT);
        } else {
            // SAFETY: the caller's buffer of `n` bytes.
            unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), n) }
        };
        let r = s.recv(&mut [data], flags)?;
        if let Some(from) = r.from {
            // SAFETY: caller's buffers.
            unsafe { write_sa(from, addr, alen)? };
        } else if !addr.is_null() && !bad(alen) {
            // A stream socket has no source address to give: the length becomes 0.
            // SAFETY: the caller's length.
            unsafe { *alen = 0 };
        }
        Ok(r.n as ssize_t)
    })
}

/// # Safety
/// The C contract of `recv(2)`.
pub(crate) unsafe fn recv(fd: c_int, buf: *mut c_void, n: size_t, flags: c_int) -> ssize_t {
    // SAFETY: same contract.
    unsafe { recvfrom(fd, buf, n, flags, std::ptr::null_mut(), std::ptr::null_mut()) }
}

/// # Safety
/// The C contract of `__recv_chk`.
pub(crate) unsafe fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { recv(fd, buf, n, flags) }
}

/// # Safety
/// The C contract of `__recvfrom_chk`.
pub(crate) unsafe fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: size_t,
    buflen: size_t,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { recvfrom(fd, buf, n, flags, addr, alen) }
}

fn chk_fail() -> ! {
    extern "C" {
        fn __chk_fail() -> !;
    }
    // SAFETY: glibc's buffer-overflow abort, as the fortified function would call.
    unsafe { __chk_fail() }
}

/// # Safety
/// `m` as `recvmsg(2)`.
unsafe fn recvmsg_one(s: &Socket, m: *mut msghdr, flags: c_int) -> SysResult<ssize_t> {
    if bad(m) {
        return Err(Errno::EFAULT);
    }
    // SAFETY: caller's contract.
    let m = unsafe { &mut *m };
    // SAFETY: the caller's iovecs.
    let mut bufs = unsafe { iov_out(m.msg_iov, msg_iovlen(m.msg_iovlen)?)? };
    let r = s.recv(&mut bufs, flags)?;
    m.msg_flags = r.flags;
    // put_cmsg: what fits of each control message; msg_controllen becomes what was used.
    let room = if m.msg_control.is_null() { 0 } else { m.msg_controllen };
    let ctl = arrakis_core::net::cmsg::encode(&r.cmsgs, room);
    for (at, bytes) in &ctl.writes {
        if bad(m.msg_control) {
            return Err(Errno::EFAULT);
        }
        // SAFETY: `encode` keeps every write within `room` = the caller's `msg_controllen`
        // bytes at `msg_control`.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), m.msg_control.cast::<u8>().add(*at), bytes.len())
        };
    }
    if ctl.truncated {
        m.msg_flags |= libc::MSG_CTRUNC;
    }
    m.msg_controllen = ctl.used;
    match r.from {
        Some(from) if !m.msg_name.is_null() => {
            // SAFETY: the caller's name buffer and its length field.
            unsafe { write_sa(from, m.msg_name.cast(), &mut m.msg_namelen)? };
        }
        _ => m.msg_namelen = 0,
    }
    Ok(r.n as ssize_t)
}

/// `recvmsg` on a library-OS socket.
///
/// # Safety
/// The C contract of `recvmsg(2)`.
pub(crate) unsafe fn recvmsg(fd: c_int, m: *mut msghdr, flags: c_int) -> ssize_t {
    with_sock(fd, "recvmsg", |s| {
        // SAFETY: caller's contract.
        unsafe { recvmsg_one(s, m, flags) }
    })
}

/// `recvmmsg` on a library-OS socket.
///
/// # Safety
/// The C contract of `recvmmsg(2)`.
pub(crate) unsafe fn recvmmsg(
    fd: c_int,
    vec: *mut mmsghdr,
    vlen: c_uint,
    flags: c_int,
    _t: *mut timespec,
) -> c_int {
    with_sock(fd, "recvmmsg", |s| {
        let vlen = vlen.min(1024) as usize;
        let mut done = 0;
        let wait_first = flags & libc::MSG_WAITFORONE != 0;
        let mut f = flags & !libc::MSG_WAITFORONE;
        for i in 0..vlen {
            // SAFETY: the caller's vector of `vlen` entries.
            let e = unsafe { &mut *vec.add(i) };
            // SAFETY: as recvmsg.
            match unsafe { recvmsg_one(s, &mut e.msg_hdr, f) } {
                Ok(n) => {
                    e.msg_len = n as c_uint;
                    done += 1;
                    if wait_first {
                        f |= libc::MSG_DONTWAIT;
                    }
                }
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    })
}

// ---- read/write family ------------------------------------------------------------------

/// # Safety
/// The C contract of `read(2)`.
pub(crate) unsafe fn read(fd: c_int, buf: *mut c_void, n: size_t) -> ssize_t {
    if epoll(fd).is_some() {
        return crate::errno::fail(Errno::EINVAL);
    }
    if n == 0 && sock(fd).is_some() {
        // sock_read_iter: an empty read returns 0 before the protocol sees it.
        return 0;
    }
    // SAFETY: same contract.
    unsafe { recv(fd, buf, n, 0) }
}

/// # Safety
/// The C contract of `write(2)`.
pub(crate) unsafe fn write(fd: c_int, buf: *const c_void, n: size_t) -> ssize_t {
    if epoll(fd).is_some() {
        return crate::errno::fail(Errno::EINVAL);
    }
    // SAFETY: same contract.
    unsafe { send(fd, buf, n, 0) }
}

/// `sendfile(2)` to a library-OS socket from a kernel file: the file is read with `pread`
/// (or `read` at its position) in pieces and each piece sent; the offset (or the file
/// position) advances by what the socket took. Blocking follows the socket's `O_NONBLOCK`,
/// as Linux's splice to a socket does, and a reset peer raises `SIGPIPE`.
///
/// # Safety
/// `off` is null or points to the caller's offset.
pub(crate) unsafe fn sendfile(out_fd: c_int, in_fd: c_int, off: *mut i64, n: size_t) -> ssize_t {
    if crate::vfs::is_file(in_fd) || crate::vfs::is_file(out_fd) {
        // Callers (cp, cat) fall back to read/write.
        return crate::errno::fail(Errno::EINVAL);
    }
    if sock(in_fd).is_some() || epoll(in_fd).is_some() {
        // do_sendfile: an offset needs FMODE_PREAD (ESPIPE), and the input must be a regular
        // file or a block device (EINVAL).
        return crate::errno::fail(if off.is_null() { Errno::EINVAL } else { Errno::ESPIPE });
    }
    with_sock(out_fd, "sendfile", |s| {
        if !off.is_null() && bad(off) {
            return Err(Errno::EFAULT);
        }
        // SAFETY: checked above; the caller's offset.
        let mut pos: Option<i64> = if off.is_null() { None } else { Some(unsafe { off.read_unaligned() }) };
        if pos.is_some_and(|p| p < 0) {
            return Err(Errno::EINVAL);
        }
        let want = n.min(0x7fff_f000);
        let mut buf = vec![0u8; want.clamp(1, 1 << 16)];
        let mut done = 0usize;
        while done < want {
            let chunk = (want - done).min(buf.len());
            let got = match pos {
                // SAFETY: our buffer of at least `chunk` bytes.
                Some(p) => unsafe { libc::pread64(in_fd, buf.as_mut_ptr().cast(), chunk, p) },
                // SAFETY: as above.
                None => unsafe { libc::read(in_fd, buf.as_mut_ptr().cast(), chunk) },
            };
            if got < 0 {
                let e = Errno(crate::errno::get());
                return if done > 0 { Ok(done as ssize_t) } else { Err(e) };
            }
            let got = got as usize;
            if got == 0 {
                break;
            }
            let flags = if done > 0 { msg::DONTWAIT } else { 0 };
            let sent = match do_send(s, &[&buf[..got]], flags, None) {
                Ok(k) => k as usize,
                Err(Errno::EAGAIN) if done > 0 => 0,
                Err(e) => {
                    if pos.is_none() {
                        // Give back what was read and not sent.
                        // SAFETY: plain lseek on the caller's fd.
                        unsafe { libc::lseek64(in_fd, -(got as i64), libc::SEEK_CUR) };
                    }
                    return if done > 0 { Ok(done as ssize_t) } else { Err(e) };
                }
            };
            done += sent;
            match pos.as_mut() {
                Some(p) => *p += sent as i64,
                None if sent < got => {
                    // SAFETY: plain lseek on the caller's fd.
                    unsafe { libc::lseek64(in_fd, -((got - sent) as i64), libc::SEEK_CUR) };
                }
                None => {}
            }
            if sent < got {
                break;
            }
        }
        if let Some(p) = pos {
            // SAFETY: checked above.
            unsafe { off.write_unaligned(p) };
        }
        Ok(done as ssize_t)
    })
}

/// # Safety
/// The C contract of `readv(2)`.
pub(crate) unsafe fn readv(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    with_sock(fd, "readv", |s| {
        let cnt = usize::try_from(cnt).map_err(|_| Errno::EINVAL)?;
        // SAFETY: the caller's iovecs.
        let mut bufs = unsafe { iov_out(iov, cnt)? };
        if bufs.is_empty() {
            // sock_read_iter: nothing to read returns 0 before the protocol sees it.
            return Ok(0);
        }
        Ok(s.recv(&mut bufs, 0)?.n as ssize_t)
    })
}

/// # Safety
/// The C contract of `writev(2)`.
pub(crate) unsafe fn writev(fd: c_int, iov: *const iovec, cnt: c_int) -> ssize_t {
    with_sock(fd, "writev", |s| {
        let cnt = usize::try_from(cnt).map_err(|_| Errno::EINVAL)?;
        // SAFETY: the caller's iovecs.
        let bufs = unsafe { iov_in(iov, cnt)? };
        do_send(s, &bufs, 0, None)
    })
}

/// # Safety
/// The C contract of `__read_chk`.
pub(crate) unsafe fn __read_chk(fd: c_int, buf: *mut c_void, n: size_t, buflen: size_t) -> ssize_t {
    if n > buflen {
        chk_fail();
    }
    // SAFETY: same contract.
    unsafe { read(fd, buf, n) }
}

/// Calls a socket or epoll cannot serve, with Linux's errno for them.
macro_rules! refuse {
    ($($name:ident ( $($a:ident : $t:ty),* ) -> $ret:ty = $e:ident;)*) => {$(
        /// Linux's answer for a socket or epoll fd.
        ///
        /// # Safety
        /// None beyond the C contract; no pointer is touched.
        pub(crate) unsafe fn $name($($a: $t),*) -> $ret {
            $(let _ = $a;)*
            crate::errno::fail(Errno::$e)
        }
    )*};
}

refuse! {
    pread(fd: c_int, b: *mut c_void, n: size_t, o: off_t) -> ssize_t = ESPIPE;
    pread64(fd: c_int, b: *mut c_void, n: size_t, o: off64_t) -> ssize_t = ESPIPE;
    pwrite(fd: c_int, b: *const c_void, n: size_t, o: off_t) -> ssize_t = ESPIPE;
    pwrite64(fd: c_int, b: *const c_void, n: size_t, o: off64_t) -> ssize_t = ESPIPE;
    preadv(fd: c_int, v: *const iovec, c: c_int, o: off_t) -> ssize_t = ESPIPE;
    preadv64(fd: c_int, v: *const iovec, c: c_int, o: off64_t) -> ssize_t = ESPIPE;
    pwritev(fd: c_int, v: *const iovec, c: c_int, o: off_t) -> ssize_t = ESPIPE;
    pwritev64(fd: c_int, v: *const iovec, c: c_int, o: off64_t) -> ssize_t = ESPIPE;
    preadv2(fd: c_int, v: *const iovec, c: c_int, o: off_t, f: c_int) -> ssize_t = ESPIPE;
    preadv64v2(fd: c_int, v: *const iovec, c: c_int, o: off64_t, f: c_int) -> ssize_t = ESPIPE;
    pwritev2(fd: c_int, v: *const iovec, c: c_int, o: off_t, f: c_int) -> ssize_t = ESPIPE;
    pwritev64v2(fd: c_int, v: *const iovec, c: c_int, o: off64_t, f: c_int) -> ssize_t = ESPIPE;
    __pread_chk(fd: c_int, b: *mut c_void, n: size_t, o: off_t, l: size_t) -> ssize_t = ESPIPE;
    __pread64_chk(fd: c_int, b: *mut c_void, n: size_t, o: off64_t, l: size_t) -> ssize_t = ESPIPE;
    lseek(fd: c_int, o: off_t, w: c_int) -> off_t = ESPIPE;
    lseek64(fd: c_int, o: off64_t, w: c_int) -> off64_t = ESPIPE;
    fsync(fd: c_int) -> c_int = EINVAL;
    fdatasync(fd: c_int) -> c_int = EINVAL;
    ftruncate(fd: c_int, l: off_t) -> c_int = EINVAL;
    ftruncate64(fd: c_int, l: off64_t) -> c_int = EINVAL;
}

/// `fdopendir` on a socket: Linux says `ENOTDIR`.
///
/// # Safety
/// None: no pointer is touched.
pub(crate) unsafe fn fdopendir(_fd: c_int) -> *mut DIR {
    crate::errno::fail(Errno::ENOTDIR)
}

/// `fdopen` on a library-OS socket or epoll: a stdio stream whose reads and writes go
/// through the shim's own `read`/`write` (glibc's `fopencookie`, as for files on volumes;
/// stdio's own I/O would reach the placeholder behind the library OS's back). These fds are
/// open for reading and writing, so every valid mode fits, as natively; a bad mode is
/// `EINVAL`. `fileno` gives `fd` back and `fclose` closes it.
///
/// # Safety
/// `mode` must be a NUL-terminated string.
pub(crate) unsafe fn fdopen(fd: c_int, mode: *const c_char) -> *mut FILE {
    lib::guarded("fdopen", || {
        if table().get(fd).is_none() {
            return Err(Errno::EBADF);
        }
        // SAFETY: caller's contract.
        crate::vfs::fopen_flags(unsafe { crate::vfs::cpath(mode)? })?;
        // SAFETY: caller's contract.
        unsafe { crate::vfs::stream(fd, mode) }
    })
}

/// `fstat` of a socket: the placeholder's stat, typed as a socket.
///
/// # Safety
/// The C contract of `fstat(2)`.
pub(crate) unsafe fn fstat(fd: c_int, buf: *mut Stat) -> c_int {
    let r = real!(fstat(fd, buf) else sys(libc::SYS_fstat, fd, buf));
    if r == 0 && sock(fd).is_some() {
        // SAFETY: the kernel just filled the caller's struct stat.
        unsafe {
            let st = buf.cast::<libc::stat>();
            (*st).st_mode = libc::S_IFSOCK | 0o777;
            (*st).st_size = 0;
        }
    }
    r
}

/// # Safety
/// The C contract of `fstat64`.
pub(crate) unsafe fn fstat64(fd: c_int, buf: *mut Stat) -> c_int {
    // SAFETY: same layout on x86_64.
    unsafe { fstat(fd, buf) }
}

/// # Safety
/// The C contract of `__fxstat`.
pub(crate) unsafe fn __fxstat(_ver: c_int, fd: c_int, buf: *mut Stat) -> c_int {
    // SAFETY: same layout on x86_64 (version 1).
    unsafe { fstat(fd, buf) }
}

/// # Safety
/// The C contract of `__fxstat64`.
pub(crate) unsafe fn __fxstat64(_ver: c_int, fd: c_int, buf: *mut Stat) -> c_int {
    // SAFETY: as above.
    unsafe { fstat(fd, buf) }
}

// ---- fcntl / ioctl ---------------------------------------------------------------------

/// `fcntl` on a library-OS fd: the placeholder carries the file status flags and
/// `FD_CLOEXEC`; `O_NONBLOCK` is mirrored into the object.
pub(crate) fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_ulong, r: c_int) -> c_int {
    if r >= 0 && cmd == libc::F_SETFL {
        if let Some(s) = sock(fd) {
            s.set_nonblocking(arg as c_int & libc::O_NONBLOCK != 0);
        }
    }
    r
}

/// `ioctl` on a library-OS fd.
///
/// # Safety
/// The C contract of `ioctl(2)`.
pub(crate) unsafe fn ioctl(fd: c_int, request: libc::c_ulong, arg: libc::c_ulong) -> c_int {
    if crate::vfs::is_file(fd) {
        return crate::vfs::ioctl(fd, request, arg);
    }
    let Some(s) = sock(fd) else {
        return real!(ioctl(fd, request, arg) else sys(libc::SYS_ioctl, fd, request, arg));
    };
    let out = arg as *mut c_int;
    lib::guarded("ioctl", || match request {
        libc::FIONBIO => {
            if out.is_null() {
                return Err(Errno::EFAULT);
            }
            // SAFETY: the caller's int.
            let on = unsafe { *out } != 0;
            let r = real!(ioctl(fd, request, arg) else sys(libc::SYS_ioctl, fd, request, arg));
            if r < 0 {
                return Err(Errno(crate::errno::get()));
            }
            s.set_nonblocking(on);
            Ok(0)
        }
        libc::FIONREAD | libc::TIOCOUTQ | SIOCOUTQNSD => {
            if out.is_null() {
                return Err(Errno::EFAULT);
            }
            let n = match request {
                libc::FIONREAD => s.pending_in()?,
                libc::TIOCOUTQ => s.pending_out()?,
                _ => s.unsent()?,
            };
            // SAFETY: the caller's int.
            unsafe { *out = n.min(c_int::MAX as usize) as c_int };
            Ok(0)
        }
        libc::FIOCLEX | libc::FIONCLEX | libc::FIOASYNC => {
            let r = real!(ioctl(fd, request, arg) else sys(libc::SYS_ioctl, fd, request, arg));
            if r < 0 {
                Err(Errno(crate::errno::get()))
            } else {
                Ok(r)
            }
        }
        _ => Err(Errno::ENOTTY),
    })
}

/// `SIOCOUTQNSD`: bytes queued but not yet sent.
const SIOCOUTQNSD: libc::Ioctl = 0x894B;

// ---- epoll ------------------------------------------------------------------------------

/// `epoll_ctl` where the instance or the target is ours.
///
/// # Safety
/// The C contract of `epoll_ctl(2)`.
pub(crate) unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: *mut epoll_event) -> c_int {
    let ep = epoll(epfd);
    let target = sock(fd);
    lib::guarded("epoll_ctl", || {
        let op_ = match op {
            libc::EPOLL_CTL_ADD => Op::Add,
            libc::EPOLL_CTL_DEL => Op::Del,
            libc::EPOLL_CTL_MOD => Op::Mod,
            _ => return Err(Errno::EINVAL),
        };
        let (events, data) = if op_ == Op::Del {
            (0, 0)
        } else {
            if bad(ev) {
                return Err(Errno::EFAULT);
            }
            // SAFETY: the caller's event (packed on x86_64: read unaligned).
            let e = unsafe { ev.read_unaligned() };
            (e.events, e.u64)
        };
        let Some(ep) = ep else {
            if sock(epfd).is_some() {
                return Err(Errno::EINVAL);
            }
            // A kernel epoll (not ours: created before the backend or too high a number)
            // cannot watch a library-OS socket.
            if target.is_some() {
                return Err(Errno::EPERM);
            }
            // SAFETY: caller's contract.
            return kernel_ctl(unsafe { real_epoll_ctl(epfd, op, fd, ev) });
        };
        if epfd == fd {
            return Err(Errno::EINVAL);
        }
        match target {
            Some(s) => ep.ctl(op_, fd, Target::Socket(&s), events, data).map(|()| 0),
            None => {
                // A kernel fd (or another epoll of ours, nested through the kernel).
                // SAFETY: caller's contract.
                let r = kernel_ctl(unsafe { real_epoll_ctl(epfd, op, fd, ev) })?;
                if let Some(inner) = epoll(fd) {
                    inner.set_nested();
                }
                ep.ctl(op_, fd, Target::Kernel, events, data)?;
                Ok(r)
            }
        }
    })
}

fn kernel_ctl(r: c_int) -> SysResult<c_int> {
    if r < 0 {
        Err(Errno(crate::errno::get()))
    } else {
        Ok(r)
    }
}

/// Strips our wake events from what the kernel returned; returns how many remain.
///
/// # Safety
/// `evs[..n]` must be initialised.
unsafe fn strip_wake(evs: *mut epoll_event, n: usize) -> (usize, bool) {
    let mut keep = 0;
    let mut woke = false;
    for i in 0..n {
        // SAFETY: within the caller's initialised events.
        let e = unsafe { evs.add(i).read_unaligned() };
        if e.u64 == cev::WAKE_DATUM || e.u64 == cev::DEVICE_DATUM {
            woke = true;
            continue;
        }
        // SAFETY: keep <= i < n.
        unsafe { evs.add(keep).write_unaligned(e) };
        keep += 1;
    }
    (keep, woke)
}

/// Takes the device's doorbell out of the kernel instance `epfd`, or puts it back, as
/// `Epoll::bell_woke` asks.
fn bell_change(ep: &Epoll, epfd: c_int, change: cev::BellChange) {
    let Some(bell) = arrakis_core::net::world::device_doorbell() else { return };
    match change {
        cev::BellChange::Keep => {}
        cev::BellChange::Drop => {
            tracing::debug!(
                epfd,
                "epoll gives up the device's doorbell: its wake-ups were for other instances"
            );
            // SAFETY: our own doorbell in the program's instance; DEL takes a null event.
            let _ = unsafe { real_epoll_ctl(epfd, libc::EPOLL_CTL_DEL, bell, std::ptr::null_mut()) };
        }
        cev::BellChange::Take => {
            if !add_bell(epfd, bell) {
                ep.bell_lost();
            } else {
                tracing::debug!(epfd, "epoll takes the device's doorbell back: a wake-up brought it events");
            }
        }
    }
}

/// The common body of `epoll_wait`/`epoll_pwait`/`epoll_pwait2` on our instance.
///
/// # Safety
/// The C contract of `epoll_pwait2(2)`.
unsafe fn wait_common(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: Option<std::time::Duration>,
    mask: *const sigset_t,
) -> c_int {
    let Some(ep) = epoll(epfd) else {
        return crate::errno::fail(Errno::EINVAL);
    };
    if max <= 0 || evs as usize >= USER_END {
        return crate::errno::fail(if max <= 0 { Errno::EINVAL } else { Errno::EFAULT });
    }
    if bad(evs) {
        // Linux checks only that the array lies in user space; copying out fails later, so
        // a null array gives EFAULT only once something is ready.
        if lib::guarded("epoll_wait", || Ok(i32::from(ep.ready_now()))) == 1 {
            return crate::errno::fail(Errno::EFAULT);
        }
        let ms = timeout.map_or(-1, |t| t.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int);
        // SAFETY: the kernel validates the pointer itself and reports EFAULT.
        return unsafe { kernel_wait(epfd, evs, max, ms, mask) };
    }
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    let max_u = max as usize;
    // When the call first found nothing ready: how long it then waited teaches the device
    // spin how long to poll (`device_waited`).
    let mut waited: Option<std::time::Instant> = None;
    // The last pass's device spin took frames (were they for this instance?).
    let mut spun = false;
    // The last kernel wait was ended by the doorbell or our wake eventfd alone (were the
    // frames for us?).
    let mut rung = false;
    loop {
        // Library-OS events first.
        let lib_evs = lib::guarded("epoll_wait", || Ok(ep.collect(max_u)));
        if std::mem::take(&mut spun) {
            ep.spun(!lib_evs.is_empty());
        }
        if std::mem::take(&mut rung) {
            bell_change(&ep, epfd, ep.bell_woke(!lib_evs.is_empty()));
        }
        let mut n = 0usize;
        for (events, data) in &lib_evs {
            // SAFETY: n < max, within the caller's array.
            unsafe { evs.add(n).write_unaligned(epoll_event { events: *events, u64: *data }) };
            n += 1;
        }
        if n > 0 {
            // Fold in kernel events that are ready now, without waiting.
            if n < max_u && ep.has_kernel_fds() {
                // SAFETY: the rest of the caller's array.
                let k = unsafe { kernel_wait(epfd, evs.add(n), (max_u - n) as c_int, 0, std::ptr::null()) };
                if k > 0 {
                    // SAFETY: `k` entries were written.
                    n += unsafe { strip_wake(evs.add(n), k as usize) }.0;
                }
            }
            if let Some(t0) = waited {
                arrakis_core::net::world::device_waited(t0.elapsed(), true);
            }
            return n as c_int;
        }
        let left = match deadline {
            None => -1,
            Some(d) => {
                let l = d.saturating_duration_since(std::time::Instant::now());
                // Round up to whole milliseconds, as the kernel's timeout does.
                l.as_micros().div_ceil(1000).min(c_int::MAX as u128) as c_int
            }
        };
        if left != 0 && waited.is_none() {
            waited = Some(std::time::Instant::now());
        }
        // Over the emulator's NIC: poll its rx ring for a moment before sleeping in the
        // kernel, so a frame that comes in is taken here with no wake-up (kernel fds are
        // looked at when the spin ends).
        if left != 0 && ep.may_spin() && arrakis_core::net::world::device_spin(deadline) {
            spun = true;
            continue;
        }
        // Asks the device for a doorbell (this thread sleeps on it, in its kernel instance),
        // unless a frame came.
        let asleep = if left != 0 && ep.asks_bell() {
            match arrakis_core::net::world::device_sleep_begin(false) {
                Some(a) => Some(a),
                None => continue,
            }
        } else {
            None
        };
        let slept = left != 0 && ep.sleep_begin();
        if left != 0 && !slept {
            continue;
        }
        // SAFETY: the caller's array of `max` events.
        let k = unsafe { kernel_wait(epfd, evs, max, left, mask) };
        drop(asleep);
        if slept {
            ep.sleep_end();
        }
        if k < 0 {
            return k;
        }
        // SAFETY: `k` entries were written.
        let (kept, woke) = unsafe { strip_wake(evs, k as usize) };
        rung = woke && kept == 0;
        if kept > 0 {
            // Kernel fds: the device spin does not watch them, so it must not grow for them.
            if let Some(t0) = waited {
                arrakis_core::net::world::device_waited(t0.elapsed(), false);
            }
            return kept as c_int;
        }
        if left == 0 || (!woke && deadline.is_some_and(|d| std::time::Instant::now() >= d)) {
            return 0;
        }
    }
}

/// # Safety
/// The C contract of `epoll_pwait(2)`.
unsafe fn kernel_wait(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    ms: c_int,
    mask: *const sigset_t,
) -> c_int {
    if mask.is_null() {
        real!(epoll_wait(epfd, evs, max, ms) else sys(libc::SYS_epoll_wait, epfd, evs, max, ms))
    } else {
        real!(epoll_pwait(epfd, evs, max, ms, mask))
    }
}

fn ms_timeout(ms: c_int) -> Option<std::time::Duration> {
    (ms >= 0).then(|| std::time::Duration::from_millis(ms as u64))
}

/// # Safety
/// The C contract of `epoll_wait(2)`.
pub(crate) unsafe fn epoll_wait(epfd: c_int, evs: *mut epoll_event, max: c_int, timeout: c_int) -> c_int {
    if sock(epfd).is_some() {
        return crate::errno::fail(Errno::EINVAL);
    }
    // SAFETY: same contract.
    unsafe { wait_common(epfd, evs, max, ms_timeout(timeout), std::ptr::null()) }
}

/// # Safety
/// The C contract of `epoll_pwait(2)`.
pub(crate) unsafe fn epoll_pwait(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    mask: *const sigset_t,
) -> c_int {
    if sock(epfd).is_some() {
        return crate::errno::fail(Errno::EINVAL);
    }
    // SAFETY: same contract.
    unsafe { wait_common(epfd, evs, max, ms_timeout(timeout), mask) }
}

/// # Safety
/// The C contract of `epoll_pwait2(2)`.
pub(crate) unsafe fn epoll_pwait2(
    epfd: c_int,
    evs: *mut epoll_event,
    max: c_int,
    timeout: *const timespec,
    mask: *const sigset_t,
) -> c_int {
    if sock(epfd).is_some() {
        return crate::errno::fail(Errno::EINVAL);
    }
    let t = if timeout.is_null() {
        None
    } else {
        // SAFETY: the caller's timespec.
        let t = unsafe { *timeout };
        if t.tv_sec < 0 || !(0..1_000_000_000).contains(&t.tv_nsec) {
            return crate::errno::fail(Errno::EINVAL);
        }
        Some(std::time::Duration::new(t.tv_sec as u64, t.tv_nsec as u32))
    };
    // SAFETY: same contract.
    unsafe { wait_common(epfd, evs, max, t, mask) }
}

// ---- poll / select ------------------------------------------------------------------------

enum Obj {
    Sock(Arc<Socket>),
    Ep(Arc<Epoll>),
}

/// `poll`'s input bits.
const POLL_INPUT: u32 = (libc::POLLIN | libc::POLLRDNORM) as u32;

/// The index in the caller's set, and its `revents`, of a `poll` answered without the world lock:
/// one library-OS socket and nothing else (`alone`: no kernel fd, no signal mask), asked for
/// input and nothing that could be reported besides (`POLLERR`, `POLLHUP`, `POLLRDHUP` only
/// when they hold, and they do not while data alone waits), with data waiting
/// ([`Socket::readable_now`]).
fn readable_now(objs: &[(usize, Obj)], wants: &[u32], alone: bool) -> Option<(usize, i16)> {
    const ALSO: u32 = (libc::POLLERR | libc::POLLHUP | libc::POLLRDHUP | libc::POLLNVAL) as u32;
    match (objs, wants) {
        ([(i, Obj::Sock(s))], [w]) if alone && w & POLL_INPUT != 0 && w & !(POLL_INPUT | ALSO) == 0 => {
            s.readable_now().then_some((*i, (w & POLL_INPUT) as i16))
        }
        _ => None,
    }
}

/// `poll`/`ppoll` over a set holding at least one library-OS fd.
///
/// # Safety
/// `fds[..n]` must be the caller's pollfds.
pub(crate) unsafe fn poll_mixed(
    fds: *mut libc::pollfd,
    n: libc::nfds_t,
    timeout: Option<std::time::Duration>,
    mask: *const sigset_t,
) -> c_int {
    // SAFETY: the caller's array.
    let set = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
    // The eventfd a socket becoming ready writes, made only when the call has to sleep and
    // closed when it returns: a program listing /proc/self/fd sees no fd of ours between
    // calls (Linux has none).
    let mut p: Option<Arc<Poller>> = None;
    // Library-OS entries and the kernel set (kernel fds, plus each epoll of ours, plus our
    // eventfd at the end).
    // (Inline for a few fds: the common `poll` of a socket or two allocates nothing.)
    let mut objs: SmallVec<[(usize, Obj); 4]> = SmallVec::new();
    let mut kset: SmallVec<[libc::pollfd; 6]> = SmallVec::with_capacity(set.len() + 2);
    let mut kidx: SmallVec<[usize; 4]> = SmallVec::new();
    for (i, pfd) in set.iter_mut().enumerate() {
        pfd.revents = 0;
        if pfd.fd < 0 {
            continue;
        }
        if let Some(s) = sock(pfd.fd) {
            objs.push((i, Obj::Sock(s)));
            continue;
        }
        if let Some(e) = epoll(pfd.fd) {
            objs.push((i, Obj::Ep(e)));
        }
        kset.push(libc::pollfd { fd: pfd.fd, events: pfd.events, revents: 0 });
        kidx.push(i);
    }
    // The library-OS entries with what each asks for (`want: false` → 0, for unregistering).
    let wants: SmallVec<[u32; 4]> = objs.iter().map(|(i, _)| set[*i].events as u16 as u32).collect();
    let list = |want: bool| -> SmallVec<[(PollObj<'_>, u32); 4]> {
        objs.iter()
            .zip(&wants)
            .map(|((_, o), w)| {
                let w = if want { *w } else { 0 };
                match o {
                    Obj::Sock(s) => (PollObj::Socket(s), w),
                    Obj::Ep(e) => (PollObj::Epoll(e), w),
                }
            })
            .collect()
    };
    let deadline = timeout.map(|t| std::time::Instant::now() + t);
    // When the call first found nothing ready (see `wait_common`).
    let mut waited: Option<std::time::Instant> = None;
    // Whether to spin before the next sleep.
    let mut spin = true;
    // A call that would sleep on a futex word (see below) makes its poller before the first
    // look, which registers it; a look that finds something ready unregisters it under the
    // same lock. So a call that returns at once takes the lock once, and one that sleeps
    // twice (not four times: look, look and register, look after the sleep, end).
    if timeout != Some(std::time::Duration::ZERO)
        && kset.is_empty()
        && mask.is_null()
        && !objs.is_empty()
        && !arrakis_core::net::world::doorbell_free()
    {
        p = Some(Poller::new_futex());
    }
    loop {
        // Input alone, asked of one socket whose data waits (a client woken because its
        // answer came, which reads it next): answered without the lock. A poller left
        // registered by a sleep is dropped from the socket's list at its next change.
        if let Some((i, rev)) = readable_now(&objs, &wants, kset.is_empty() && mask.is_null()) {
            set[i].revents = rev;
            if let Some(t0) = waited {
                arrakis_core::net::world::device_waited(t0.elapsed(), true);
            }
            return 1;
        }
        // A futex poller's generation before the look (a signal after it moves the word).
        let seen = p.as_ref().map_or(0, |p| p.seen());
        let lib_rev: cev::Revents = lib::guarded("poll", || {
            Ok(match &p {
                Some(p) => cev::poll_lib_or_end(&list(true), p),
                None => cev::poll_lib(&list(true), None),
            })
        });
        let ready_lib = lib_rev.iter().any(|&r| r != 0);
        let left = match deadline {
            None => -1i64,
            Some(d) => d.saturating_duration_since(std::time::Instant::now()).as_nanos() as i64,
        };
        let wait_ns = if ready_lib { 0 } else { left };
        if wait_ns != 0 && waited.is_none() {
            waited = Some(std::time::Instant::now());
        }
        // Over the emulator's NIC: poll its rx ring for a moment before sleeping (before the
        // eventfd is made: a wait that the spin ends costs no system call).
        if wait_ns != 0 && spin && arrakis_core::net::world::device_spin(deadline) {
            continue;
        }
        if wait_ns != 0 && p.is_none() {
            // About to sleep: make the poller and check again with it registered (without
            // another spin: this one came up empty). With nothing of the kernel's to watch,
            // no signal mask to set and the device's doorbell in another thread's hands (or
            // none), the thread sleeps on a futex word: no eventfd to make and close.
            p = if kset.is_empty() && mask.is_null() && !arrakis_core::net::world::doorbell_free() {
                Some(Poller::new_futex())
            } else {
                match Poller::new() {
                    Ok(n) => Some(n),
                    Err(e) => return crate::errno::fail(e),
                }
            };
            spin = false;
            continue;
        }
        if let Some(fp) = p.as_ref().filter(|p| p.fd().is_none() && wait_ns != 0) {
            // The futex poller (its sleep asks the device for the progress thread's doorbell).
            // Always with a time-out: the kernel restarts a `FUTEX_WAIT` without one after a
            // handler with `SA_RESTART`, and `poll` must fail with `EINTR` after any handler
            // (Linux never restarts it); one with a time-out fails with `EINTR`.
            spin = true;
            let until =
                deadline.unwrap_or_else(|| std::time::Instant::now() + std::time::Duration::from_secs(3600));
            let r = fp.sleep(seen, Some(until));
            if r == Err(Errno::EINTR) {
                cev::poll_end(&list(false), fp);
                return crate::errno::fail(Errno::EINTR);
            }
            continue;
        }
        // And its doorbell: a frame wakes this thread, which runs the stack when it looks
        // again (rather than waiting for the progress thread to take the frame).
        let bell = if wait_ns != 0 { arrakis_core::net::world::take_doorbell() } else { None };
        // Asks the device for a doorbell (this thread, or without the doorbell the progress
        // thread, wakes on it and runs the stack), unless a frame came.
        let asleep = if wait_ns != 0 {
            match arrakis_core::net::world::device_sleep_begin(bell.is_none()) {
                Some(a) => Some(a),
                None => {
                    if bell.is_some() {
                        arrakis_core::net::world::give_doorbell();
                    }
                    continue;
                }
            }
        } else {
            None
        };
        spin = true;
        let pfd = p.as_ref().and_then(|p| p.fd().map(|fd| rustix::fd::AsRawFd::as_raw_fd(&fd)));
        if let Some(fd) = pfd {
            kset.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        if let Some(fd) = bell {
            kset.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
        }
        let ts = (wait_ns >= 0).then_some(timespec {
            tv_sec: (wait_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait_ns % 1_000_000_000) as libc::c_long,
        });
        let tsp = ts.as_ref().map_or(std::ptr::null(), |t| t as *const timespec);
        let kn = kset.len() as libc::nfds_t;
        // Nothing of the kernel's to look at and nothing to wait for: no system call.
        let r = if kn == 0 && wait_ns == 0 && mask.is_null() {
            0
        } else {
            real!(ppoll(kset.as_mut_ptr(), kn, tsp, mask))
        };
        let err = crate::errno::get();
        drop(asleep);
        if let Some(fd) = bell {
            // Drained here (level-triggered, it would wake the next ppoll at once); this thread
            // runs the stack on the frame just below, so the progress thread need not.
            if kset.pop().is_some_and(|e| e.revents != 0) {
                let mut b = [0u8; 8];
                // SAFETY: reading 8 bytes into our buffer from the NIC's eventfd.
                let _ = unsafe { libc::syscall(libc::SYS_read, fd, b.as_mut_ptr(), 8usize) };
            }
            arrakis_core::net::world::give_doorbell();
        }
        if let (Some(p), Some(_)) = (&p, pfd) {
            if kset.pop().is_some_and(|e| e.revents != 0) {
                p.drain();
            }
        }
        // Something ready at the look above: its poller, if any, is unregistered already.
        let lib_rev: cev::Revents = match (&p, ready_lib) {
            (_, true) => lib_rev,
            (Some(p), false) => lib::guarded("poll", || Ok(cev::poll_lib_end(&list(true), p))),
            (None, false) => lib::guarded("poll", || Ok(cev::poll_lib(&list(true), None))),
        };
        if r < 0 && !lib_rev.iter().any(|&x| x != 0) {
            crate::errno::set(err);
            return -1;
        }
        let mut count = 0;
        for (k, &i) in kidx.iter().enumerate() {
            set[i].revents = kset[k].revents;
        }
        for ((i, _), rev) in objs.iter().zip(&lib_rev) {
            set[*i].revents |= *rev as i16;
        }
        for pfd in set.iter() {
            if pfd.revents != 0 {
                count += 1;
            }
        }
        if let (Some(t0), true) = (waited, count > 0) {
            arrakis_core::net::world::device_waited(t0.elapsed(), lib_rev.iter().any(|&x| x != 0));
        }
        if count > 0 || wait_ns == 0 || deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            return count;
        }
        for e in kset.iter_mut() {
            e.revents = 0;
        }
    }
}

/// `select`/`pselect` over sets holding at least one library-OS fd, built on `poll_mixed`.
///
/// # Safety
/// The C contract of `pselect(2)`.
pub(crate) unsafe fn select_mixed(
    nfds: c_int,
    sets: [*mut libc::fd_set; 3],
    timeout: Option<std::time::Duration>,
    mask: *const sigset_t,
) -> c_int {
    if nfds < 0 {
        return crate::errno::fail(Errno::EINVAL);
    }
    let limit = nfds.min(libc::FD_SETSIZE as c_int);
    let mut pfds: Vec<libc::pollfd> = Vec::new();
    const IN: i16 = libc::POLLIN | libc::POLLRDNORM | libc::POLLHUP | libc::POLLERR;
    const OUT: i16 = libc::POLLOUT | libc::POLLWRNORM | libc::POLLERR;
    const EX: i16 = libc::POLLPRI;
    for fd in 0..limit {
        let mut ev = 0i16;
        for (k, s) in sets.iter().enumerate() {
            // SAFETY: fd < FD_SETSIZE; the caller's set.
            if !s.is_null() && unsafe { libc::FD_ISSET(fd, *s) } {
                ev |= [libc::POLLIN, libc::POLLOUT, libc::POLLPRI][k];
            }
        }
        if ev != 0 {
            if table().is_kernel(fd) {
                // A closed fd in a set is EBADF for select.
                // SAFETY: F_GETFD on a number.
                if unsafe { libc::syscall(libc::SYS_fcntl, fd, libc::F_GETFD) } < 0 {
                    return crate::errno::fail(Errno::EBADF);
                }
            }
            pfds.push(libc::pollfd { fd, events: ev, revents: 0 });
        }
    }
    // SAFETY: our own array.
    let r = unsafe { poll_mixed(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout, mask) };
    if r < 0 {
        return r;
    }
    for s in sets.iter().filter(|s| !s.is_null()) {
        // SAFETY: the caller's set.
        unsafe { libc::FD_ZERO(*s) };
    }
    let mut count = 0;
    for p in &pfds {
        let hits = [
            p.events & libc::POLLIN != 0 && p.revents & IN != 0,
            p.events & libc::POLLOUT != 0 && p.revents & OUT != 0,
            p.events & libc::POLLPRI != 0 && p.revents & EX != 0,
        ];
        for (k, hit) in hits.iter().enumerate() {
            if *hit && !sets[k].is_null() {
                // SAFETY: fd < FD_SETSIZE; the caller's set.
                unsafe { libc::FD_SET(p.fd, sets[k]) };
                count += 1;
            }
        }
    }
    count
}
