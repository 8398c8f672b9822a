//! The two ends of a virtual NIC: [`EmulatorNic`], the container's, a [`NetDevice`]; and
//! [`SwitchPort`], the switch's. [`create`] makes a fresh NIC and returns both; a container
//! that received the fds over the daemon's socket builds its end with
//! [`EmulatorNic::from_fds`].
//!
//! Doorbells: `to_container` is rung by the switch (frames on rx, or space on tx for a
//! container that found tx full); `to_switch` is rung by the container (frames on tx, or space
//! on rx). Each side rings only when the other armed its ring (see [`ring`](super::ring)).
//!
//! The container's end lends shared buffers to smoltcp without a copy: received frames are
//! read in place, transmitted frames are built in place.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::ring::{Consumer, Doorbell, Geometry, Producer, Region, Ring, RingError, RingFaults};
use crate::NetDevice;

/// The fds that make a NIC, as they cross the daemon's Unix socket: the region's memfd and
/// the two doorbell eventfds.
#[derive(Debug)]
pub struct NicFds {
    pub region: OwnedFd,
    pub to_container: OwnedFd,
    pub to_switch: OwnedFd,
}

/// The switch's end of a NIC: it consumes tx and produces rx. Everything it reads from the
/// region is checked (see [`ring`](super::ring)).
#[derive(Debug)]
pub struct SwitchPort {
    pub tx: Consumer,
    pub rx: Producer,
    /// Rung by the container; the switch sleeps on it.
    pub bell: Doorbell,
    /// Rings the container.
    pub peer: Doorbell,
}

impl SwitchPort {
    /// The NIC's region (the switch writes the container's binding slot words there).
    pub fn region(&self) -> &Arc<Region> {
        self.rx.region()
    }

    /// Faults the container committed on either ring.
    pub fn faults(&self) -> RingFaults {
        RingFaults {
            bad_index: self.tx.faults.bad_index + self.rx.faults.bad_index,
            bad_desc: self.tx.faults.bad_desc + self.rx.faults.bad_desc,
        }
    }
}

fn dup(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// Makes a fresh NIC: the fds for the container, and the switch's end.
pub fn create(geo: Geometry) -> io::Result<(NicFds, SwitchPort)> {
    let region = Arc::new(Region::create(geo)?);
    let (to_container, to_switch) = (Doorbell::new()?, Doorbell::new()?);
    let fds = NicFds {
        region: dup(region.fd())?,
        to_container: dup(to_container.as_fd())?,
        to_switch: dup(to_switch.as_fd())?,
    };
    let port = SwitchPort {
        tx: Consumer::new(region.clone(), Ring::Tx),
        rx: Producer::new(region, Ring::Rx),
        bell: to_switch,
        peer: to_container,
    };
    Ok((fds, port))
}

/// The container's end of a virtual NIC: IP medium, MTU = the buffer size, checksums
/// computed and verified by the stack (frames may leave the host through the uplink).
#[derive(Debug)]
pub struct EmulatorNic {
    tx: Producer,
    rx: Consumer,
    bell: Doorbell,
    peer: Doorbell,
    mtu: usize,
    /// Frames smoltcp built that did not fit the ring (never, unless the switch misbehaves).
    pub tx_dropped: u64,
    /// Doorbell writes made after transmitting (the rest were suppressed because the switch
    /// was polling).
    pub tx_kicks: u64,
    /// Doorbell writes made after receiving (the switch waited for rx space).
    pub rx_kicks: u64,
}

impl EmulatorNic {
    /// Builds the container's end from fds received from the daemon, validating the region.
    pub fn from_fds(fds: NicFds) -> Result<EmulatorNic, RingError> {
        let region = Arc::new(Region::attach(fds.region)?);
        let mtu = region.geometry().buf_size as usize;
        Ok(EmulatorNic {
            tx: Producer::new(region.clone(), Ring::Tx),
            rx: Consumer::new(region, Ring::Rx),
            bell: Doorbell::from_fd(fds.to_container),
            peer: Doorbell::from_fd(fds.to_switch),
            mtu,
            tx_dropped: 0,
            tx_kicks: 0,
            rx_kicks: 0,
        })
    }

    /// A probe of the rx ring for threads that poll it without the NIC ([`RingProbe`]).
    pub fn rx_probe(&self) -> super::ring::RingProbe {
        self.rx.probe()
    }

    /// Faults the switch committed (a bug there, never a container's doing).
    pub fn faults(&self) -> RingFaults {
        self.rx.faults
    }
}

impl phy::Device for EmulatorNic {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        if !self.rx.has_frame() {
            return None;
        }
        let rx = RxToken { rx: &mut self.rx, peer: &self.peer, kicks: &mut self.rx_kicks };
        let tx = TxToken {
            tx: &mut self.tx,
            peer: &self.peer,
            kicks: &mut self.tx_kicks,
            dropped: &mut self.tx_dropped,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        // Full: ask the switch for a doorbell when it frees a slot, unless one freed meanwhile.
        if !self.tx.has_space() && self.tx.arm() {
            return None;
        }
        Some(TxToken {
            tx: &mut self.tx,
            peer: &self.peer,
            kicks: &mut self.tx_kicks,
            dropped: &mut self.tx_dropped,
        })
    }
}

impl NetDevice for EmulatorNic {
    fn doorbell(&self) -> Option<BorrowedFd<'_>> {
        Some(self.bell.as_fd())
    }

    fn ack_doorbell(&mut self) {
        self.bell.drain();
        self.rx.disarm();
        self.tx.disarm();
    }

    fn prepare_sleep(&mut self) -> bool {
        self.rx.arm()
    }
}

