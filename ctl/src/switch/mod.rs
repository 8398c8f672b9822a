//! The software switch: the data plane between containers' virtual NICs.
//!
//! Owns the switch ends of the attached NICs ([`SwitchPort`]), each with the container's
//! [`Grants`], counters and an optional pcap capture. It must not touch the control protocol:
//! the daemon (re)configures ports through the switch's own channel ([`channel`], served by
//! [`service`]), which calls [`Switch::attach`], [`Switch::set_grants`] and
//! [`Switch::detach`].
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
//!
//! Secure bindings ([`bind`]: a private ring pair between two containers for one flow the
//! switch checked against both containers' grants) are made by [`Switch::bind`] and revoked
//! by [`Switch::set_grants`], [`Switch::attach`] (a port that takes over a bound flow's
//! route), [`Switch::detach`] and the run loops' collection of closed and lonely bindings.

pub mod bind;
pub mod channel;
pub mod pcap;
pub mod service;

use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{self, AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use arrakis_backends::emulator::filter::{Flow, Grants, ParseError};
use arrakis_backends::emulator::mss;
use arrakis_backends::emulator::ring::{PushError, SLOTS};
use arrakis_backends::emulator::tap::Tap;
use arrakis_backends::emulator::SwitchPort;
use rustix::event::epoll;

use pcap::PcapWriter;

/// Frames taken from one port per pass, so one busy container cannot starve the others.
pub const BUDGET: usize = 64;
/// Largest packet read from the uplink (IP's limit; the NICs' buffers hold it).
const UPLINK_MTU: usize = 65_536;
/// Default time the switch keeps polling after the last frame before it sleeps.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// Longest sleep in [`Switch::run`] before the stop flag is looked at again.
pub const SLEEP_CAP: Duration = Duration::from_millis(100);
/// After two spins in a row that found no frame, how many spins' length the switch goes
/// without spinning ([`SpinPolicy`]).
pub const SPIN_BACKOFF: u32 = 20;

/// Whether the switch polls after its work (as the library OS's device spin backs off): a
/// spin that ends without a frame is a miss; after two misses in a row no spin starts for
/// [`SPIN_BACKOFF`] spins' length, and the first one after that backs off again at once if it
/// misses. Under steady traffic the spins find frames and the senders ring nothing; frames
/// that come in bursts with gaps longer than a spin (fifty connections set up before their
/// bindings take over) no longer cost a spin's CPU each, which on a 2-CPU machine the
/// containers need.
#[derive(Debug, Default)]
pub struct SpinPolicy {
    misses: u32,
    quiet_until: Option<Instant>,
}

impl SpinPolicy {
    /// Whether a spin may start at `now`.
    pub fn may_spin(&self, now: Instant) -> bool {
        self.quiet_until.is_none_or(|t| now >= t)
    }

    /// A spin found a frame.
    pub fn hit(&mut self) {
        self.misses = 0;
        self.quiet_until = None;
    }

    /// A spin of length `spin` ended at `now` without a frame.
    pub fn miss(&mut self, now: Instant, spin: Duration) {
        self.misses = self.misses.saturating_add(1);
        if self.misses >= 2 {
            self.quiet_until = Some(now + spin * SPIN_BACKOFF);
        }
    }
}

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
    /// Live secure bindings the container holds a side of (its NIC slots in use).
    pub bindings: u64,
    /// Secure binding sides ever handed to the container.
    pub bound: u64,
}

/// A port's number in the switch.
pub type PortId = usize;

struct Port {
    name: String,
    nic: SwitchPort,
    grants: Grants,
    stats: PortStats,
    capture: Option<Capture>,
    /// Frames were pushed to its rx ring this pass: check whether it wants a doorbell.
    rx_dirty: bool,
    /// Its NIC slots that hold a binding.
    slots: bind::Slots,
}

/// A running capture: where it writes, how many frames it wrote and at most may write.
struct Capture {
    out: PcapWriter<Box<dyn Write + Send>>,
    frames: u64,
    limit: Option<u64>,
}

impl Port {
    fn capture(&mut self, frame: &[u8]) {
        if let Some(c) = &mut self.capture {
            if c.out.write(SystemTime::now(), frame).is_err() {
                // A capture that cannot be written (disk full, reader gone) stops; traffic goes on.
                self.capture = None;
                return;
            }
            c.frames += 1;
            if c.limit.is_some_and(|l| c.frames >= l) {
                let _ = c.out.flush();
                self.capture = None;
            }
        }
    }
}

/// First token of fds watched besides the doorbells ([`Switch::watch`]); port ids are below.
pub const FOREIGN: u64 = 1 << 32;

/// Epoll token of the uplink's tun fd (between the port ids and [`FOREIGN`]).
const UPLINK: u64 = FOREIGN - 1;

