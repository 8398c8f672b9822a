//! The in-process loopback backend: every frame the stack transmits is queued and received
//! back by the same stack, in order. The library OS uses it for programs that talk to
//! themselves (a client and a server in one process, as CPython's `test_socket` does).
//!
//! Like Linux's `lo`: IP medium (no link layer), a 65,535-byte MTU, and no checksums (the
//! frames never leave memory). Unlike smoltcp's own `Loopback`, frame buffers are recycled,
//! so the steady state allocates nothing, and the queue is bounded: a full queue refuses a
//! transmit, which TCP recovers from like any loss.

use std::collections::VecDeque;

use smoltcp::phy::{self, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use crate::NetDevice;

/// Largest IP packet the loopback carries (Linux's `lo` MTU is 65,536; IP's limit is 65,535).
pub const MTU: usize = 65535;
/// Frames that may wait in the queue before transmits are refused.
pub const DEFAULT_QUEUE: usize = 4096;
/// Recycled buffers kept for reuse.
const POOL: usize = 64;

/// The loopback device.
#[derive(Debug)]
pub struct Loopback {
    queue: VecDeque<Vec<u8>>,
    pool: Vec<Vec<u8>>,
    limit: usize,
    /// Frames refused because the queue was full.
    pub dropped: u64,
}

impl Default for Loopback {
    fn default() -> Self {
        Self::new(DEFAULT_QUEUE)
    }
}

impl Loopback {
    /// A loopback device whose queue holds at most `limit` frames.
    pub fn new(limit: usize) -> Loopback {
        Loopback { queue: VecDeque::new(), pool: Vec::new(), limit: limit.max(1), dropped: 0 }
    }

    /// Frames waiting to be received.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

impl phy::Device for Loopback {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = MTU;
        caps.checksum = ChecksumCapabilities::ignored();
        caps
    }

    fn receive(&mut self, _now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let buffer = self.queue.pop_front()?;
        let rx = RxToken { buffer, pool: &mut self.pool };
        let tx =
            TxToken { queue: &mut self.queue, pool: None, limit: self.limit, dropped: &mut self.dropped };
        Some((rx, tx))
    }

    fn transmit(&mut self, _now: Instant) -> Option<TxToken<'_>> {
        if self.queue.len() >= self.limit {
            self.dropped += 1;
            return None;
        }
        Some(TxToken {
            queue: &mut self.queue,
            pool: Some(&mut self.pool),
            limit: self.limit,
            dropped: &mut self.dropped,
        })
    }
}

impl NetDevice for Loopback {}

/// A received frame; its buffer returns to the pool when consumed.
pub struct RxToken<'a> {
    buffer: Vec<u8>,
    pool: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let r = f(&self.buffer);
        if self.pool.len() < POOL {
            self.pool.push(self.buffer);
        }
        r
    }
}

/// Room for one frame in the queue.
pub struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    /// `None` for the reply token handed out with a received frame (the pool is lent to the
    /// RX token then); such frames get a fresh buffer.
    pool: Option<&'a mut Vec<Vec<u8>>>,
    limit: usize,
    dropped: &'a mut u64,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buffer = self.pool.and_then(|p| p.pop()).unwrap_or_default();
        buffer.clear();
        buffer.resize(len, 0);
        let r = f(&mut buffer);
        if self.queue.len() < self.limit {
            self.queue.push_back(buffer);
        } else {
            *self.dropped += 1;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::iface::{Config, Interface, SocketSet};
    use smoltcp::phy::{Device, RxToken as _, TxToken as _};
    use smoltcp::socket::tcp;
    use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

    #[test]
    fn frames_come_back_in_order_and_buffers_are_reused() {
        let mut dev = Loopback::new(8);
        let t = Instant::from_millis(0);
        for i in 0..3u8 {
            dev.transmit(t).unwrap().consume(4, |b| b.fill(i));
        }
        assert_eq!(dev.queued(), 3);
        for i in 0..3u8 {
            let (rx, _tx) = dev.receive(t).unwrap();
            rx.consume(|b| assert_eq!(b, &[i; 4]));
        }
        assert!(dev.receive(t).is_none());
        assert_eq!(dev.pool.len(), 3);
        dev.transmit(t).unwrap().consume(2, |b| b.fill(9));
        assert_eq!(dev.pool.len(), 2, "a recycled buffer was used");
        let (rx, _) = dev.receive(t).unwrap();
        rx.consume(|b| assert_eq!(b, &[9, 9]));
    }

    #[test]
    fn a_full_queue_refuses_and_counts() {
        let mut dev = Loopback::new(2);
        let t = Instant::from_millis(0);
        dev.transmit(t).unwrap().consume(1, |_| ());
        dev.transmit(t).unwrap().consume(1, |_| ());
        assert!(dev.transmit(t).is_none());
        assert_eq!(dev.dropped, 1);
    }

    /// A TCP connection from the interface to itself: the device smoltcp's stack will run on.
    #[test]
    fn tcp_talks_to_itself() {
        let mut dev = Loopback::default();
        let mut iface = Interface::new(Config::new(HardwareAddress::Ip), &mut dev, Instant::from_millis(0));
        iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::v4(127, 0, 0, 1), 8)).unwrap());
        let buf = || tcp::SocketBuffer::new(vec![0; 65536]);
        let mut sockets = SocketSet::new(vec![]);
        let server = sockets.add(tcp::Socket::new(buf(), buf()));
        let client = sockets.add(tcp::Socket::new(buf(), buf()));
        sockets.get_mut::<tcp::Socket>(server).listen(7000).unwrap();
        sockets
            .get_mut::<tcp::Socket>(client)
            .connect(iface.context(), (IpAddress::v4(127, 0, 0, 1), 7000), 40000)
            .unwrap();
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        let mut now = Instant::from_millis(0);
        for _ in 0..10_000 {
            iface.poll(now, &mut dev, &mut sockets);
            let c = sockets.get_mut::<tcp::Socket>(client);
            if c.can_send() && sent < payload.len() {
                sent += c.send_slice(&payload[sent..]).unwrap();
            }
            let s = sockets.get_mut::<tcp::Socket>(server);
            if s.can_recv() {
                s.recv(|b| {
                    got.extend_from_slice(b);
                    (b.len(), ())
                })
                .unwrap();
            }
            if got.len() == payload.len() {
                break;
            }
            now += smoltcp::time::Duration::from_millis(1);
        }
        assert_eq!(got, payload);
        assert_eq!(dev.dropped, 0);
    }
}
