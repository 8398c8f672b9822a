//! Secure bindings, the switch's half (`emulator::binding` has the design): the table of
//! bindings, the checks before one is made, its slots in the containers' NIC regions, and
//! revocation.
//!
//! A binding is keyed by its flow's two endpoints (unordered) and protocol. Side 0 is the
//! container that asked first, side 1 the container the switch routes the flow to, once it
//! asks for the same flow seen from its end. Each side has a slot in its *own* NIC region
//! whose word holds the binding's id while the binding lives; revoking writes 0 there. A
//! binding stays valid only while [`Switch::check_flow`] still passes for side 0's view
//! (which covers side 1's: the checks are symmetric), so every change of grants or ports
//! re-checks the bindings it could affect.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrakis_backends::emulator::binding::{self, BindingFds, BindingInfo};
use arrakis_backends::emulator::filter::{Flow, Proto};
use arrakis_backends::emulator::ring::{Region, Summary, SLOTS};
use arrakis_backends::proto::canonical_ip;

use super::{PortId, Switch};

/// Most live bindings in one switch.
pub const MAX_BINDINGS: usize = 4096;
/// How often the run loops look for closed and lonely bindings (only while there are any).
pub const GC_EVERY: Duration = Duration::from_millis(100);

/// Why the switch made no binding. `Display` names the cause and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BindRefusal {
    /// The asker's port is not attached.
    NoPort,
    /// The asker's grants do not allow sending from its end to the remote one.
    AskerMayNotSend,
    /// The asker's grants do not allow receiving at its end from the remote one.
    AskerMayNotReceive,
    /// No container's grants receive at the remote end.
    NoReceiver,
    /// The asker itself receives at the remote end (a flow inside one container).
    ReceiverIsAsker,
    /// The container that receives at the remote end may not send back.
    ReceiverMayNotReply,
    /// Frames back to the asker's end would go to another container.
    RepliesElsewhere,
    /// A binding of these endpoints exists between other containers or the other way round.
    Taken,
    /// Every slot of the asker's NIC holds a binding.
    NoSlot,
    /// The switch holds [`MAX_BINDINGS`] bindings.
    TooMany,
    /// A system call failed (memfd, dup).
    Failed(String),
}

impl fmt::Display for BindRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindRefusal::NoPort => f.write_str("the container has no NIC on the switch; ask for one (nic) first"),
            BindRefusal::AskerMayNotSend => {
                f.write_str("the container's grants do not allow sending from its end to the remote end")
            }
            BindRefusal::AskerMayNotReceive => f.write_str(
                "the container's grants do not allow receiving at its end from the remote end",
            ),
            BindRefusal::NoReceiver => {
                f.write_str("no container's grants receive at the remote end; bind once the peer listens there")
            }
            BindRefusal::ReceiverIsAsker => f.write_str(
                "the container itself receives at the remote end; a flow inside one container needs no binding",
            ),
            BindRefusal::ReceiverMayNotReply => f.write_str(
                "the container that receives at the remote end may not send back to this end under its grants",
            ),
            BindRefusal::RepliesElsewhere => f.write_str(
                "frames sent back to this end would go to another container, whose grants also receive there",
            ),
            BindRefusal::Taken => f.write_str(
                "a binding of these two endpoints is held by other containers; close it or wait for it to end",
            ),
            BindRefusal::NoSlot => write!(
                f,
                "all {SLOTS} binding slots of the container's NIC are in use; close bindings it no longer uses"
            ),
            BindRefusal::TooMany => {
                write!(f, "the switch holds {MAX_BINDINGS} bindings, its most; close bindings no longer used")
            }
            BindRefusal::Failed(why) => write!(f, "the switch could not make the binding: {why}"),
        }
    }
}

impl std::error::Error for BindRefusal {}

/// One side that was handed out: its port and the slot in that port's NIC region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Side {
    port: PortId,
    slot: usize,
}

/// One binding.
struct Binding {
    /// The flow seen from side 0 (`src` is side 0's end).
    flow: Flow,
    /// Side 0's port and side 1's (the one the switch routes `flow` to).
    ports: [PortId; 2],
    /// The sides handed out (side 0 always is).
    sides: [Option<Side>; 2],
    region: Arc<Region>,
    created: Instant,
    /// Its bit in the pair's summary page.
    bit: usize,
}

/// The two containers of a binding, the lower port first (role 0 in their summary page).
type PairKey = (PortId, PortId);

fn pair_key(a: PortId, b: PortId) -> PairKey {
    (a.min(b), a.max(b))
}

