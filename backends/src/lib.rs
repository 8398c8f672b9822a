//! The devices the library OS drives.
//!
//! A network device is exactly smoltcp's [`phy::Device`] — buffers lent through RX/TX tokens,
//! no copy beyond the one into the frame, no allocation per frame — plus one thing the library
//! OS needs to sleep: a *doorbell*, a kernel fd that becomes readable when frames arrive from
//! outside the stack's own poll loop (another container through the switch, hardware). The
//! library OS's progress engine and blocked threads wait on it in one `epoll_wait` together
//! with the program's kernel fds.
//!
//! Backends:
//! * [`loopback`] — in-process: what the process sends to its own addresses comes back to it.
//!   Frames only ever appear during the stack's own poll, so it has no doorbell.
//! * [`script`] — a test device that injects frames and records what the stack sends, for
//!   scripted TCP cases in the packetdrill style.
//! * [`emulator`] — a virtual NIC in shared memory (rings + buffers in a memfd, eventfd
//!   doorbells) whose other end is the software switch in another process.
//! * vfio arrives later.
//! * [`proto`] is not a device: the control protocol the daemon and the library OS share.
//!
//! Nothing here knows about sockets or fds of the program; `core` owns those.
// `unsafe` only in the emulator's shared-memory ring (`emulator::ring`), which allows it.
#![deny(unsafe_code)]

use std::os::fd::BorrowedFd;

pub use smoltcp;
use smoltcp::phy;

pub mod any;
pub mod emulator;
pub mod hash;
pub mod loopback;
pub mod proto;
pub mod script;

/// A network device the library OS can drive and sleep on.
pub trait NetDevice: phy::Device + Send {
    /// The largest frame the device carries, for frames the library OS builds itself (UDP
    /// datagrams); at least the MTU smoltcp is given, which bounds TCP's segments. A datagram
    /// larger than this goes in IPv6 fragments, or (IPv4) not at all.
    fn max_frame(&self) -> usize {
        self.capabilities().max_transmission_unit
    }

    /// A kernel fd that becomes readable when frames arrive that the stack did not produce
    /// itself. `None` for devices whose frames only appear during the stack's own poll.
    fn doorbell(&self) -> Option<BorrowedFd<'_>> {
        None
    }

    /// Called after waking on the doorbell and before polling: consumes the notification
    /// and re-arms it.
    fn ack_doorbell(&mut self) {}

    /// Called before sleeping on the doorbell, after a poll found nothing to do: asks the
    /// other side to ring on the next arrival and checks once more. `false` means frames
    /// arrived meanwhile — poll again instead of sleeping (the virtio way: without the
    /// re-check a frame landing between the last poll and the request is never announced).
    fn prepare_sleep(&mut self) -> bool {
        true
    }
}
