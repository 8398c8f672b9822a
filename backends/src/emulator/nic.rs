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

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::binding::{self, BindingFds, BindingInfo};
use super::filter::{Flow, TCP_FIN as FIN, TCP_RST as RST, TCP_SYN as SYN};
use super::ring::{
    Consumer, Doorbell, Geometry, Producer, Region, Ring, RingError, RingFaults, RingProbe, SLOTS,
};
use super::ring::{Summary, MAX_IP_PACKET, SUMMARY_WORDS};
use crate::hash::FastMap;
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

/// Frames a flow sends through the switch before the NIC asks for a binding for it: short
/// exchanges (a lookup, a one-request connection) never cost the daemon a call.
pub const BIND_AFTER: u32 = 4;
/// A flow (bound or not) with no frame sent for this long is forgotten (UDP has no end).
const FLOW_IDLE_MS: i64 = 60_000;
/// A TCP flow that sent its FIN (or a RST) and then nothing for this long is forgotten.
const FLOW_CLOSING_MS: i64 = 2_000;
/// Flows tracked at most; past it the unbound ones are forgotten.
const MAX_FLOWS: usize = 4096;
/// Bindings held at most (the switch's slot table has [`SLOTS`]).
const MAX_BOUND: usize = SLOTS;
/// With more flows than this (bound or not, until they end or go idle) a NIC closes its
/// bindings and asks for none. It was 16 while every frame paid the switch's doorbells and
/// the poll sleepers' eventfds (a server polling fifty binding rings served less than with
/// the switch batching its frames then); with those gone, fifty bound connections beat the
/// switch: memcslap at 50 against memcached 0.52–0.58× → 0.69–0.74× the kernel path, redis
/// SET at 50 with `appendfsync always` on a VSA 51–61k → 92–100k req/s (BENCHMARKS.md). The
/// bound: a pass of the stack looks at every binding's ring (a load of the peer's index each).
pub const MANY_FLOWS: usize = 128;
/// Looks for idle flows at most this often (ms of the stack's clock).
const SWEEP_MS: i64 = 1_000;
/// A binding whose flow both ends closed (FIN or RST each way), with nothing waiting on it
/// and nothing sent for this long, is closed at once rather than after [`FLOW_CLOSING_MS`]:
/// every pass of the stack looks at each binding's ring, and a program that opens fifty
/// connections just after closing fifty (redis-benchmark's GET after its SET) paid for the
/// fifty dead rings on every call (half the client's CPU). A late frame of the flow goes
/// through the switch; one the peer put on the ring just as it closed is lost, and TCP sends
/// it again (after both FINs, only a last ACK or a FIN again).
const BOUND_CLOSED_MS: i64 = 20;
/// With such bindings, the sweep for them runs at most this often (ms).
const CLOSED_SWEEP_MS: i64 = 10;

/// What the NIC knows about a flow that is not bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlowState {
    /// Frames sent so far.
    Counting(u32),
    /// A binding was asked for ([`EmulatorNic::take_wanted`]).
    Requested,
    /// The switch said no: the flow stays on the switch.
    Refused,
}

#[derive(Clone, Copy, Debug)]
struct Tracked {
    state: FlowState,
    last: Instant,
    closing: bool,
}

/// One flow's private ring pair (see [`binding`](super::binding)).
#[derive(Debug)]
struct Bound {
    /// The flow as this container sends it.
    flow: Flow,
    info: BindingInfo,
    region: Arc<Region>,
    tx: Producer,
    rx: Consumer,
    /// Wakes the peer container.
    peer: Arc<Doorbell>,
    /// The pair's summary page (this container's role in it and the binding's bit are
    /// `info`'s).
    pair: Arc<Summary>,
    /// Frames of the flow go on the binding now (it started once the NIC's tx ring was empty,
    /// so nothing sent earlier through the switch arrives after them).
    active: bool,
    last: Instant,
    closing: bool,
    /// The peer sent its FIN or a RST on the binding.
    peer_closing: bool,
}

impl Bound {
    fn other(&self) -> usize {
        1 - usize::from(self.info.side)
    }

    fn word(&self, i: usize) -> u32 {
        self.region.slot(i).map_or(0, |w| w.load(Ordering::Acquire))
    }

    /// The peer mapped the binding and has not closed it.
    fn peer_ready(&self) -> bool {
        self.word(binding::ATTACHED + self.other()) != 0 && self.word(binding::CLOSED + self.other()) == 0
    }

    /// Tells the switch (and the peer) this side is done with it.
    fn close(&self) {
        if let Some(w) = self.region.slot(binding::CLOSED + usize::from(self.info.side)) {
            w.store(1, Ordering::Release);
        }
    }
}

/// What the NIC's bindings did (for tests and `arrakis`'s own counters).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BindStats {
    /// Bindings installed.
    pub installed: u64,
    /// Bindings dropped because the switch revoked them (slot word no longer the id).
    pub revoked: u64,
    /// Bindings closed by this side (its flow ended or went idle).
    pub closed: u64,
    /// Frames sent on bindings.
    pub tx_frames: u64,
    /// Frames that found their binding's ring full and went through the switch.
    pub tx_full: u64,
    /// Frames received on bindings.
    pub rx_frames: u64,
    /// Frames on a binding that were not of its flow, dropped.
    pub rx_foreign: u64,
}

/// Why [`EmulatorNic::install_binding`] did not install a binding.
#[derive(Debug)]
pub enum BindError {
    /// The region is not a valid binding region.
    Region(RingError),
    /// The reply's side or slot is out of range, or the slot does not hold the id (the switch
    /// revoked it already).
    Info(BindingInfo),
    /// The flow was not waiting for a binding any more (it ended meanwhile, or is bound).
    Stale,
    /// This NIC holds [`SLOTS`] bindings already.
    Full,
}

impl fmt::Display for BindError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindError::Region(e) => write!(f, "binding region refused: {e}"),
            BindError::Info(i) => write!(f, "binding {i:?} is not (or no longer) valid on this NIC"),
            BindError::Stale => write!(f, "the flow no longer waits for a binding"),
            BindError::Full => write!(f, "this NIC holds {MAX_BOUND} bindings already"),
        }
    }
}

impl std::error::Error for BindError {}

/// What waiting threads poll without the NIC ([`EmulatorNic::rx_probe`]): the NIC's rx ring,
/// and the summary pages of the pairs it has bindings in (with this container's role), which
/// announce every frame put on a binding.
#[derive(Debug)]
struct ProbeSet {
    nic: RingProbe,
    /// Read by every spinning thread on every turn and by each nonblocking receive: an
    /// `ArcSwap`, whose loads write only thread-local slots (a `RwLock`'s read count is one
    /// cache line all readers write), replaced whole when a pair's page comes or goes.
    pages: ArcSwap<PageList>,
}

/// The summary pages a NIC's probe reads, each with this container's role in it.
type PageList = Vec<(Arc<Summary>, usize)>;

/// A probe of every ring frames reach this container on; see [`RingProbe`].
#[derive(Debug, Clone)]
pub struct DeviceProbe(Arc<ProbeSet>);

impl DeviceProbe {
    fn pages(&self) -> arc_swap::Guard<Arc<PageList>> {
        self.0.pages.load()
    }

