//! One device type for the library OS's stack, whichever backend serves the process: the
//! stack is built once over [`AnyDevice`] and the backend chosen at start-up
//! (`ARRAKIS_BACKEND`) is one of its variants. The tokens dispatch to the variant's own.

use std::os::fd::BorrowedFd;

use smoltcp::phy::{self, DeviceCapabilities};
use smoltcp::time::Instant;

use crate::emulator::{self, EmulatorNic};
use crate::loopback::{self, Loopback};
use crate::NetDevice;

/// The device under the library OS's stack.
pub enum AnyDevice {
    /// In-process loopback: frames come back to this process.
    Loopback(Loopback),
    /// A virtual NIC whose other end is the software switch.
    Emulator(EmulatorNic),
}

impl From<Loopback> for AnyDevice {
    fn from(d: Loopback) -> AnyDevice {
        AnyDevice::Loopback(d)
    }
}

impl From<EmulatorNic> for AnyDevice {
    fn from(d: EmulatorNic) -> AnyDevice {
        AnyDevice::Emulator(d)
    }
}

impl AnyDevice {
    /// A probe of the receive ring, for a device whose frames arrive from another process
    /// (the emulator's NIC); `None` for the loopback.
    pub fn rx_probe(&self) -> Option<crate::emulator::nic::DeviceProbe> {
        match self {
            AnyDevice::Loopback(_) => None,
            AnyDevice::Emulator(n) => Some(n.rx_probe()),
        }
    }
}

/// A received frame of either device.
pub enum AnyRx<'a> {
    /// From the loopback.
    Loopback(loopback::RxToken<'a>),
    /// From the emulator's ring.
    Emulator(emulator::nic::RxToken<'a>),
}

/// Room for a frame to send on either device.
pub enum AnyTx<'a> {
    /// To the loopback.
    Loopback(loopback::TxToken<'a>),
    /// To the emulator's ring.
    Emulator(emulator::nic::TxToken<'a>),
}

impl phy::RxToken for AnyRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        match self {
            AnyRx::Loopback(t) => t.consume(f),
            AnyRx::Emulator(t) => t.consume(f),
        }
    }
}

impl phy::TxToken for AnyTx<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        match self {
            AnyTx::Loopback(t) => t.consume(len, f),
            AnyTx::Emulator(t) => t.consume(len, f),
        }
    }
}

impl phy::Device for AnyDevice {
    type RxToken<'a> = AnyRx<'a>;
    type TxToken<'a> = AnyTx<'a>;

    fn capabilities(&self) -> DeviceCapabilities {
        match self {
            AnyDevice::Loopback(d) => d.capabilities(),
            AnyDevice::Emulator(d) => d.capabilities(),
        }
    }

    fn receive(&mut self, now: Instant) -> Option<(AnyRx<'_>, AnyTx<'_>)> {
        match self {
            AnyDevice::Loopback(d) => d.receive(now).map(|(r, t)| (AnyRx::Loopback(r), AnyTx::Loopback(t))),
            AnyDevice::Emulator(d) => d.receive(now).map(|(r, t)| (AnyRx::Emulator(r), AnyTx::Emulator(t))),
        }
    }

    fn transmit(&mut self, now: Instant) -> Option<AnyTx<'_>> {
        match self {
            AnyDevice::Loopback(d) => d.transmit(now).map(AnyTx::Loopback),
            AnyDevice::Emulator(d) => d.transmit(now).map(AnyTx::Emulator),
        }
    }
}

impl NetDevice for AnyDevice {
    fn max_frame(&self) -> usize {
        match self {
            AnyDevice::Loopback(d) => d.max_frame(),
            AnyDevice::Emulator(d) => d.max_frame(),
        }
    }

    fn doorbell(&self) -> Option<BorrowedFd<'_>> {
        match self {
            AnyDevice::Loopback(d) => d.doorbell(),
            AnyDevice::Emulator(d) => d.doorbell(),
        }
    }

    fn ack_doorbell(&mut self) {
        match self {
            AnyDevice::Loopback(d) => d.ack_doorbell(),
            AnyDevice::Emulator(d) => d.ack_doorbell(),
        }
    }

    fn prepare_sleep(&mut self) -> bool {
        match self {
            AnyDevice::Loopback(d) => d.prepare_sleep(),
            AnyDevice::Emulator(d) => d.prepare_sleep(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{Device, RxToken, TxToken};

    #[test]
    fn loopback_frames_come_back_through_the_enum() {
        let mut d = AnyDevice::from(Loopback::default());
        let now = Instant::from_micros(0);
        let tx = d.transmit(now).expect("room");
        tx.consume(4, |b| b.copy_from_slice(b"ping"));
        let (rx, _) = d.receive(now).expect("the frame comes back");
        assert_eq!(rx.consume(|b| b.to_vec()), b"ping");
        assert!(d.doorbell().is_none());
        assert!(d.prepare_sleep());
    }

    #[test]
    fn emulator_frames_cross_the_rings_through_the_enum() {
        let (fds, mut port) = emulator::create(emulator::Geometry::default()).expect("a NIC");
        let mut d = AnyDevice::from(EmulatorNic::from_fds(fds).expect("attach"));
        assert!(d.doorbell().is_some());
        let now = Instant::from_micros(0);
        let tx = d.transmit(now).expect("room");
        tx.consume(4, |b| b.copy_from_slice(b"pong"));
        assert_eq!(port.tx.recv_with(|f| f.to_vec()), Some(b"pong".to_vec()));
        port.rx.push_copy(b"back").expect("room on the rx ring");
        let (rx, _) = d.receive(now).expect("the switch's frame arrives");
        assert_eq!(rx.consume(|b| b.to_vec()), b"back");
    }
}
