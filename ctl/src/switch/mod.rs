//! The software switch: the data plane between containers' virtual NICs.
//!
//! Owns the switch ends of the attached NICs ([`SwitchPort`]), each with the container's
//! [`Grants`], counters and an optional pcap capture. It must not touch the control protocol:
//! the daemon (re)configures ports through [`Switch::attach`], [`Switch::set_grants`] and
//! [`Switch::detach`] (wired up when the daemon and switch are merged).
//!
//! One pass ([`Switch::poll`]) takes up to [`BUDGET`] frames from each port's tx ring, copies
//! each once into private memory (the container may be rewriting its buffer), and forwards it:
//!
//! 1. [`Flow::parse`] — a frame that is not IPv4/IPv6 with a whole TCP/UDP header is dropped
//!    as `malformed`; ICMP, other protocols and non-first fragments as `unsupported`.
//! 2. The sender's grants must allow sending from the frame's source address and port to its
//!    destination — else `src-not-granted` (a container cannot send from a port, or an
//!    address, it was not granted).
//! 3. The first port whose grants allow receiving on the destination address and port from
//!    the source gets the frame — none: `no-route`. Its rx ring full: `queue-full`, counted on
//!    the receiver (a switch with a full output queue drops; TCP recovers).
//!
//! Doorbells are written once per pass per port that asked, never per frame.
//!
//! [`Switch::run`] polls while there is work and for a short spin after, then arms every
//! port's tx ring, checks once more and sleeps in `epoll_wait` on all the ports' doorbells
//! (with a timeout, to notice the stop flag): an idle switch costs no CPU.

// The daemon attaches ports once merged; until then only the tests drive the switch.
#![cfg_attr(not(test), allow(dead_code))]

pub mod pcap;

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arrakis_backends::emulator::filter::{Flow, Grants, ParseError};
use arrakis_backends::emulator::ring::PushError;
use arrakis_backends::emulator::SwitchPort;
use rustix::event::epoll;

use pcap::PcapWriter;

/// Frames taken from one port per pass, so one busy container cannot starve the others.
pub const BUDGET: usize = 64;
/// Default time the switch keeps polling after the last frame before it sleeps.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// Longest sleep in [`Switch::run`] before the stop flag is looked at again.
const SLEEP_CAP: Duration = Duration::from_millis(100);

/// Why a frame was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    SrcNotGranted,
    NoRoute,
    Malformed,
    Unsupported,
    QueueFull,
}

impl DropReason {
    /// The name shown by `arrakis stats`.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SrcNotGranted => "src-not-granted",
            DropReason::NoRoute => "no-route",
            DropReason::Malformed => "malformed",
            DropReason::Unsupported => "unsupported",
            DropReason::QueueFull => "queue-full",
        }
    }
}

/// Drops of one container, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    pub src_not_granted: u64,
    pub no_route: u64,
    pub malformed: u64,
    pub unsupported: u64,
    pub queue_full: u64,
}

impl Drops {
    fn count(&mut self, why: DropReason) {
        *match why {
            DropReason::SrcNotGranted => &mut self.src_not_granted,
            DropReason::NoRoute => &mut self.no_route,
            DropReason::Malformed => &mut self.malformed,
            DropReason::Unsupported => &mut self.unsupported,
            DropReason::QueueFull => &mut self.queue_full,
        } += 1;
    }
}

/// Counters of one container's port. "tx" is what the container sent, "rx" what it got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortStats {
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub drops: Drops,
    /// Ring descriptors or indices the container corrupted (see `emulator::ring`).
    pub bad_desc: u64,
    pub bad_index: u64,
}

/// A port's number in the switch.
pub type PortId = usize;

struct Port {
    name: String,
    nic: SwitchPort,
    grants: Grants,
    stats: PortStats,
    capture: Option<PcapWriter<Box<dyn Write + Send>>>,
    /// Frames were pushed to its rx ring this pass: check whether it wants a doorbell.
    rx_dirty: bool,
}

impl Port {
    fn capture(&mut self, frame: &[u8]) {
        if let Some(w) = &mut self.capture {
            if w.write(SystemTime::now(), frame).is_err() {
                // A capture that cannot be written (disk full, reader gone) stops; traffic goes on.
                self.capture = None;
            }
        }
    }
}

/// The switch: ports and the epoll set of their doorbells.
pub struct Switch {
    ports: Vec<Option<Port>>,
    epoll: OwnedFd,
    scratch: Vec<u8>,
    /// How long [`run`](Self::run) keeps polling after the last frame.
    pub spin: Duration,
    /// Times [`run`](Self::run) went to sleep.
    pub sleeps: u64,
}

impl Switch {
    pub fn new() -> io::Result<Switch> {
        Ok(Switch {
            ports: Vec::new(),
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            scratch: Vec::new(),
            spin: DEFAULT_SPIN,
            sleeps: 0,
        })
    }

    /// Attaches a container's NIC with its grants.
    pub fn attach(&mut self, name: &str, nic: SwitchPort, grants: Grants) -> io::Result<PortId> {
        let id = self.ports.iter().position(Option::is_none).unwrap_or(self.ports.len());
        epoll::add(
            &self.epoll,
            nic.bell.as_fd(),
            epoll::EventData::new_u64(id as u64),
            epoll::EventFlags::IN,
        )?;
        let max = nic.rx.max_frame();
        if self.scratch.len() < max {
            self.scratch.resize(max, 0);
        }
        let port = Port {
            name: name.to_owned(),
            nic,
            grants,
            stats: PortStats::default(),
            capture: None,
            rx_dirty: false,
        };
        if id == self.ports.len() {
            self.ports.push(Some(port));
        } else {
            self.ports[id] = Some(port);
        }
        Ok(id)
    }

