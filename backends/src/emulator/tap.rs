//! The uplink device: a Linux tun/tap interface in IP mode (`IFF_TUN | IFF_NO_PI`), through
//! which the software switch exchanges frames with the kernel's network stack — hosts and
//! programs not under the shim, and, routed by the kernel, other hosts and their switches.
//!
//! IP mode, not Ethernet: the emulator's NICs carry bare IP packets (smoltcp's `Medium::Ip`),
//! so the uplink needs no ARP and no MAC addresses; the kernel routes to and from the
//! interface like any point-to-point link. Each read returns one whole packet, each write
//! sends one. The fd is non-blocking and close-on-exec; closing it removes the interface
//! (unless it was made persistent by someone else).
//!
//! Opening needs `CAP_NET_ADMIN` in the network namespace the caller's thread is in; a tun
//! interface belongs to the namespace it was created in.

use std::ffi::c_char;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use rustix::fs::{Mode, OFlags};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

/// A tun interface in IP mode.
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    /// A datagram socket in the interface's namespace, for `SIOCGIFMTU`.
    query: OwnedFd,
    name: String,
}

/// Why an uplink could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The name is empty, too long, or not printable.
    #[error("bad interface name {0:?}: 1 to 15 printable characters without '/' or spaces")]
    Name(String),
    /// `/dev/net/tun` could not be opened.
    #[error(
        "cannot open /dev/net/tun: {0}; the uplink needs the tun driver (modprobe tun) and CAP_NET_ADMIN"
    )]
    Open(#[source] io::Error),
    /// The kernel refused the interface.
    #[error("cannot create the tun interface {name}: {source}; it needs CAP_NET_ADMIN, and the name must not belong to another kind of interface")]
    Create {
        /// The name asked for.
        name: String,
        /// What `TUNSETIFF` said.
        #[source]
        source: io::Error,
    },
}

impl Tap {
    /// Creates (or attaches to) the tun interface `name` in the calling thread's network
    /// namespace. The interface still has to be given an address and brought up (`ip addr
    /// add`, `ip link set up`), which is the administrator's or the test's business.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        if name.is_empty()
            || name.len() >= libc::IFNAMSIZ
            || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'/')
        {
            return Err(TapError::Name(name.to_owned()));
        }
        let fd = rustix::fs::open(
            "/dev/net/tun",
            OFlags::RDWR | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| TapError::Open(e.into()))?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads (and may update) one `ifreq`, which lives for the call;
        // `fd` is an open tun control fd.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut libc::ifreq) };
        if r < 0 {
            return Err(TapError::Create { name: name.to_owned(), source: io::Error::last_os_error() });
        }
        let query = rustix::net::socket_with(
            rustix::net::AddressFamily::INET,
            rustix::net::SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| TapError::Open(e.into()))?;
        Ok(Tap { fd, query, name: name.to_owned() })
    }

    /// The interface's MTU, as the administrator set it (`ip link set NAME mtu N`): the
    /// largest packet the kernel forwards from it without fragmenting.
    pub fn mtu(&self) -> io::Result<u32> {
        let mut req = ifreq(&self.name);
        // SAFETY: SIOCGIFMTU writes the MTU into one `ifreq`, which lives for the call;
        // `query` is an open socket.
        let r =
            unsafe { libc::ioctl(self.query.as_raw_fd(), libc::SIOCGIFMTU, &mut req as *mut libc::ifreq) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: SIOCGIFMTU filled the `ifru_mtu` member of the union.
        let mtu = unsafe { req.ifr_ifru.ifru_mtu };
        u32::try_from(mtu).map_err(|_| io::Error::other(format!("{}: negative MTU {mtu}", self.name)))
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Reads one packet into `buf`: `Ok(Some(len))`, or `Ok(None)` when none is waiting. A
    /// packet longer than `buf` is cut (the kernel drops the rest); the caller sizes `buf` to
    /// the interface's MTU.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        loop {
            match rustix::io::read(&self.fd, &mut *buf) {
                Ok(n) => return Ok(Some(n)),
                Err(rustix::io::Errno::AGAIN) => return Ok(None),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sends one packet. `Ok(false)` when the interface's queue is full (or it is down and
    /// the kernel refuses packets): the packet is dropped, as a NIC with a full queue would.
    pub fn send(&self, packet: &[u8]) -> io::Result<bool> {
        loop {
            match rustix::io::write(&self.fd, packet) {
                Ok(_) => return Ok(true),
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::IO | rustix::io::Errno::NOBUFS) => {
                    return Ok(false)
                }
                Err(rustix::io::Errno::INTR) => continue,
                // A malformed packet (bad version nibble, ...) is the sender's problem.
                Err(rustix::io::Errno::INVAL) => return Ok(false),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// An `ifreq` naming interface `name` (at most `IFNAMSIZ - 1` bytes, checked by `open`),
/// the rest zero.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as c_char;
    }
    req
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_before_any_system_call() {
        for n in ["", "a/b", "with space", "sixteen-chars-xx"] {
            assert!(matches!(Tap::open(n), Err(TapError::Name(_))), "{n:?}");
        }
    }
}