    /// Whether frames wait on the rx ring or were announced on a binding.
    pub fn pending(&self) -> bool {
        self.0.nic.pending() || self.pages().iter().any(|(p, role)| p.any(*role))
    }

    /// While this thread polls, producers need not ring (see [`RingProbe::suppress`] and
    /// [`Summary::set_waiting`]).
    pub fn suppress(&self) {
        self.0.nic.suppress();
        self.pages().iter().for_each(|(p, role)| p.set_waiting(*role, false));
    }

    /// The poller stops: producers ring again; `true` if a frame came in meanwhile.
    pub fn rearm(&self) -> bool {
        let mut any = self.0.nic.rearm();
        for (p, role) in self.pages().iter() {
            p.set_waiting(*role, true);
            any |= p.any(*role);
        }
        any
    }
}

/// A pair's summary page as this NIC holds it (see [`Summary`]).
#[derive(Debug)]
struct PairPage {
    page: Arc<Summary>,
    /// The file's identity: later bindings with the same pair bring the same page again.
    id: (u64, u64),
    /// This container's role in the page.
    role: usize,
    /// Bits taken from the page whose bindings may still hold frames.
    taken: [u64; SUMMARY_WORDS],
    /// The binding (index into `Links::slots`) of each bit; [`NO_BINDING`] for none.
    slot_of: Vec<usize>,
    /// Where the next look at `taken` starts (fairness between the pair's bindings).
    cursor: usize,
    /// Bindings of this NIC that use the page. A page without any stays (its index in
    /// `Links::pairs` with it) until the next sweep or install (`Links::prune_pages`).
    users: usize,
}

/// No binding at this bit of a [`PairPage`].
const NO_BINDING: usize = usize::MAX;

/// The first bit set in `bits` at or after `from`, else the first one; `None` if none is.
fn next_bit(bits: &[u64; SUMMARY_WORDS], from: usize) -> Option<usize> {
    let from = if from >= SUMMARY_WORDS * 64 { 0 } else { from };
    let (w0, b0) = (from / 64, from % 64);
    let first = bits[w0] & (u64::MAX << b0);
    if first != 0 {
        return Some(w0 * 64 + first.trailing_zeros() as usize);
    }
    (1..=SUMMARY_WORDS)
        .map(|k| (w0 + k) % SUMMARY_WORDS)
        .find_map(|w| (bits[w] != 0).then(|| w * 64 + bits[w].trailing_zeros() as usize))
}

/// The sending side of the NIC: its tx ring, and everything that decides where a frame goes
/// (the bindings and the flows that may get one).
#[derive(Debug)]
struct Links {
    /// The NIC's own region: the switch writes the bindings' slot words there.
    nic: Arc<Region>,
    kicks: u64,
    enabled: bool,
    /// [`EmulatorNic::receive`] looks at the bindings' rings (see
    /// [`EmulatorNic::set_binding_rx`]).
    scan: bool,
    /// The summary pages of the pairs this NIC has bindings in.
    pairs: Vec<PairPage>,
    /// The page the next scan starts with.
    pair_cursor: usize,
    flows: FastMap<Flow, Tracked>,
    /// Bindings by slot of `slots`; `index` maps a flow (as sent) to its slot.
    slots: Vec<Option<Bound>>,
    index: FastMap<Flow, usize>,
    wanted: Vec<Flow>,
    /// Peers to ring after the pass ([`EmulatorNic::take_rings`]): (the peer's number, a binding to it).
    peer_kicks: Vec<(u32, usize)>,
    probes: Arc<ProbeSet>,
    stats: BindStats,
    last_sweep: Instant,
    /// The last sweep of bindings closed at both ends ([`BOUND_CLOSED_MS`]).
    last_closed_sweep: Instant,
}

impl Links {
    fn live(&self, b: &Bound) -> bool {
        self.nic.slot(b.info.slot as usize).is_some_and(|w| w.load(Ordering::Acquire) == b.info.id)
    }

    /// Whether this NIC has too many flows for bindings to pay ([`MANY_FLOWS`]).
    fn many(&self) -> bool {
        self.flows.len() + self.index.len() > MANY_FLOWS
    }

    fn refresh_probes(&self) {
        let v = self.pairs.iter().map(|p| (p.page.clone(), p.role)).collect();
        self.probes.pages.store(Arc::new(v));
    }

    /// Drops binding `i`; `close` tells the switch this side is done (else it was revoked).
    fn drop_binding(&mut self, i: usize, close: bool) {
        if let Some(b) = self.slots.get_mut(i).and_then(Option::take) {
            self.index.remove(&b.flow);
            if let Some(p) = self.pairs.iter_mut().find(|p| Arc::ptr_eq(&p.page, &b.pair)) {
                let bit = b.info.bit as usize;
                if p.slot_of.get(bit) == Some(&i) {
                    p.slot_of[bit] = NO_BINDING;
                }
                p.users -= 1;
            }
            if close {
                b.close();
                self.stats.closed += 1;
            } else {
                self.stats.revoked += 1;
            }
            self.refresh_probes();
        }
    }

    /// Sends `frame` (built in the NIC's tx buffer) on its flow's binding if it has a usable
    /// one; `true` if it did (the NIC slot is then not published). Otherwise notes the flow,
    /// which may ask for a binding.
    fn send_bound(&mut self, frame: &[u8], now: Instant, nic_drained: bool) -> bool {
        if !self.enabled {
            return false;
        }
        let Ok((flow, flags)) = Flow::parse_with_flags(frame) else { return false };
        let ends = flags & (FIN | RST) != 0;
        self.sweep(now);
        if let Some(&i) = self.index.get(&flow) {
            let live = self.slots[i].as_ref().is_some_and(|b| self.live(b));
            if !live {
                self.drop_binding(i, false);
                return false;
            }
            let Some(b) = self.slots[i].as_mut() else { return false };
            b.last = now;
            b.closing |= ends;
            let mut sent = false;
            if b.peer_ready() && (b.active || nic_drained) {
                match b.tx.push_copy(frame) {
                    Ok(()) => {
                        b.active = true;
                        sent = true;
                        self.stats.tx_frames += 1;
                        // Announced in the peer's bitmap of the pair's page (after the ring's
                        // head), then rung once per peer after the stack's pass (`take_rings`)
                        // if it asked: fifty connections to one server would otherwise write
                        // its doorbell fifty times for one burst of requests.
                        let peer_role = 1 - usize::from(b.info.role);
                        b.pair.mark(peer_role, b.info.bit as usize);
                        if b.pair.waiting(peer_role)
                            && !self.peer_kicks.iter().any(|&(p, _)| p == b.info.peer)
                            && b.pair.claim_ring(peer_role)
                        {
                            self.peer_kicks.push((b.info.peer, i));
                        }
                    }
                    Err(_) => self.stats.tx_full += 1,
                }
            }
            return sent;
        }
        if self.flows.len() >= MAX_FLOWS && !self.flows.contains_key(&flow) {
            self.flows.retain(|_, t| t.state == FlowState::Requested);
        }
        let many = self.many();
        if many && !self.index.is_empty() {
            for i in 0..self.slots.len() {
                if let Some(b) = self.slots[i].as_ref() {
                    // Still a flow of this NIC (it counts), on the switch from now on.
                    let t = Tracked { state: FlowState::Refused, last: b.last, closing: b.closing };
                    self.flows.insert(b.flow, t);
                }
                self.drop_binding(i, true);
            }
        }
        let t = self.flows.entry(flow).or_insert(Tracked {
            state: FlowState::Counting(0),
            last: now,
            closing: false,
        });
        t.last = now;
        t.closing |= ends;
        if let FlowState::Counting(n) = t.state {
            // A connection's opening segments are not traffic yet.
            let n = if flags & SYN != 0 { n } else { n + 1 };
            t.state = if n >= BIND_AFTER && !t.closing && !many {
                self.wanted.push(flow);
                FlowState::Requested
            } else {
                FlowState::Counting(n)
            };
        }
        false
    }