/// The summary page of a pair of containers with bindings (`ring::Summary`), and which of
/// its bits the pair's bindings hold.
struct Pair {
    summary: Arc<Summary>,
    bits: Slots,
}

/// Unordered endpoints and protocol.
type Key = (Proto, SocketAddr, SocketAddr);

fn key(f: &Flow) -> Key {
    if f.src <= f.dst {
        (f.proto, f.src, f.dst)
    } else {
        (f.proto, f.dst, f.src)
    }
}

/// The switch's bindings.
pub(super) struct Table {
    by_id: BTreeMap<u32, Binding>,
    by_key: HashMap<Key, u32>,
    /// Summary pages of the pairs of containers that hold bindings.
    pairs: HashMap<PairKey, Pair>,
    next_id: u32,
    last_gc: Instant,
    /// How long a binding only side 0 holds lives ([`binding::PENDING_TIMEOUT`]).
    pub(super) pending_timeout: Duration,
}

impl Table {
    pub(super) fn new() -> Table {
        // Ids start at a random place, so a container that missed a revocation by an earlier
        // switch (whose ids started elsewhere) is unlikely to see its old id again in a slot.
        let seed = std::collections::hash_map::RandomState::new().build_hasher().finish() as u32;
        Table {
            by_id: BTreeMap::new(),
            by_key: HashMap::new(),
            pairs: HashMap::new(),
            next_id: seed.max(1),
            last_gc: Instant::now(),
            pending_timeout: binding::PENDING_TIMEOUT,
        }
    }

    /// A fresh id: never 0, never one in use (bounded: at most [`MAX_BINDINGS`] are).
    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if id != 0 && !self.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    /// Live bindings.
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Which slots of a NIC region hold a binding: one bit per slot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Slots([u64; SLOTS / 64]);

impl Slots {
    fn take_free(&mut self) -> Option<usize> {
        let (w, bits) = self.0.iter_mut().enumerate().find(|(_, b)| **b != u64::MAX)?;
        let bit = bits.trailing_ones() as usize;
        *bits |= 1 << bit;
        Some(w * 64 + bit)
    }

    fn free(&mut self, slot: usize) {
        if let Some(w) = self.0.get_mut(slot / 64) {
            *w &= !(1u64 << (slot % 64));
        }
    }

    /// Slots in use.
    pub(super) fn count(&self) -> u64 {
        self.0.iter().map(|w| u64::from(w.count_ones())).sum()
    }
}

fn dup(fd: impl AsFd) -> Result<OwnedFd, BindRefusal> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0)
        .map_err(|e| BindRefusal::Failed(format!("dup: {}", io::Error::from(e))))
}

/// A flow as frames carry it (v4-mapped addresses as IPv4).
fn canonical(f: Flow) -> Flow {
    let c = |a: SocketAddr| SocketAddr::new(canonical_ip(a.ip()), a.port());
    Flow { proto: f.proto, src: c(f.src), dst: c(f.dst) }
}

impl Switch {
    /// The first port whose grants receive `flow` (where [`route`](Self::route) delivers it).
    fn receiver(&self, flow: &Flow) -> Option<PortId> {
        self.ports.iter().position(|p| p.as_ref().is_some_and(|p| p.grants.may_receive(flow)))
    }

    /// The checks a binding for `flow` asked by `asker` (`flow.src` is its end) must pass, now
    /// and for as long as the binding lives; the port of the container at the other end.
    fn check_flow(&self, asker: PortId, flow: &Flow) -> Result<PortId, BindRefusal> {
        let a = self.ports.get(asker).and_then(Option::as_ref).ok_or(BindRefusal::NoPort)?;
        let back = flow.reversed();
        if !a.grants.may_send(flow) {
            return Err(BindRefusal::AskerMayNotSend);
        }
        if !a.grants.may_receive(&back) {
            return Err(BindRefusal::AskerMayNotReceive);
        }
        let r = self.receiver(flow).ok_or(BindRefusal::NoReceiver)?;
        if r == asker {
            return Err(BindRefusal::ReceiverIsAsker);
        }
        let rp = self.ports[r].as_ref().ok_or(BindRefusal::NoReceiver)?;
        if !rp.grants.may_send(&back) {
            return Err(BindRefusal::ReceiverMayNotReply);
        }
        if self.receiver(&back) != Some(asker) {
            return Err(BindRefusal::RepliesElsewhere);
        }
        Ok(r)
    }

