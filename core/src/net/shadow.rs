//! Kernel halves of library-OS TCP sockets: a listening socket under the shim accepts
//! connections from other sockets of the library OS *and* from ordinary kernel clients
//! (programs not under the shim). `bind` (or `listen` on an unbound socket) also binds a
//! kernel TCP socket to the same address and port, so the port is held in the kernel's
//! namespace where other programs see it (and a port another program holds is
//! `EADDRINUSE`, as on Linux); `listen` makes it listen; a connection that arrives there is
//! accepted as a plain kernel fd.
//!
//! Readiness: a *watcher* thread (started with the first shadow, all signals blocked) sleeps
//! in one kernel `epoll_wait` on every shadow of the process, edge-triggered; a new kernel
//! connection marks the listener's `shadow_ready` and runs `changed`, which wakes blocked
//! `accept`s (their futex word) and the epolls and polls watching the listener. `accept`
//! clears the mark when the kernel says `EAGAIN`, so no arrival is lost between the two.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock};

use rustix::event::epoll;
use rustix::fd::{AsFd, OwnedFd};
use rustix::net::{AddressFamily, SocketFlags, SocketType};

use super::world::net;
use crate::error::{Errno, SysResult};

/// Whether sockets get kernel halves at all (`ARRAKIS_KERNEL_CLIENTS`).
pub(crate) static ENABLED: AtomicBool = AtomicBool::new(false);

pub(crate) fn enabled() -> bool {
    ENABLED.load(SeqCst)
}

fn errno(e: rustix::io::Errno) -> Errno {
    Errno(e.raw_os_error())
}

/// How the kernel half is bound (`bind`, or `listen` on an unbound socket).
pub(crate) struct Binding {
    pub addr: SocketAddr,
    pub reuseaddr: bool,
    pub reuseport: bool,
    pub v6only: bool,
}

/// The listener's options its accepted connections inherit (Linux's accepted sockets copy
/// the listener's), applied when it starts listening.
pub(crate) struct Inherited {
    pub nodelay: bool,
    pub keepalive: bool,
    /// `SO_RCVBUF`/`SO_SNDBUF` as the program set them (before doubling), if it did.
    pub rcvbuf: Option<usize>,
    pub sndbuf: Option<usize>,
    pub linger: Option<u64>,
}

/// A kernel TCP socket bound as the library socket (non-blocking, close-on-exec): it holds
/// the port in the kernel's namespace from `bind` on, as Linux's socket would.
pub(crate) fn bind(b: &Binding) -> SysResult<OwnedFd> {
    let fam = if b.addr.is_ipv4() { AddressFamily::INET } else { AddressFamily::INET6 };
    let fd =
        rustix::net::socket_with(fam, SocketType::STREAM, SocketFlags::NONBLOCK | SocketFlags::CLOEXEC, None)
            .map_err(errno)?;
    // Out of the program's fd numbering, as every internal fd.
    let fd = crate::event::hide(fd);
    rustix::net::sockopt::set_socket_reuseaddr(&fd, b.reuseaddr).map_err(errno)?;
    if b.reuseport {
        rustix::net::sockopt::set_socket_reuseport(&fd, true).map_err(errno)?;
    }
    if !b.addr.is_ipv4() {
        rustix::net::sockopt::set_ipv6_v6only(&fd, b.v6only).map_err(errno)?;
    }
    rustix::net::bind(&fd, &b.addr).map_err(errno)?;
    Ok(fd)
}

/// Starts listening (or changes the backlog).
pub(crate) fn listen(fd: &OwnedFd, backlog: usize, o: &Inherited) -> SysResult<()> {
    // A refusal of an inherited option changes nothing the program asked of the library
    // side, so it is not an error of `listen`.
    use rustix::net::sockopt as so;
    let _ = so::set_tcp_nodelay(fd, o.nodelay);
    let _ = so::set_socket_keepalive(fd, o.keepalive);
    if let Some(n) = o.rcvbuf {
        let _ = so::set_socket_recv_buffer_size(fd, n);
    }
    if let Some(n) = o.sndbuf {
        let _ = so::set_socket_send_buffer_size(fd, n);
    }
    if let Some(secs) = o.linger {
        let _ = so::set_socket_linger(fd, Some(std::time::Duration::from_secs(secs)));
    }
    rustix::net::listen(fd, i32::try_from(backlog).unwrap_or(4096)).map_err(errno)
}