/// The uplink ([`Switch::set_uplink`]): a tun interface to the kernel's network, and its
/// counters ("tx": frames the switch sent out to the kernel, "rx": frames that came in).
struct Uplink {
    tap: Tap,
    stats: PortStats,
    /// The interface's MTU, to clamp the MSS of SYNs that cross it (`emulator::mss`), and
    /// when it was read: it is read again once a second, so `ip link set NAME mtu N` takes
    /// effect for the next connections.
    mtu: u32,
    mtu_read: Instant,
}

impl Uplink {
    /// How often the interface's MTU is read again.
    const MTU_EVERY: Duration = Duration::from_secs(1);

    /// Lowers the MSS of a TCP SYN in `packet` to what the interface carries.
    fn clamp_mss(&mut self, packet: &mut [u8]) {
        if self.mtu_read.elapsed() >= Self::MTU_EVERY {
            self.mtu_read = Instant::now();
            if let Ok(m) = self.tap.mtu() {
                self.mtu = m;
            }
        }
        mss::clamp(packet, self.mtu);
    }
}

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dest {
    Port(PortId),
    Uplink,
}

/// The switch: ports and the epoll set of their doorbells.
pub struct Switch {
    ports: Vec<Option<Port>>,
    uplink: Option<Uplink>,
    epoll: OwnedFd,
    scratch: Vec<u8>,
    /// How long [`run`](Self::run) keeps polling after the last frame.
    pub spin: Duration,
    /// Times [`run`](Self::run) went to sleep.
    pub sleeps: u64,
    /// Secure bindings ([`bind`](Self::bind)).
    bindings: bind::Table,
}

impl Switch {
    pub fn new() -> io::Result<Switch> {
        Ok(Switch {
            ports: Vec::new(),
            uplink: None,
            epoll: epoll::create(epoll::CreateFlags::CLOEXEC)?,
            scratch: Vec::new(),
            spin: DEFAULT_SPIN,
            sleeps: 0,
            bindings: bind::Table::new(),
        })
    }

    /// Connects the switch to the kernel's network through `tap` (see `emulator::tap`): a
    /// frame no container receives, addressed to none of the sender's own addresses and not
    /// to a loopback address, goes out there; a frame that comes in goes to the container
    /// whose grants receive it (on its uplink address), else it is dropped as `no-route`.
    pub fn set_uplink(&mut self, tap: Tap) -> io::Result<()> {
        if let Some(old) = self.uplink.take() {
            let _ = epoll::delete(&self.epoll, old.tap.as_fd());
        }
        epoll::add(&self.epoll, tap.as_fd(), epoll::EventData::new_u64(UPLINK), epoll::EventFlags::IN)?;
        if self.scratch.len() < UPLINK_MTU {
            self.scratch.resize(UPLINK_MTU, 0);
        }
        // Until the first read: Ethernet's MTU, what `ip tuntap add` gives.
        let mtu = tap.mtu().unwrap_or(1500);
        self.uplink = Some(Uplink { tap, stats: PortStats::default(), mtu, mtu_read: Instant::now() });
        Ok(())
    }

    /// The uplink's counters and name, if there is one.
    pub fn uplink_stats(&self) -> Option<(&str, PortStats)> {
        self.uplink.as_ref().map(|u| (u.tap.name(), u.stats))
    }