    /// Closes the bindings whose flow both ends closed, with nothing waiting on them and
    /// nothing sent for [`BOUND_CLOSED_MS`]; at most every [`CLOSED_SWEEP_MS`].
    fn sweep_closed(&mut self, now: Instant) {
        if (now - self.last_closed_sweep).total_millis() < CLOSED_SWEEP_MS as u64
            && now >= self.last_closed_sweep
        {
            return;
        }
        self.last_closed_sweep = now;
        let done = |b: &Bound| {
            b.closing
                && b.peer_closing
                && now >= b.last
                && (now - b.last).total_millis() >= BOUND_CLOSED_MS as u64
                && !b.rx.pending()
        };
        for i in 0..self.slots.len() {
            if self.slots[i].as_ref().is_some_and(done) {
                self.drop_binding(i, true);
            }
        }
    }

    /// Forgets flows and closes bindings that ended or went idle, at most once a second.
    fn sweep(&mut self, now: Instant) {
        if (now - self.last_sweep).total_millis() < SWEEP_MS as u64 && now >= self.last_sweep {
            self.sweep_closed(now);
            return;
        }
        self.last_sweep = now;
        self.prune_pages();
        let done = |last: Instant, closing: bool| {
            let idle = if now >= last { (now - last).total_millis() as i64 } else { 0 };
            idle >= if closing { FLOW_CLOSING_MS } else { FLOW_IDLE_MS }
        };
        self.flows.retain(|_, t| !done(t.last, t.closing));
        let ended: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.as_ref().filter(|b| done(b.last, b.closing)).map(|_| i))
            .collect();
        for i in ended {
            self.drop_binding(i, true);
        }
    }

    /// Forgets the summary pages no binding uses any more.
    fn prune_pages(&mut self) {
        if self.pairs.iter().any(|p| p.users == 0) {
            self.pairs.retain(|p| p.users != 0);
            self.refresh_probes();
        }
    }

    /// Takes the next frame waiting on a binding into `out` (a valid frame of that binding's
    /// flow); its length. Looks only at the bindings whose bits the pairs' summary pages
    /// announced (taken into each page's `taken`; a bit stays there until its ring is found
    /// empty), page after page and bit after bit from where the last frame came, so no
    /// binding starves the others.
    fn recv_bound(&mut self, out: &mut [u8]) -> Option<usize> {
        let np = self.pairs.len();
        for k in 0..np {
            // Pages stay at their index while this runs (`PairPage::users`).
            let p = (self.pair_cursor + k) % np;
            let pp = &mut self.pairs[p];
            pp.page.clear_rung(pp.role);
            for w in 0..SUMMARY_WORDS {
                pp.taken[w] |= pp.page.take(pp.role, w);
            }
            // Bounded: each round takes a frame (and returns) or clears a bit.
            while let Some(bit) = next_bit(&self.pairs[p].taken, self.pairs[p].cursor) {
                let i = self.pairs[p].slot_of[bit];
                let got = if i == NO_BINDING { None } else { self.take_from(i, out) };
                let pp = &mut self.pairs[p];
                match got {
                    Some(len) => {
                        pp.cursor = bit + 1;
                        self.pair_cursor = p;
                        return Some(len);
                    }
                    None => pp.taken[bit / 64] &= !(1 << (bit % 64)),
                }
            }
        }
        None
    }

    /// Takes the next valid frame of binding `i`'s flow from its ring (frames not of the flow
    /// are dropped and counted); `None` once the ring is empty, or the binding was revoked
    /// (then dropped).
    fn take_from(&mut self, i: usize, out: &mut [u8]) -> Option<usize> {
        while let Some(b) = self.slots.get(i)?.as_ref() {
            if !b.rx.pending() {
                return None;
            }
            let (live, want) = (self.live(b), b.flow.reversed());
            if !live {
                // Revoked: nothing more is taken from it.
                self.drop_binding(i, false);
                return None;
            }
            let b = self.slots[i].as_mut()?;
            let len = b.rx.recv_copy(out)?;
            if b.rx.kick_needed() && !self.peer_kicks.iter().any(|&(p, _)| p == b.info.peer) {
                // The peer waits for room on this binding: rung with the others after the
                // pass.
                self.peer_kicks.push((b.info.peer, i));
            }
            if let Ok((flow, flags)) = Flow::parse_with_flags(&out[..len]) {
                if flow == want {
                    if flags & (FIN | RST) != 0 {
                        if let Some(b) = self.slots[i].as_mut() {
                            b.peer_closing = true;
                        }
                    }
                    self.stats.rx_frames += 1;
                    return Some(len);
                }
            }
            self.stats.rx_foreign += 1;
        }
        None
    }
}

/// The container's end of a virtual NIC: IP medium, MTU = the buffer size, checksums
/// computed and verified by the stack (frames may leave the host through the uplink).
///
/// Besides the NIC's own ring pair it holds the container's secure bindings
/// ([`binding`](super::binding)): a frame whose flow has a usable binding goes on it instead
/// of the tx ring, and frames are taken from the bindings' rings after the rx ring's. Flows
/// that have sent [`BIND_AFTER`] frames are offered to the library OS
/// ([`take_wanted`](Self::take_wanted)), which asks the daemon and installs what it gets
/// ([`install_binding`](Self::install_binding)).
#[derive(Debug)]
pub struct EmulatorNic {
    tx: Producer,
    rx: Consumer,
    bell: Doorbell,
    /// Rings the switch.
    switch: Arc<Doorbell>,
    /// The switch asked for a doorbell and a frame (or room) is there for it: rung by
    /// [`take_rings`](Self::take_rings)'s caller, after the pass.
    switch_due: AtomicBool,
    /// The stack's MTU: the buffers' size, at most [`MAX_IP_PACKET`].
    mtu: usize,
    /// The largest frame the rings carry (the buffers' size): UDP datagrams the library OS
    /// writes itself may use all of it (an IPv6 datagram of 65,527 bytes is 65,575).
    max_frame: usize,
    /// Boxed: the device lives in an enum with the (small) loopback.
    links: Box<Links>,
    /// A frame copied out of a binding's ring, lent to the stack.
    scratch: Vec<u8>,
    /// Frames smoltcp built that did not fit the ring (never, unless the switch misbehaves).
    pub tx_dropped: u64,
    /// Doorbell writes made after receiving (the switch waited for rx space).
    pub rx_kicks: u64,
}