    /// A secure binding for `flow` as container `port` sees it (`src`: its end, `dst`: the
    /// remote end): checks both containers' grants (`check_flow`), then makes a fresh
    /// binding with the asker as side 0, gives the asker side 1 of the binding the peer made
    /// for the same flow from its end, or hands the asker's side out again. The asker's slot
    /// word is set to the binding's id before this returns. Looks for closed and lonely
    /// bindings first.
    pub fn bind(&mut self, port: PortId, flow: Flow) -> Result<(BindingInfo, BindingFds), BindRefusal> {
        self.gc_bindings(Instant::now());
        let flow = canonical(flow);
        let receiver = self.check_flow(port, &flow)?;
        let k = key(&flow);
        let existing = self.bindings.by_key.get(&k).copied();
        let (id, side) = match existing {
            Some(id) => {
                let Some(b) = self.bindings.by_id.get(&id) else { return Err(BindRefusal::Taken) };
                let side = if b.flow == flow && b.ports == [port, receiver] {
                    0
                } else if b.flow == flow.reversed() && b.ports == [receiver, port] {
                    1
                } else {
                    return Err(BindRefusal::Taken);
                };
                if b.sides[side].is_none() {
                    let slot = self.take_slot(port)?;
                    if let Some(b) = self.bindings.by_id.get_mut(&id) {
                        b.sides[side] = Some(Side { port, slot });
                    }
                }
                (id, side)
            }
            None => {
                if self.bindings.len() >= MAX_BINDINGS {
                    return Err(BindRefusal::TooMany);
                }
                let region = Region::create_binding(binding::GEOMETRY)
                    .map_err(|e| BindRefusal::Failed(format!("binding region: {e}")))?;
                let bit = self.take_bit(port, receiver)?;
                let slot = match self.take_slot(port) {
                    Ok(s) => s,
                    Err(e) => {
                        self.free_bit(port, receiver, bit);
                        return Err(e);
                    }
                };
                let id = self.bindings.fresh_id();
                self.bindings.by_key.insert(k, id);
                self.bindings.by_id.insert(
                    id,
                    Binding {
                        flow,
                        ports: [port, receiver],
                        sides: [Some(Side { port, slot }), None],
                        region: Arc::new(region),
                        created: Instant::now(),
                        bit,
                    },
                );
                (id, 0)
            }
        };
        match self.hand_out(id, side) {
            Ok(r) => Ok(r),
            Err(e) => {
                // Nothing half-made stays: a side the asker cannot use is revoked.
                self.revoke_binding(id);
                Err(e)
            }
        }
    }