    /// Detaches a port, returning its NIC end (dropping it unmaps the region).
    pub fn detach(&mut self, id: PortId) -> Option<SwitchPort> {
        let port = self.ports.get_mut(id)?.take()?;
        let _ = epoll::delete(&self.epoll, port.nic.bell.as_fd());
        Some(port.nic)
    }

    /// Replaces a port's grants (a grant or a revocation); takes effect with the next frame.
    pub fn set_grants(&mut self, id: PortId, grants: Grants) -> bool {
        match self.ports.get_mut(id).and_then(Option::as_mut) {
            Some(p) => {
                p.grants = grants;
                true
            }
            None => false,
        }
    }

    /// A port's counters.
    pub fn stats(&self, id: PortId) -> Option<PortStats> {
        let p = self.ports.get(id)?.as_ref()?;
        let f = p.nic.faults();
        Some(PortStats { bad_desc: f.bad_desc, bad_index: f.bad_index, ..p.stats })
    }

    /// A port's name.
    pub fn name(&self, id: PortId) -> Option<&str> {
        Some(&self.ports.get(id)?.as_ref()?.name)
    }

    /// Starts capturing a port's frames (both directions, dropped ones included as sent).
    pub fn capture(&mut self, id: PortId, out: Box<dyn Write + Send>) -> io::Result<()> {
        let p = self
            .ports
            .get_mut(id)
            .and_then(Option::as_mut)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such port"))?;
        p.capture = Some(PcapWriter::new(out)?);
        Ok(())
    }

    /// Stops a capture, flushing it.
    pub fn stop_capture(&mut self, id: PortId) -> io::Result<()> {
        match self.ports.get_mut(id).and_then(Option::as_mut).and_then(|p| p.capture.take()) {
            Some(mut w) => w.flush(),
            None => Ok(()),
        }
    }

    /// One pass over all ports; returns the frames taken.
    pub fn poll(&mut self) -> usize {
        let mut scratch = std::mem::take(&mut self.scratch);
        let mut moved = 0;
        for src in 0..self.ports.len() {
            let mut taken = 0;
            while taken < BUDGET {
                let Some(p) = self.ports[src].as_mut() else { break };
                let Some(len) = p.nic.tx.recv_copy(&mut scratch) else { break };
                taken += 1;
                self.forward(src, &scratch[..len]);
            }
            moved += taken;
            if let Some(p) = self.ports[src].as_mut() {
                if taken > 0 && p.nic.tx.kick_needed() {
                    p.nic.peer.ring(); // the container waits for tx space
                }
            }
        }
        for p in self.ports.iter_mut().flatten() {
            if std::mem::take(&mut p.rx_dirty) && p.nic.rx.kick_needed() {
                p.nic.peer.ring();
            }
        }
        self.scratch = scratch;
        moved
    }

    fn forward(&mut self, src: PortId, frame: &[u8]) {
        let verdict = self.route(src, frame);
        let Some(s) = self.ports[src].as_mut() else { return };
        s.capture(frame);
        s.stats.tx_frames += 1;
        s.stats.tx_bytes += frame.len() as u64;
        let dst = match verdict {
            Ok(dst) => dst,
            Err(why) => return s.stats.drops.count(why),
        };
        let Some(d) = self.ports[dst].as_mut() else { return };
        match d.nic.rx.push_copy(frame) {
            Ok(()) => {
                d.stats.rx_frames += 1;
                d.stats.rx_bytes += frame.len() as u64;
                d.rx_dirty = true;
                d.capture(frame);
            }
            Err(PushError::Full | PushError::TooLong) => d.stats.drops.count(DropReason::QueueFull),
        }
    }

    /// The port a frame from `src` goes to, or why it goes nowhere.
    fn route(&self, src: PortId, frame: &[u8]) -> Result<PortId, DropReason> {
        let flow = Flow::parse(frame).map_err(|e| match e {
            ParseError::Malformed => DropReason::Malformed,
            ParseError::Unsupported => DropReason::Unsupported,
        })?;
        let sender = self.ports[src].as_ref().ok_or(DropReason::NoRoute)?;
        if !sender.grants.may_send(&flow) {
            return Err(DropReason::SrcNotGranted);
        }
        // A linear scan: fine for tens of containers; an index by (proto, port) comes with
        // the daemon's bulk grants.
        self.ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| p.grants.may_receive(&flow)))
            .ok_or(DropReason::NoRoute)
    }

    /// Runs until `stop` is set: polls while busy, spins [`spin`](Self::spin) after the last
    /// frame, then sleeps on the doorbells.
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut last_work = Instant::now();
        let mut events = Vec::with_capacity(64);
        while !stop.load(Ordering::Relaxed) {
            if self.poll() > 0 {
                last_work = Instant::now();
                continue;
            }
            if last_work.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            // Arm every port, then look once more: a frame published before a port was armed
            // would otherwise never ring.
            let mut idle = true;
            for p in self.ports.iter_mut().flatten() {
                idle &= p.nic.tx.arm();
            }
            if idle {
                self.sleeps += 1;
                let ts = rustix::event::Timespec { tv_sec: 0, tv_nsec: SLEEP_CAP.as_nanos() as i64 };
                events.clear();
                match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
                    Ok(_) | Err(rustix::io::Errno::INTR) => {}
                    Err(e) => return Err(e.into()),
                }
                for ev in &events {
                    let id = ev.data.u64() as usize;
                    if let Some(p) = self.ports.get(id).and_then(Option::as_ref) {
                        p.nic.bell.drain();
                    }
                }
            }
            for p in self.ports.iter_mut().flatten() {
                p.nic.tx.disarm();
            }
            last_work = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