impl EmulatorNic {
    /// Builds the container's end from fds received from the daemon, validating the region.
    pub fn from_fds(fds: NicFds) -> Result<EmulatorNic, RingError> {
        let region = Arc::new(Region::attach(fds.region)?);
        let max_frame = region.geometry().buf_size as usize;
        let mtu = max_frame.min(MAX_IP_PACKET);
        let rx = Consumer::new(region.clone(), Ring::Rx);
        let probes = Arc::new(ProbeSet { nic: rx.probe(), pages: ArcSwap::from_pointee(Vec::new()) });
        Ok(EmulatorNic {
            tx: Producer::new(region.clone(), Ring::Tx),
            rx,
            bell: Doorbell::from_fd(fds.to_container),
            switch: Arc::new(Doorbell::from_fd(fds.to_switch)),
            switch_due: AtomicBool::new(false),
            mtu,
            max_frame,
            links: Box::new(Links {
                nic: region,
                kicks: 0,
                enabled: true,
                scan: true,
                pairs: Vec::new(),
                pair_cursor: 0,
                flows: FastMap::default(),
                slots: Vec::new(),
                index: FastMap::default(),
                wanted: Vec::new(),
                peer_kicks: Vec::new(),
                probes,
                stats: BindStats::default(),
                last_sweep: Instant::from_millis(0),
                last_closed_sweep: Instant::from_millis(0),
            }),
            scratch: vec![0; max_frame.max(binding::GEOMETRY.buf_size as usize)],
            tx_dropped: 0,
            rx_kicks: 0,
        })
    }

    /// A probe of the rings frames arrive on (the rx ring and the bindings'), for threads
    /// that poll them without the NIC.
    pub fn rx_probe(&self) -> DeviceProbe {
        DeviceProbe(self.links.probes.clone())
    }

    /// Faults the switch committed (a bug there, never a container's doing).
    pub fn faults(&self) -> RingFaults {
        self.rx.faults
    }

    /// Doorbell writes made after transmitting (the rest were suppressed because the switch
    /// was polling).
    pub fn tx_kicks(&self) -> u64 {
        self.links.kicks
    }

    /// Turns secure bindings on or off (on by default). Off, every frame goes through the
    /// switch and no binding is asked for; bindings held stay until their flows end.
    pub fn set_bindings(&mut self, on: bool) {
        self.links.enabled = on;
    }

    /// What the bindings did.
    pub fn bind_stats(&self) -> BindStats {
        self.links.stats
    }

    /// Bindings held now.
    pub fn bindings(&self) -> usize {
        self.links.index.len()
    }

    /// Flows that should ask the daemon for a binding (each once); the caller answers each
    /// with [`install_binding`](Self::install_binding) or [`binding_refused`](Self::binding_refused).
    pub fn take_wanted(&mut self) -> Vec<Flow> {
        std::mem::take(&mut self.links.wanted)
    }

    /// Whether [`take_wanted`](Self::take_wanted) has anything.
    pub fn wants_bindings(&self) -> bool {
        !self.links.wanted.is_empty()
    }

    /// The switch refused a binding for `flow` (or it could not be asked): the flow stays on
    /// the switch until it ends.
    pub fn binding_refused(&mut self, flow: Flow) {
        if let Some(t) = self.links.flows.get_mut(&flow) {
            if t.state == FlowState::Requested {
                t.state = FlowState::Refused;
            }
        }
    }

    /// Installs the binding the daemon gave for `flow` (as this container sends it). A flow
    /// that no longer waits for one gets its binding closed at once, so the switch frees it.
    pub fn install_binding(
        &mut self,
        flow: Flow,
        info: BindingInfo,
        fds: BindingFds,
    ) -> Result<(), BindError> {
        let region = Arc::new(Region::attach_binding(fds.region).map_err(BindError::Region)?);
        let side = usize::from(info.side);
        let set = |i: usize| {
            if let Some(w) = region.slot(i) {
                w.store(1, Ordering::Release);
            }
        };
        let summary = match Summary::attach(fds.summary).and_then(|s| Ok((s.identity()?, s))) {
            Ok(s) => s,
            Err(e) => {
                if side <= 1 {
                    set(binding::CLOSED + side);
                }
                self.binding_refused(flow);
                return Err(BindError::Region(e));
            }
        };
        let l = &mut self.links;
        let waiting = l.flows.get(&flow).is_some_and(|t| t.state == FlowState::Requested);
        let valid = side <= 1
            && info.id != 0
            && info.role <= 1
            && (info.bit as usize) < SUMMARY_WORDS * 64
            && l.nic.slot(info.slot as usize).is_some_and(|w| w.load(Ordering::Acquire) == info.id);
        if !waiting || !valid || l.index.len() >= MAX_BOUND || l.many() {
            if side <= 1 {
                set(binding::CLOSED + side);
            }
            if waiting {
                if let Some(t) = l.flows.get_mut(&flow) {
                    t.state = FlowState::Refused;
                }
            }
            return Err(if !valid {
                BindError::Info(info)
            } else if !waiting {
                BindError::Stale
            } else {
                BindError::Full
            });
        }
        set(binding::ATTACHED + side);
        let (out, inn) = if side == 0 { (Ring::Tx, Ring::Rx) } else { (Ring::Rx, Ring::Tx) };
        let t = l.flows.remove(&flow);
        let (role, bit) = (usize::from(info.role), info.bit as usize);
        // The pair's page: the one this NIC holds already if it is the same file (two entries
        // for one file would each take the other's bits).
        let (id, summary) = summary;
        l.prune_pages();
        let k = match l.pairs.iter().position(|p| p.id == id && p.role == role) {
            Some(k) => k,
            None => {
                let page = Arc::new(summary);
                // Ask the peer for a doorbell at once: a thread of ours may already sleep
                // (armed before this page existed), and only a doorbell would wake it for the
                // binding's first frame. A page armed while nobody sleeps costs a spare
                // doorbell at most.
                page.set_waiting(role, true);
                l.pairs.push(PairPage {
                    page,
                    id,
                    role,
                    taken: [0; SUMMARY_WORDS],
                    slot_of: vec![NO_BINDING; SUMMARY_WORDS * 64],
                    cursor: 0,
                    users: 0,
                });
                l.pairs.len() - 1
            }
        };
        let b = Bound {
            flow,
            info,
            tx: Producer::new(region.clone(), out),
            rx: Consumer::new(region.clone(), inn),
            region,
            peer: Arc::new(Doorbell::from_fd(fds.peer_bell)),
            pair: l.pairs[k].page.clone(),
            active: false,
            last: t.map_or(Instant::from_millis(0), |t| t.last),
            closing: false,
            peer_closing: false,
        };
        let i = match l.slots.iter().position(Option::is_none) {
            Some(i) => i,
            None => {
                l.slots.push(None);
                l.slots.len() - 1
            }
        };
        l.slots[i] = Some(b);
        l.pairs[k].slot_of[bit] = i;
        l.pairs[k].users += 1;
        l.index.insert(flow, i);
        l.stats.installed += 1;
        l.refresh_probes();
        Ok(())
    }

    /// Whether [`receive`](smoltcp::phy::Device::receive) takes frames from the bindings'
    /// rings (on by default; the NIC's own rx ring is always read). The library OS turns it
    /// off for the pass of its stack as it releases its lock, whose job is to send what the
    /// call queued: a scan of every binding's ring on every pass was a third of a fifty-
    /// connection client's CPU, and the pass as the next lock is taken, the pollers and the
    /// sleepers' last look (`DeviceProbe`) all still read them.
    pub fn set_binding_rx(&mut self, on: bool) {
        self.links.scan = on;
    }