/// A received frame, read in place; its slot goes back to the switch when consumed.
pub struct RxToken<'a> {
    rx: &'a mut Consumer,
    peer: &'a Doorbell,
    kicks: &'a mut u64,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let mut f = Some(f);
        let r = self.rx.recv_with(|b| f.take().map(|f| f(b)));
        // `receive` saw a valid frame; only a misbehaving switch could take it away since.
        let r = match (r.flatten(), f) {
            (Some(r), _) => r,
            (None, Some(f)) => f(&[]),
            (None, None) => unreachable!("the closure ran, so it returned Some"),
        };
        if self.rx.kick_needed() {
            self.peer.ring();
            *self.kicks += 1;
        }
        r
    }
}

/// Room for one frame on tx, built in place.
pub struct TxToken<'a> {
    tx: &'a mut Producer,
    peer: &'a Doorbell,
    kicks: &'a mut u64,
    dropped: &'a mut u64,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        let r = self.tx.push_with(len, |b| f.take().map(|f| f(b)));
        let r = match (r.flatten(), f) {
            (Some(r), _) => r,
            // Too long, or the ring filled since `transmit` (a reply token handed out with a
            // received frame): build the frame somewhere and drop it, as a full NIC would.
            (None, Some(f)) => {
                *self.dropped += 1;
                f(&mut vec![0; len])
            }
            (None, None) => unreachable!("the closure ran, so it returned Some"),
        };
        if self.tx.kick_needed() {
            self.peer.ring();
            *self.kicks += 1;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{Device, RxToken as _, TxToken as _};

    #[test]
    fn frames_cross_both_ways_and_doorbells_ring_only_when_armed() {
        let (fds, mut port) = create(Geometry { ring_size: 4, buf_size: 256 }).unwrap();
        let mut nic = EmulatorNic::from_fds(fds).unwrap();
        let t = Instant::from_millis(0);
        assert_eq!(nic.capabilities().max_transmission_unit, 256);
        assert!(nic.receive(t).is_none());

        // Container → switch, switch polling: no doorbell.
        nic.transmit(t).unwrap().consume(3, |b| b.copy_from_slice(b"abc"));
        assert!(!port.bell.drain());
        let mut out = [0u8; 256];
        assert_eq!(port.tx.recv_copy(&mut out), Some(3));
        assert_eq!(&out[..3], b"abc");
        // Switch armed: the next frame rings.
        assert!(port.tx.arm());
        nic.transmit(t).unwrap().consume(1, |b| b[0] = 7);
        assert!(port.bell.drain());
        port.tx.disarm();

        // Switch → container: the container armed before sleeping, so it is rung.
        assert!(nic.prepare_sleep());
        port.rx.push_copy(b"xyz").unwrap();
        assert!(port.rx.kick_needed());
        port.peer.ring();
        assert!(!nic.prepare_sleep(), "a frame is waiting: do not sleep");
        nic.ack_doorbell();
        let (rx, _tx) = nic.receive(t).unwrap();
        assert_eq!(rx.consume(|b| b.to_vec()), b"xyz");
        assert!(nic.receive(t).is_none());
    }

    #[test]
    fn a_full_tx_ring_refuses_and_is_rung_when_space_frees() {
        let (fds, mut port) = create(Geometry { ring_size: 2, buf_size: 256 }).unwrap();
        let mut nic = EmulatorNic::from_fds(fds).unwrap();
        let t = Instant::from_millis(0);
        for _ in 0..2 {
            nic.transmit(t).unwrap().consume(1, |_| ());
        }
        assert!(nic.transmit(t).is_none());
        let mut out = [0u8; 256];
        port.tx.recv_copy(&mut out).unwrap();
        assert!(port.tx.kick_needed(), "the container asked for space");
        assert!(nic.transmit(t).is_some());
    }

    #[test]
    fn a_nic_from_foreign_fds_is_refused() {
        let (fds, _port) = create(Geometry::default()).unwrap();
        let bogus = NicFds { region: Doorbell::new().unwrap().into(), ..fds };
        assert!(EmulatorNic::from_fds(bogus).is_err());
    }
}