    /// Takes a free bit of the summary page of `a` and `b`, making the page with the pair's
    /// first binding.
    fn take_bit(&mut self, a: PortId, b: PortId) -> Result<usize, BindRefusal> {
        let pairs = &mut self.bindings.pairs;
        let pair = match pairs.entry(pair_key(a, b)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let summary =
                    Summary::create().map_err(|e| BindRefusal::Failed(format!("summary page: {e}")))?;
                e.insert(Pair { summary: Arc::new(summary), bits: Slots::default() })
            }
        };
        // A NIC holds at most SLOTS bindings, so a pair runs out of bits only when one of its
        // NICs is out of slots too (and a page just made has them all free).
        pair.bits.take_free().ok_or(BindRefusal::NoSlot)
    }

    /// Gives back a bit of the pair's summary page; the page goes with the pair's last one.
    fn free_bit(&mut self, a: PortId, b: PortId, bit: usize) {
        let k = pair_key(a, b);
        if let Some(p) = self.bindings.pairs.get_mut(&k) {
            p.bits.free(bit);
            if p.bits.count() == 0 {
                self.bindings.pairs.remove(&k);
            }
        }
    }

    /// Takes a free slot of `port`'s NIC region.
    fn take_slot(&mut self, port: PortId) -> Result<usize, BindRefusal> {
        let p = self.ports.get_mut(port).and_then(Option::as_mut).ok_or(BindRefusal::NoPort)?;
        let slot = p.slots.take_free().ok_or(BindRefusal::NoSlot)?;
        p.stats.bound += 1;
        Ok(slot)
    }

    /// Sets side `side`'s slot word and returns what its container gets.
    fn hand_out(&self, id: u32, side: usize) -> Result<(BindingInfo, BindingFds), BindRefusal> {
        let b = self.bindings.by_id.get(&id).ok_or(BindRefusal::Taken)?;
        let s = b.sides[side].ok_or(BindRefusal::Taken)?;
        let mine = self.ports.get(s.port).and_then(Option::as_ref).ok_or(BindRefusal::NoPort)?;
        let peer =
            self.ports.get(b.ports[1 - side]).and_then(Option::as_ref).ok_or(BindRefusal::NoReceiver)?;
        let (lo, _) = pair_key(b.ports[0], b.ports[1]);
        let pair = self.bindings.pairs.get(&pair_key(b.ports[0], b.ports[1])).ok_or(BindRefusal::Taken)?;
        let fds = BindingFds {
            region: dup(b.region.fd())?,
            peer_bell: dup(&peer.nic.peer)?,
            summary: dup(pair.summary.fd())?,
        };
        let word = mine.nic.region().slot(s.slot).ok_or(BindRefusal::NoSlot)?;
        word.store(id, Ordering::Release);
        let info = BindingInfo {
            side: side as u8,
            slot: s.slot as u32,
            id,
            peer: b.ports[1 - side] as u32,
            role: u8::from(s.port != lo),
            bit: b.bit as u32,
        };
        Ok((info, fds))
    }

    /// Ends a binding: 0 in every handed-out side's slot word (the containers stop at their
    /// next frame), the slots freed, the switch's mapping dropped, and both containers rung so
    /// a sleeping one notices.
    fn revoke_binding(&mut self, id: u32) {
        let Some(b) = self.bindings.by_id.remove(&id) else { return };
        self.bindings.by_key.remove(&key(&b.flow));
        self.free_bit(b.ports[0], b.ports[1], b.bit);
        for s in b.sides.iter().flatten() {
            if let Some(p) = self.ports.get_mut(s.port).and_then(Option::as_mut) {
                if let Some(w) = p.nic.region().slot(s.slot) {
                    w.store(0, Ordering::Release);
                }
                p.slots.free(s.slot);
                p.nic.peer.ring();
            }
        }
    }

    /// Revokes the bindings whose checks no longer pass after `changed`'s grants changed or
    /// it was attached: those it is a side of, and those whose flow it now receives in either
    /// direction (the switch's routing may have moved). Returns how many.
    pub(super) fn recheck_bindings(&mut self, changed: PortId) -> usize {
        if self.bindings.len() == 0 {
            return 0;
        }
        let grants = self.ports.get(changed).and_then(Option::as_ref).map(|p| &p.grants);
        let stale: Vec<u32> = self
            .bindings
            .by_id
            .iter()
            .filter(|(_, b)| {
                b.ports.contains(&changed)
                    || grants.is_some_and(|g| g.may_receive(&b.flow) || g.may_receive(&b.flow.reversed()))
            })
            .filter(|(_, b)| self.check_flow(b.ports[0], &b.flow) != Ok(b.ports[1]))
            .map(|(&id, _)| id)
            .collect();
        for &id in &stale {
            self.revoke_binding(id);
        }
        stale.len()
    }

    /// Revokes every binding `port` is a side of (it is being detached).
    pub(super) fn revoke_port_bindings(&mut self, port: PortId) -> usize {
        let ids: Vec<u32> =
            self.bindings.by_id.iter().filter(|(_, b)| b.ports.contains(&port)).map(|(&id, _)| id).collect();
        for &id in &ids {
            self.revoke_binding(id);
        }
        ids.len()
    }

    /// Revokes the bindings a side closed (its `CLOSED + side` advisory word is set) and those
    /// only side 0 holds after the pending timeout, as of `now`. Returns how many.
    pub fn gc_bindings(&mut self, now: Instant) -> usize {
        self.bindings.last_gc = now;
        if self.bindings.len() == 0 {
            return 0;
        }
        let timeout = self.bindings.pending_timeout;
        let dead: Vec<u32> = self
            .bindings
            .by_id
            .iter()
            .filter(|(_, b)| {
                let closed = (0..2).any(|side| {
                    b.region.slot(binding::CLOSED + side).is_some_and(|w| w.load(Ordering::Acquire) != 0)
                });
                let lonely = b.sides[1].is_none() && now.saturating_duration_since(b.created) >= timeout;
                closed || lonely
            })
            .map(|(&id, _)| id)
            .collect();
        for &id in &dead {
            self.revoke_binding(id);
        }
        dead.len()
    }

    /// [`gc_bindings`](Self::gc_bindings) at most every [`GC_EVERY`], and not at all (not even
    /// a clock read) while there are no bindings: for the run loops.
    pub fn maybe_gc_bindings(&mut self) {
        if self.bindings.len() == 0 {
            return;
        }
        let now = Instant::now();
        if now.saturating_duration_since(self.bindings.last_gc) >= GC_EVERY {
            self.gc_bindings(now);
        }
    }

    /// How long a binding only its first side holds lives (default
    /// [`binding::PENDING_TIMEOUT`]).
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn set_pending_timeout(&mut self, t: Duration) {
        self.bindings.pending_timeout = t;
    }

    /// Live bindings in the switch.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn bindings(&self) -> usize {
        self.bindings.len()
    }
}