    /// The doorbells due since the last call, appended to `out`: the switch's, if a frame
    /// for it (or room it waited for) came and it asked, and those of the peers frames were
    /// sent to on bindings (once per peer, and only those that asked). The library OS takes
    /// them after each pass of its stack and rings them once it has released its lock, so a
    /// peer woken on this thread's CPU does not preempt a lock holder.
    pub fn take_rings(&mut self, out: &mut Vec<Arc<Doorbell>>) {
        if self.switch_due.swap(false, Ordering::Relaxed) {
            out.push(self.switch.clone());
        }
        for (_, i) in self.links.peer_kicks.drain(..) {
            if let Some(b) = self.links.slots.get(i).and_then(Option::as_ref) {
                out.push(b.peer.clone());
            }
        }
    }

    /// Rings at once the doorbells [`take_rings`](Self::take_rings) would return (the tests'
    /// stand-in for the library OS's ringing after its lock).
    #[cfg(test)]
    fn flush_kicks(&mut self) {
        let mut due = Vec::new();
        self.take_rings(&mut due);
        due.iter().for_each(|d| d.ring());
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

    fn receive(&mut self, now: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let from = if self.rx.has_frame() {
            From::Nic { rx: &mut self.rx, kicks: &mut self.rx_kicks }
        } else if self.links.scan && !self.links.pairs.is_empty() {
            let len = self.links.recv_bound(&mut self.scratch)?;
            From::Binding(&self.scratch[..len])
        } else {
            return None;
        };
        let rx = RxToken { from, switch_due: &self.switch_due };
        let tx = TxToken {
            tx: &mut self.tx,
            links: &mut self.links,
            switch_due: &self.switch_due,
            dropped: &mut self.tx_dropped,
            now,
        };
        Some((rx, tx))
    }

    fn transmit(&mut self, now: Instant) -> Option<TxToken<'_>> {
        // Full: ask the switch for a doorbell when it frees a slot, unless one freed meanwhile.
        if !self.tx.has_space() && self.tx.arm() {
            return None;
        }
        Some(TxToken {
            tx: &mut self.tx,
            links: &mut self.links,
            switch_due: &self.switch_due,
            dropped: &mut self.tx_dropped,
            now,
        })
    }
}

impl NetDevice for EmulatorNic {
    fn max_frame(&self) -> usize {
        self.max_frame
    }

    fn doorbell(&self) -> Option<BorrowedFd<'_>> {
        Some(self.bell.as_fd())
    }

    fn ack_doorbell(&mut self) {
        self.bell.drain();
        self.rx.disarm();
        self.tx.disarm();
        for p in &self.links.pairs {
            p.page.set_waiting(p.role, false);
            p.page.clear_rung(p.role);
        }
    }

    fn prepare_sleep(&mut self) -> bool {
        let mut idle = self.rx.arm();
        for p in &self.links.pairs {
            p.page.set_waiting(p.role, true);
            idle &= !p.page.any(p.role) && p.taken.iter().all(|&w| w == 0);
        }
        idle
    }
}

enum From<'a> {
    /// In place in the NIC's rx ring.
    Nic { rx: &'a mut Consumer, kicks: &'a mut u64 },
    /// Copied out of a binding's ring.
    Binding(&'a [u8]),
}

/// A received frame: read in place from the rx ring (its slot goes back to the switch when
/// consumed), or a copy of one from a binding.
pub struct RxToken<'a> {
    from: From<'a>,
    switch_due: &'a AtomicBool,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        let (rx, kicks) = match self.from {
            From::Binding(frame) => return f(frame),
            From::Nic { rx, kicks } => (rx, kicks),
        };
        let mut f = Some(f);
        let r = rx.recv_with(|b| f.take().map(|f| f(b)));
        // `receive` saw a valid frame; only a misbehaving switch could take it away since.
        let r = match (r.flatten(), f) {
            (Some(r), _) => r,
            (None, Some(f)) => f(&[]),
            (None, None) => unreachable!("the closure ran, so it returned Some"),
        };
        if rx.kick_needed() {
            self.switch_due.store(true, Ordering::Relaxed);
            *kicks += 1;
        }
        r
    }
}