    /// Attaches a container's NIC with its grants. Slot words an earlier switch left in the
    /// region are cleared: this switch knows nothing of that switch's bindings, so they end
    /// here (their containers go back to the switch and may ask again).
    pub fn attach(&mut self, name: &str, nic: SwitchPort, grants: Grants) -> io::Result<PortId> {
        let id = self.ports.iter().position(Option::is_none).unwrap_or(self.ports.len());
        for i in 0..SLOTS {
            if let Some(w) = nic.region().slot(i) {
                if w.load(atomic::Ordering::Relaxed) != 0 {
                    w.store(0, atomic::Ordering::Release);
                }
            }
        }
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
            slots: bind::Slots::default(),
        };
        if id == self.ports.len() {
            self.ports.push(Some(port));
        } else {
            self.ports[id] = Some(port);
        }
        // The new port may receive a bound flow first, which moves the switch's routing.
        self.recheck_bindings(id);
        Ok(id)
    }

    /// Detaches a port, returning its NIC end (dropping it unmaps the region). Every binding
    /// it holds a side of is revoked first.
    pub fn detach(&mut self, id: PortId) -> Option<SwitchPort> {
        self.ports.get(id)?.as_ref()?;
        self.revoke_port_bindings(id);
        let port = self.ports.get_mut(id)?.take()?;
        let _ = epoll::delete(&self.epoll, port.nic.bell.as_fd());
        Some(port.nic)
    }

    /// Replaces a port's grants (a grant or a revocation); takes effect with the next frame.
    /// Bindings whose checks no longer pass are revoked before this returns.
    pub fn set_grants(&mut self, id: PortId, grants: Grants) -> bool {
        match self.ports.get_mut(id).and_then(Option::as_mut) {
            Some(p) => {
                p.grants = grants;
                self.recheck_bindings(id);
                true
            }
            None => false,
        }
    }

    /// A port's counters.
    pub fn stats(&self, id: PortId) -> Option<PortStats> {
        let p = self.ports.get(id)?.as_ref()?;
        let f = p.nic.faults();
        Some(PortStats { bad_desc: f.bad_desc, bad_index: f.bad_index, bindings: p.slots.count(), ..p.stats })
    }

    /// A port's name.
    pub fn name(&self, id: PortId) -> Option<&str> {
        Some(&self.ports.get(id)?.as_ref()?.name)
    }

    /// Starts capturing a port's frames (both directions, dropped ones included as sent),
    /// at most `limit` of them (then the capture stops by itself). Replaces a running one.
    pub fn capture(&mut self, id: PortId, out: Box<dyn Write + Send>, limit: Option<u64>) -> io::Result<()> {
        let p = self
            .ports
            .get_mut(id)
            .and_then(Option::as_mut)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such port"))?;
        p.capture = Some(Capture { out: PcapWriter::new(out)?, frames: 0, limit });
        Ok(())
    }

    /// Frames the port's running capture wrote, if one runs.
    pub fn capturing(&self, id: PortId) -> Option<u64> {
        self.ports.get(id)?.as_ref()?.capture.as_ref().map(|c| c.frames)
    }

    /// Stops a capture, flushing it; returns the frames it wrote (`None`: none was running).
    pub fn stop_capture(&mut self, id: PortId) -> io::Result<Option<u64>> {
        match self.ports.get_mut(id).and_then(Option::as_mut).and_then(|p| p.capture.take()) {
            Some(mut c) => c.out.flush().map(|()| Some(c.frames)),
            None => Ok(None),
        }
    }

    /// Adds a foreign fd (the control channel, its listener) to the switch's epoll set under
    /// `token` (at least [`FOREIGN`]); [`sleep`](Self::sleep) reports it when readable.
    pub fn watch(&mut self, fd: impl AsFd, token: u64) -> io::Result<()> {
        debug_assert!(token >= FOREIGN);
        Ok(epoll::add(&self.epoll, fd, epoll::EventData::new_u64(token), epoll::EventFlags::IN)?)
    }

    /// Removes a foreign fd added by [`watch`](Self::watch).
    pub fn unwatch(&mut self, fd: impl AsFd) {
        let _ = epoll::delete(&self.epoll, fd);
    }

    /// Waits at most `timeout` (zero: only looks) for doorbells and foreign fds; drains the
    /// doorbells and appends the tokens of foreign fds that are readable to `fired`.
    pub fn wait(&mut self, timeout: Duration, fired: &mut Vec<u64>) -> io::Result<()> {
        let mut events = Vec::with_capacity(64);
        let ts = rustix::event::Timespec {
            tv_sec: timeout.as_secs() as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        match epoll::wait(&self.epoll, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        for ev in &events {
            let token = ev.data.u64();
            if token >= FOREIGN {
                fired.push(token);
            } else if let Some(p) = self.ports.get(token as usize).and_then(Option::as_ref) {
                p.nic.bell.drain();
            }
        }
        Ok(())
    }

    /// Foreign fds that are readable now, without sleeping (for a busy loop to look at its
    /// control channel now and then).
    pub fn check(&mut self, fired: &mut Vec<u64>) -> io::Result<()> {
        self.wait(Duration::ZERO, fired)
    }

    /// The idle path: arms every port's tx ring, looks once more, and if all are still empty
    /// sleeps up to `cap` on the doorbells and foreign fds; then disarms. Foreign fds that
    /// woke it are appended to `fired`.
    pub fn sleep(&mut self, cap: Duration, fired: &mut Vec<u64>) -> io::Result<()> {
        // Arm every port, then look once more: a frame published before a port was armed
        // would otherwise never ring.
        let mut idle = true;
        for p in self.ports.iter_mut().flatten() {
            idle &= p.nic.tx.arm();
        }
        let r = if idle {
            self.sleeps += 1;
            self.wait(cap, fired)
        } else {
            Ok(())
        };
        for p in self.ports.iter_mut().flatten() {
            p.nic.tx.disarm();
        }
        r
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
                self.forward(src, &mut scratch[..len]);
            }
            moved += taken;
            if let Some(p) = self.ports[src].as_mut() {
                if taken > 0 && p.nic.tx.kick_needed() {
                    p.nic.peer.ring(); // the container waits for tx space
                }
            }
        }
        moved += self.poll_uplink(&mut scratch);
        for p in self.ports.iter_mut().flatten() {
            if std::mem::take(&mut p.rx_dirty) && p.nic.rx.kick_needed() {
                p.nic.peer.ring();
            }
        }
        self.scratch = scratch;
        moved
    }

    /// Takes up to [`BUDGET`] packets from the uplink and delivers each to the container whose
    /// grants receive it.
    fn poll_uplink(&mut self, scratch: &mut [u8]) -> usize {
        let Some(mut up) = self.uplink.take() else { return 0 };
        let mut taken = 0;
        while taken < BUDGET {
            let len = match up.tap.recv(scratch) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) => {
                    eprintln!("arrakis switch: uplink {}: {e}; it is closed", up.tap.name());
                    let _ = epoll::delete(&self.epoll, up.tap.as_fd());
                    return taken;
                }
            };
            taken += 1;
            up.clamp_mss(&mut scratch[..len]);
            let frame = &scratch[..len];
            up.stats.rx_frames += 1;
            up.stats.rx_bytes += len as u64;
            let dst = match Flow::parse(frame) {
                Ok(flow) => {
                    self.ports.iter().position(|p| p.as_ref().is_some_and(|p| p.grants.may_receive(&flow)))
                }
                // IPv6 neighbour discovery, ICMP and the like from the kernel: not switched.
                Err(ParseError::Malformed) => {
                    up.stats.drops.count(DropReason::Malformed);
                    continue;
                }
                Err(ParseError::Unsupported) => {
                    up.stats.drops.count(DropReason::Unsupported);
                    continue;
                }
            };
            let Some(d) = dst.and_then(|i| self.ports[i].as_mut()) else {
                up.stats.drops.count(DropReason::NoRoute);
                continue;
            };
            match d.nic.rx.push_copy(frame) {
                Ok(()) => {
                    d.stats.rx_frames += 1;
                    d.stats.rx_bytes += len as u64;
                    d.rx_dirty = true;
                    d.capture(frame);
                }
                Err(PushError::Full | PushError::TooLong) => d.stats.drops.count(DropReason::QueueFull),
            }
        }
        self.uplink = Some(up);
        taken
    }

    /// Sends a frame from port `src` where [`route`](Self::route) says; a frame that leaves
    /// through the uplink may have its MSS clamped first (`frame` is the switch's copy).
    fn forward(&mut self, src: PortId, frame: &mut [u8]) {
        let verdict = self.route(src, frame);
        let Some(s) = self.ports[src].as_mut() else { return };
        s.capture(frame);
        s.stats.tx_frames += 1;
        s.stats.tx_bytes += frame.len() as u64;
        let dst = match verdict {
            Ok(Dest::Port(dst)) => dst,
            Ok(Dest::Uplink) => {
                let Some(up) = self.uplink.as_mut() else { return };
                up.clamp_mss(frame);
                match up.tap.send(frame) {
                    Ok(true) => {
                        up.stats.tx_frames += 1;
                        up.stats.tx_bytes += frame.len() as u64;
                    }
                    // The interface is down or its queue full: dropped as a NIC would.
                    Ok(false) | Err(_) => up.stats.drops.count(DropReason::QueueFull),
                }
                return;
            }
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
    fn route(&self, src: PortId, frame: &[u8]) -> Result<Dest, DropReason> {
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
        if let Some(i) =
            self.ports.iter().position(|p| p.as_ref().is_some_and(|p| p.grants.may_receive(&flow)))
        {
            return Ok(Dest::Port(i));
        }
        // Out through the uplink: never a loopback destination or one of the sender's own
        // addresses (the kernel would route it straight back).
        let dst = flow.dst.ip();
        if self.uplink.is_some()
            && !dst.is_loopback()
            && !dst.is_unspecified()
            && !sender.grants.addrs.contains(&dst)
        {
            return Ok(Dest::Uplink);
        }
        Err(DropReason::NoRoute)
    }

    /// Runs until `stop` is set: polls while busy, spins [`spin`](Self::spin) after the last
    /// frame, then sleeps on the doorbells.
    // The switch process runs `service::Service::run`, which adds the control channel; this
    // plain loop is the tests'.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn run(&mut self, stop: &AtomicBool) -> io::Result<()> {
        let mut last_work = Instant::now();
        let mut fired = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            self.maybe_gc_bindings();
            if self.poll() > 0 {
                last_work = Instant::now();
                continue;
            }
            if last_work.elapsed() < self.spin {
                std::hint::spin_loop();
                continue;
            }
            fired.clear();
            self.sleep(SLEEP_CAP, &mut fired)?;
            last_work = Instant::now();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