/// Accepts one kernel connection if there is one: `Ok(None)` is `EAGAIN`.
pub(crate) fn accept(
    fd: &OwnedFd,
    nonblock: bool,
    cloexec: bool,
) -> SysResult<Option<(OwnedFd, SocketAddr)>> {
    let mut flags = SocketFlags::empty();
    if nonblock {
        flags |= SocketFlags::NONBLOCK;
    }
    if cloexec {
        flags |= SocketFlags::CLOEXEC;
    }
    match rustix::net::acceptfrom_with(fd, flags) {
        Ok((c, from)) => {
            let peer = from.and_then(|a| SocketAddr::try_from(a).ok()).ok_or(Errno::ECONNABORTED)?;
            Ok(Some((c, peer)))
        }
        Err(e) if e == rustix::io::Errno::AGAIN => Ok(None),
        // A connection reset before it was accepted: Linux's accept retries internally.
        Err(e) if e == rustix::io::Errno::CONNABORTED => Ok(None),
        Err(e) => Err(errno(e)),
    }
}

/// The watcher: its epoll instance and the process it belongs to (a forked child makes its
/// own, since an epoll instance is shared with the parent across `fork`).
struct Watcher {
    pid: u32,
    ep: OwnedFd,
}

static WATCHER: OnceLock<Mutex<Option<Watcher>>> = OnceLock::new();
static STARTED_PID: AtomicU32 = AtomicU32::new(0);

/// Registers a listener's shadow with the watcher (starting it if needed); events carry
/// the socket id.
pub(crate) fn watch(fd: &OwnedFd, id: usize) -> SysResult<()> {
    let cell = WATCHER.get_or_init(|| Mutex::new(None));
    let mut w = cell.lock().unwrap_or_else(|e| e.into_inner());
    let pid = std::process::id();
    if w.as_ref().is_none_or(|w| w.pid != pid) {
        let ep = crate::event::hide(epoll::create(epoll::CreateFlags::CLOEXEC).map_err(errno)?);
        *w = Some(Watcher { pid, ep });
    }
    let Some(watcher) = w.as_ref() else { return Err(Errno::ENOMEM) };
    let flags = epoll::EventFlags::IN | epoll::EventFlags::ET;
    epoll::add(&watcher.ep, fd, epoll::EventData::new_u64(id as u64), flags).map_err(errno)?;
    if STARTED_PID.swap(pid, SeqCst) != pid {
        let ep = watcher.ep.try_clone().map_err(|e| Errno(e.raw_os_error().unwrap_or(Errno::ENOMEM.0)))?;
        let ep = crate::event::hide(ep);
        let spawned = std::thread::Builder::new()
            .name("arrakis-shadow".into())
            .stack_size(128 * 1024)
            .spawn(move || run(ep));
        if let Err(e) = spawned {
            STARTED_PID.store(0, SeqCst);
            tracing::error!(error = %e, "cannot start the shadow-listener watcher; kernel clients wait for the next call");
        }
    }
    Ok(())
}

/// Removes a shadow from the watcher (before its fd is closed).
pub(crate) fn unwatch(fd: &OwnedFd) {
    let Some(cell) = WATCHER.get() else { return };
    let w = cell.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(w) = w.as_ref().filter(|w| w.pid == std::process::id()) {
        let _ = epoll::delete(&w.ep, fd.as_fd());
    }
}

/// The watcher thread: marks listeners whose kernel half got a connection.
fn run(ep: OwnedFd) {
    // Signals are for the program's threads.
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::all()),
        None,
    );
    let mut events = Vec::with_capacity(64);
    loop {
        events.clear();
        match epoll::wait(&ep, rustix::buffer::spare_capacity(&mut events), None) {
            Ok(_) => {}
            Err(e) if e == rustix::io::Errno::INTR => continue,
            Err(e) => {
                tracing::error!(error = %e, "shadow-listener watcher stops");
                return;
            }
        }
        let mut g = net().lock();
        for ev in &events {
            let id = ev.data.u64() as usize;
            super::socket::shadow_arrived(&mut g, id);
        }
    }
}