/// Room for one frame, built in place in the tx ring; sent there, or copied onto its flow's
/// binding.
pub struct TxToken<'a> {
    tx: &'a mut Producer,
    links: &'a mut Links,
    switch_due: &'a AtomicBool,
    dropped: &'a mut u64,
    now: Instant,
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let (links, now) = (self.links, self.now);
        let drained = self.tx.is_drained();
        let mut f = Some(f);
        let mut published = false;
        let r = self.tx.fill_with(len, |b| {
            let r = f.take().map(|f| f(b));
            published = !links.send_bound(b, now, drained);
            (r, published)
        });
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
        // Only a frame put on the tx ring concerns the switch (one sent on a binding does not).
        // The switch asks again before each sleep: the frames that follow this one until it
        // runs need no doorbell.
        if published && self.tx.take_kick() {
            self.switch_due.store(true, Ordering::Relaxed);
            links.kicks += 1;
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
        nic.flush_kicks();
        assert!(!port.bell.drain());
        let mut out = [0u8; 256];
        assert_eq!(port.tx.recv_copy(&mut out), Some(3));
        assert_eq!(&out[..3], b"abc");
        // Switch armed: the next frame rings, once the pass is over (the caller's lock is
        // released by then), and once for the frames that follow until the switch runs.
        assert!(port.tx.arm());
        nic.transmit(t).unwrap().consume(1, |b| b[0] = 7);
        assert!(!port.bell.drain(), "not during the pass");
        nic.transmit(t).unwrap().consume(1, |b| b[0] = 8);
        let mut due = Vec::new();
        nic.take_rings(&mut due);
        assert_eq!(due.len(), 1, "one doorbell for two frames");
        due[0].ring();
        assert!(port.bell.drain());
        nic.take_rings(&mut due);
        assert_eq!(due.len(), 1, "nothing more due");
        port.tx.disarm();
        assert_eq!(port.tx.recv_copy(&mut out), Some(1));
        assert_eq!(port.tx.recv_copy(&mut out), Some(1));

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

    /// An IPv4 TCP frame from `src` to `dst` (ports) with `flags` and `payload`.
    fn tcp(src: u16, dst: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
        let total = 40 + payload.len();
        let mut f = vec![0u8; total];
        f[0] = 0x45;
        f[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        f[8] = 64;
        f[9] = 6;
        f[12..16].copy_from_slice(&[127, 0, 0, 1]);
        f[16..20].copy_from_slice(&[127, 0, 0, 1]);
        f[20..22].copy_from_slice(&src.to_be_bytes());
        f[22..24].copy_from_slice(&dst.to_be_bytes());
        f[32] = 0x50;
        f[33] = flags;
        f[40..].copy_from_slice(payload);
        f
    }

    /// A binding's info for side `side` with id `id` in slot 0 (role 0, bit 0).
    fn info(side: u8, id: u32) -> BindingInfo {
        BindingInfo { side, slot: 0, id, peer: 1, role: 0, bit: 0 }
    }

    fn flow(src: u16, dst: u16) -> Flow {
        Flow::parse(&tcp(src, dst, 0x10, b"")).unwrap()
    }

    fn send(nic: &mut EmulatorNic, t: Instant, frame: &[u8]) {
        nic.transmit(t).unwrap().consume(frame.len(), |b| b.copy_from_slice(frame));
        nic.flush_kicks();
    }

    fn recv(nic: &mut EmulatorNic, t: Instant) -> Option<Vec<u8>> {
        nic.receive(t).map(|(rx, _tx)| rx.consume(|b| b.to_vec()))
    }

    /// Two NICs (each with its switch end) and, as the switch would, one binding between
    /// them for `a_flow` (a's side 0, b's side 1) with slot words set.
    struct Pair {
        a: EmulatorNic,
        pa: SwitchPort,
        b: EmulatorNic,
        pb: SwitchPort,
        region: Arc<Region>,
        summary: Summary,
    }

    fn bound_pair(a_flow: Flow) -> Pair {
        let (fa, mut pa) = create(Geometry { ring_size: 8, buf_size: 2048 }).unwrap();
        let (fb, mut pb) = create(Geometry { ring_size: 8, buf_size: 2048 }).unwrap();
        let (mut a, mut b) = (EmulatorNic::from_fds(fa).unwrap(), EmulatorNic::from_fds(fb).unwrap());
        let t = Instant::from_millis(1);
        // Enough traffic through the switch for both to want a binding.
        for i in 0..BIND_AFTER {
            send(&mut a, t, &tcp(a_flow.src.port(), a_flow.dst.port(), 0x10, &[i as u8]));
            send(&mut b, t, &tcp(a_flow.dst.port(), a_flow.src.port(), 0x10, &[i as u8]));
        }
        assert_eq!(a.take_wanted(), vec![a_flow]);
        assert_eq!(b.take_wanted(), vec![a_flow.reversed()]);
        let mut out = [0u8; 2048];
        while pa.tx.recv_copy(&mut out).is_some() {}
        while pb.tx.recv_copy(&mut out).is_some() {}
        let region = Arc::new(Region::create_binding(binding::GEOMETRY).unwrap());
        pa.region().slot(3).unwrap().store(77, Ordering::Release);
        pb.region().slot(5).unwrap().store(77, Ordering::Release);
        let summary = Summary::create().unwrap();
        let fds = |peer: &SwitchPort| BindingFds {
            region: dup(region.fd()).unwrap(),
            peer_bell: dup(peer.peer.as_fd()).unwrap(),
            summary: dup(summary.fd()).unwrap(),
        };
        let info = |side, slot, role| BindingInfo { side, slot, id: 77, peer: 1, role, bit: 70 };
        a.install_binding(a_flow, info(0, 3, 1), fds(&pb)).unwrap();
        b.install_binding(a_flow.reversed(), info(1, 5, 0), fds(&pa)).unwrap();
        Pair { a, pa, b, pb, region, summary }
    }

    #[test]
    fn a_flow_asks_for_a_binding_once_after_enough_frames_and_not_for_its_handshake() {
        let (fds, mut port) = create(Geometry { ring_size: 16, buf_size: 2048 }).unwrap();
        let mut nic = EmulatorNic::from_fds(fds).unwrap();
        let t = Instant::from_millis(1);
        send(&mut nic, t, &tcp(1000, 2000, 0x02, b""));
        for _ in 0..BIND_AFTER - 1 {
            send(&mut nic, t, &tcp(1000, 2000, 0x10, b"x"));
        }
        assert!(!nic.wants_bindings(), "a SYN and {} frames are not enough", BIND_AFTER - 1);
        send(&mut nic, t, &tcp(1000, 2000, 0x10, b"x"));
        assert_eq!(nic.take_wanted(), vec![flow(1000, 2000)]);
        send(&mut nic, t, &tcp(1000, 2000, 0x10, b"x"));
        assert!(!nic.wants_bindings(), "asked once");
        // Everything went to the switch meanwhile.
        let mut out = [0u8; 2048];
        let mut n = 0;
        while port.tx.recv_copy(&mut out).is_some() {
            n += 1;
        }
        assert_eq!(n, BIND_AFTER + 2);
        // Refused: never asked again for that flow; a flow that ends is not asked for.
        nic.binding_refused(flow(1000, 2000));
        for _ in 0..10 {
            send(&mut nic, t, &tcp(1000, 2000, 0x10, b"x"));
            send(&mut nic, t, &tcp(1001, 2000, 0x11, b"x"));
            while port.tx.recv_copy(&mut out).is_some() {}
        }
        assert!(!nic.wants_bindings());
        // Bindings off: nothing is asked for.
        nic.set_bindings(false);
        for _ in 0..10 {
            send(&mut nic, t, &tcp(1002, 2000, 0x10, b"x"));
            while port.tx.recv_copy(&mut out).is_some() {}
        }
        assert!(!nic.wants_bindings());
    }

    #[test]
    fn bound_frames_bypass_the_switch_both_ways_and_ring_a_sleeping_peer() {
        let f = flow(1000, 2000);
        let mut p = bound_pair(f);
        let t = Instant::from_millis(2);
        assert_eq!(p.a.bindings(), 1);
        assert!(p.b.prepare_sleep(), "nothing for b yet");
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"hello"));
        let mut out = [0u8; 2048];
        assert_eq!(p.pa.tx.recv_copy(&mut out), None, "not through the switch");
        assert!(p.pb.peer.drain(), "b slept, so a rang b's doorbell");
        p.b.ack_doorbell();
        assert!(p.b.rx_probe().pending());
        let got = recv(&mut p.b, t).unwrap();
        assert_eq!(&got[40..], b"hello");
        assert!(recv(&mut p.b, t).is_none());
        send(&mut p.b, t, &tcp(2000, 1000, 0x18, b"world"));
        assert_eq!(p.pb.tx.recv_copy(&mut out), None);
        assert_eq!(&recv(&mut p.a, t).unwrap()[40..], b"world");
        assert_eq!(p.a.bind_stats().tx_frames, 1);
        assert_eq!(p.a.bind_stats().rx_frames, 1);
        // Another flow still goes through the switch.
        send(&mut p.a, t, &tcp(1000, 2001, 0x10, b""));
        assert!(p.pa.tx.recv_copy(&mut out).is_some());
    }

    #[test]
    fn a_binding_installed_while_its_nic_sleeps_rings_on_its_first_frame() {
        // b's threads went to sleep before the binding existed (nothing armed its ring then).
        let mut p = bound_pair(flow(1000, 2000));
        let _ = p.pb.peer.drain();
        send(&mut p.a, Instant::from_millis(2), &tcp(1000, 2000, 0x18, b"first"));
        assert!(p.pb.peer.drain(), "the first frame on a fresh binding rings its receiver");
    }

    #[test]
    fn frames_on_several_bindings_to_one_peer_ring_it_once_per_pass() {
        let mut p = bound_pair(flow(1000, 2000));
        assert!(p.pa.tx.arm(), "the switch sleeps");
        let _ = p.pa.bell.drain();
        let t = Instant::from_millis(2);
        let _ = p.pb.peer.drain();
        for i in 0..3u8 {
            p.a.transmit(t).unwrap().consume(41, |b| b.copy_from_slice(&tcp(1000, 2000, 0x18, &[i])));
        }
        assert!(!p.pb.peer.drain(), "nothing rung before the pass ends");
        assert!(!p.pa.bell.drain(), "nor the switch, though it sleeps");
        p.a.flush_kicks();
        let mut n = [0u8; 8];
        assert_eq!(rustix::io::read(&p.pb.peer, &mut n).unwrap(), 8);
        assert_eq!(u64::from_ne_bytes(n), 1, "one doorbell write for three frames");
        p.a.flush_kicks();
        assert!(!p.pb.peer.drain());
    }

    #[test]
    fn a_sleeping_peer_is_rung_once_until_it_looks_again() {
        let mut p = bound_pair(flow(1000, 2000));
        let t = Instant::from_millis(2);
        assert!(p.b.prepare_sleep());
        let _ = p.pb.peer.drain();
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"one"));
        assert!(p.pb.peer.drain(), "b sleeps: the first frame rings");
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"two"));
        assert!(!p.pb.peer.drain(), "rung already, and b has not looked since");
        // b's look (the thread that woke runs its stack) takes both, with the second's bit.
        assert_eq!(&recv(&mut p.b, t).unwrap()[40..], b"one");
        assert_eq!(&recv(&mut p.b, t).unwrap()[40..], b"two");
        assert!(recv(&mut p.b, t).is_none());
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"three"));
        assert!(p.pb.peer.drain(), "after a look, the next frame rings again");
        // Taking the doorbell also clears it: a sleeper armed after that is rung.
        p.b.ack_doorbell();
        assert!(!p.b.prepare_sleep(), "three is still there");
        assert_eq!(&recv(&mut p.b, t).unwrap()[40..], b"three");
        assert!(recv(&mut p.b, t).is_none());
        p.b.ack_doorbell();
        assert!(p.b.prepare_sleep());
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"four"));
        assert!(p.pb.peer.drain());
        // A peer that leaves the word set hides only its own rings: b's look clears it.
        p.summary.claim_ring(0);
        assert_eq!(&recv(&mut p.b, t).unwrap()[40..], b"four");
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"five"));
        assert!(p.pb.peer.drain());
    }

    #[test]
    fn a_nic_with_many_flows_closes_its_bindings_and_asks_for_none() {
        let mut p = bound_pair(flow(1000, 2000));
        let t = Instant::from_millis(2);
        for port in 3000..3000 + MANY_FLOWS as u16 {
            for _ in 0..BIND_AFTER {
                send(&mut p.a, t, &tcp(1000, port, 0x10, b""));
                while p.pa.tx.recv_copy(&mut [0u8; 2048]).is_some() {}
            }
        }
        assert_eq!(p.a.bindings(), 0, "closed");
        assert_eq!(p.region.slot(binding::CLOSED).unwrap().load(Ordering::Acquire), 1);
        // Only the flows counted before there were too many asked.
        assert!(p.a.take_wanted().len() < MANY_FLOWS);
        send(&mut p.a, t, &tcp(1000, 3000 + MANY_FLOWS as u16, 0x10, b""));
        assert!(!p.a.wants_bindings());
    }

    #[test]
    fn a_summary_page_full_of_bits_costs_looks_and_nothing_else() {
        let f = flow(1000, 2000);
        let mut p = bound_pair(f);
        let t = Instant::from_millis(2);
        // A peer (or a bug) sets every bit of both roles: each names no binding or an empty
        // ring; the looks end, nothing is taken, and a real frame still arrives after them.
        for bit in 0..SUMMARY_WORDS * 64 {
            p.summary.mark(0, bit);
            p.summary.mark(1, bit);
        }
        assert!(recv(&mut p.a, t).is_none());
        assert!(recv(&mut p.b, t).is_none());
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"real"));
        assert_eq!(&recv(&mut p.b, t).unwrap()[40..], b"real");
        assert!(recv(&mut p.b, t).is_none());
        assert_eq!(p.b.bind_stats().rx_foreign, 0);
    }

    #[test]
    fn frames_not_of_the_flow_are_dropped_by_the_receiver() {
        let f = flow(1000, 2000);
        let mut p = bound_pair(f);
        let t = Instant::from_millis(2);
        // A lying peer writes other flows, garbage and then a real frame onto the binding.
        let mut evil = Producer::new(p.region.clone(), Ring::Tx);
        evil.push_copy(&tcp(1001, 2000, 0x18, b"spoofed port")).unwrap();
        evil.push_copy(&tcp(2000, 1000, 0x18, b"wrong way")).unwrap();
        evil.push_copy(b"garbage").unwrap();
        evil.push_copy(&tcp(1000, 2000, 0x18, b"real")).unwrap();
        // Unannounced in the pair's summary page, nothing is looked at (a peer hides only its
        // own frames that way); announced, everything is, and only the real frame stays.
        assert!(recv(&mut p.b, t).is_none());
        p.summary.mark(0, 70);
        assert_eq!(&recv(&mut p.b, t).unwrap()[40..], b"real");
        assert!(recv(&mut p.b, t).is_none());
        assert_eq!(p.b.bind_stats().rx_foreign, 3);
    }

    #[test]
    fn a_revoked_binding_sends_through_the_switch_and_receives_nothing() {
        let f = flow(1000, 2000);
        let mut p = bound_pair(f);
        let t = Instant::from_millis(2);
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"one"));
        // The switch revokes: zero in both slot words.
        p.pa.region().slot(3).unwrap().store(0, Ordering::Release);
        send(&mut p.a, t, &tcp(1000, 2000, 0x18, b"two"));
        let mut out = [0u8; 2048];
        let n = p.pa.tx.recv_copy(&mut out).expect("through the switch now");
        assert_eq!(&out[40..n], b"two");
        assert_eq!(p.a.bindings(), 0);
        assert_eq!(p.a.bind_stats().revoked, 1);
        // b's slot revoked too: "one", already on the binding, is not taken.
        p.pb.region().slot(5).unwrap().store(0, Ordering::Release);
        assert!(recv(&mut p.b, t).is_none());
        assert_eq!(p.b.bindings(), 0);
    }

    #[test]
    fn a_sender_waits_for_the_peer_to_attach_and_for_its_switch_queue_to_drain() {
        let (fa, mut pa) = create(Geometry { ring_size: 8, buf_size: 2048 }).unwrap();
        let mut a = EmulatorNic::from_fds(fa).unwrap();
        let t = Instant::from_millis(1);
        for _ in 0..BIND_AFTER {
            send(&mut a, t, &tcp(1000, 2000, 0x10, b""));
        }
        assert_eq!(a.take_wanted().len(), 1);
        let region = Arc::new(Region::create_binding(binding::GEOMETRY).unwrap());
        pa.region().slot(0).unwrap().store(9, Ordering::Release);
        let peer = Doorbell::new().unwrap();
        let fds = BindingFds {
            region: dup(region.fd()).unwrap(),
            peer_bell: dup(peer.as_fd()).unwrap(),
            summary: dup(Summary::create().unwrap().fd()).unwrap(),
        };
        a.install_binding(flow(1000, 2000), info(0, 9), fds).unwrap();
        assert_eq!(region.slot(binding::ATTACHED).unwrap().load(Ordering::Acquire), 1);
        // The peer has not attached: through the switch.
        let mut out = [0u8; 2048];
        send(&mut a, t, &tcp(1000, 2000, 0x10, b"1"));
        assert_eq!(a.bind_stats().tx_frames, 0);
        // Attached, but earlier frames still wait in the tx ring: still the switch.
        region.slot(binding::ATTACHED + 1).unwrap().store(1, Ordering::Release);
        send(&mut a, t, &tcp(1000, 2000, 0x10, b"2"));
        assert_eq!(a.bind_stats().tx_frames, 0);
        while pa.tx.recv_copy(&mut out).is_some() {}
        send(&mut a, t, &tcp(1000, 2000, 0x10, b"3"));
        assert_eq!(a.bind_stats().tx_frames, 1);
        // Once on the binding it stays there, even with switch frames queued.
        send(&mut a, t, &tcp(1000, 2001, 0x10, b"other flow"));
        send(&mut a, t, &tcp(1000, 2000, 0x10, b"4"));
        assert_eq!(a.bind_stats().tx_frames, 2);
        // The peer closes: back to the switch.
        region.slot(binding::CLOSED + 1).unwrap().store(1, Ordering::Release);
        send(&mut a, t, &tcp(1000, 2000, 0x10, b"5"));
        assert_eq!(a.bind_stats().tx_frames, 2);
    }

    #[test]
    fn stale_or_forged_bindings_are_refused_and_closed() {
        let (fa, pa) = create(Geometry { ring_size: 8, buf_size: 2048 }).unwrap();
        let mut a = EmulatorNic::from_fds(fa).unwrap();
        let region = Arc::new(Region::create_binding(binding::GEOMETRY).unwrap());
        let summary = Summary::create().unwrap();
        let fds = || BindingFds {
            region: dup(region.fd()).unwrap(),
            peer_bell: Doorbell::new().unwrap().into(),
            summary: dup(summary.fd()).unwrap(),
        };
        // Never asked for.
        pa.region().slot(0).unwrap().store(9, Ordering::Release);
        let r = a.install_binding(flow(1, 2), info(0, 9), fds());
        assert!(matches!(r, Err(BindError::Stale)));
        assert_eq!(region.slot(binding::CLOSED).unwrap().load(Ordering::Acquire), 1);
        // Asked for, but the slot word does not hold the id (revoked before it arrived),
        // a side out of range, a NIC region instead of a binding region.
        let t = Instant::from_millis(1);
        for _ in 0..BIND_AFTER {
            send(&mut a, t, &tcp(1, 2, 0x10, b""));
        }
        assert_eq!(a.take_wanted().len(), 1);
        let r = a.install_binding(flow(1, 2), info(0, 8), fds());
        assert!(matches!(r, Err(BindError::Info(_))));
        let r = a.install_binding(flow(1, 2), info(2, 9), fds());
        assert!(r.is_err());
        // A role or a bit out of range.
        let r = a.install_binding(flow(1, 2), BindingInfo { role: 2, ..info(0, 9) }, fds());
        assert!(matches!(r, Err(BindError::Info(_))), "{r:?}");
        let r = a.install_binding(flow(1, 2), BindingInfo { bit: 1 << 20, ..info(0, 9) }, fds());
        assert!(matches!(r, Err(BindError::Info(_))), "{r:?}");
        let (nic_fds, _p) = create(Geometry::default()).unwrap();
        let r = a.install_binding(
            flow(1, 2),
            info(0, 9),
            BindingFds {
                region: nic_fds.region,
                peer_bell: nic_fds.to_container,
                summary: dup(summary.fd()).unwrap(),
            },
        );
        assert!(matches!(r, Err(BindError::Region(_))));
        // A summary page that is not a sealed page: refused, the binding closed.
        let unsealed = rustix::fs::memfd_create("x", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&unsealed, 4096).unwrap();
        let r = a.install_binding(
            flow(1, 2),
            info(0, 9),
            BindingFds {
                region: dup(region.fd()).unwrap(),
                peer_bell: Doorbell::new().unwrap().into(),
                summary: unsealed,
            },
        );
        assert!(matches!(r, Err(BindError::Region(RingError::NotSealed))), "{r:?}");
        assert_eq!(a.bindings(), 0);
    }

    #[test]
    fn ended_and_idle_flows_close_their_bindings() {
        let f = flow(1000, 2000);
        let mut p = bound_pair(f);
        send(&mut p.a, Instant::from_millis(2), &tcp(1000, 2000, 0x11, b""));
        assert_eq!(p.a.bindings(), 1);
        // Two seconds after its FIN with nothing sent, the flow is done.
        send(&mut p.a, Instant::from_millis(5_000), &tcp(1000, 2001, 0x10, b""));
        assert_eq!(p.a.bindings(), 0);
        assert_eq!(p.a.bind_stats().closed, 1);
        assert_eq!(p.region.slot(binding::CLOSED).unwrap().load(Ordering::Acquire), 1);
        // b never saw traffic of its own after the binding: idle for a minute, closed.
        send(&mut p.b, Instant::from_millis(2), &tcp(2000, 1000, 0x10, b""));
        send(&mut p.b, Instant::from_millis(70_000), &tcp(2000, 1001, 0x10, b""));
        assert_eq!(p.b.bindings(), 0);
    }

    #[test]
    fn a_binding_closed_at_both_ends_goes_soon_but_not_with_a_frame_waiting() {
        let f = flow(1000, 2000);
        let mut p = bound_pair(f);
        // a closes; b's FIN comes back on the binding and waits there, unread.
        send(&mut p.a, Instant::from_millis(2), &tcp(1000, 2000, 0x11, b""));
        send(&mut p.b, Instant::from_millis(2), &tcp(2000, 1000, 0x11, b""));
        // Only a's FIN: one end closed, the binding stays past the short delay.
        send(&mut p.a, Instant::from_millis(100), &tcp(1000, 2001, 0x10, b""));
        assert_eq!(p.a.bindings(), 1, "b's FIN is not read yet");
        // a reads b's FIN (and ACKs it on the binding): both ends closed.
        assert!(recv(&mut p.a, Instant::from_millis(100)).is_some());
        send(&mut p.a, Instant::from_millis(100), &tcp(1000, 2000, 0x10, b""));
        // b's own binding holds a's last ACK: b keeps its binding while the frame waits.
        assert_eq!(p.b.bindings(), 1);
        send(&mut p.b, Instant::from_millis(300), &tcp(2000, 1001, 0x10, b""));
        assert_eq!(p.b.bindings(), 1, "a frame waits on it");
        // a: nothing sent on the flow for the delay, nothing waiting: closed, long before
        // the two seconds of a flow that only one end closed.
        send(&mut p.a, Instant::from_millis(100 + BOUND_CLOSED_MS - 1), &tcp(1000, 2001, 0x10, b""));
        assert_eq!(p.a.bindings(), 1, "not before the delay");
        send(
            &mut p.a,
            Instant::from_millis(100 + BOUND_CLOSED_MS + CLOSED_SWEEP_MS),
            &tcp(1000, 2001, 0x10, b""),
        );
        assert_eq!(p.a.bindings(), 0);
        assert_eq!(p.a.bind_stats().closed, 1);
        assert_eq!(p.region.slot(binding::CLOSED).unwrap().load(Ordering::Acquire), 1);
    }

    #[test]
    fn a_nic_from_foreign_fds_is_refused() {
        let (fds, _port) = create(Geometry::default()).unwrap();
        let bogus = NicFds { region: Doorbell::new().unwrap().into(), ..fds };
        assert!(EmulatorNic::from_fds(bogus).is_err());
    }
}
