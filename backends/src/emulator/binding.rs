//! Secure bindings (the Exokernel's term): a private ring pair between two containers for one
//! flow the switch has checked against both containers' grants, so that the flow's frames go
//! from one library OS to the other without the switch.
//!
//! **Setting one up.** Each container's library OS asks the daemon (`bind`: protocol, its local
//! address and port, the remote's) for a flow that carries traffic; the daemon relays to the
//! switch, which checks that the asker may send from local to remote and receive from remote
//! at local, that exactly one *other* container receives at remote (the one the switch would
//! route to) and that it may send back and receive. The first asker of a flow gets a fresh
//! binding region (side 0); the other container, when it asks for the same flow seen from
//! its end, gets the same region (side 1). Each also gets a doorbell to ring the peer (a dup
//! of the peer NIC's `to_container` eventfd, so the peer's existing waits wake for both), and
//! a slot in its *own* NIC region whose word the switch sets to the binding's id. And each
//! gets the pair's *summary page* (`ring::Summary`: one per pair of containers with bindings,
//! made with the pair's first binding and dropped with its last), its role in it and the
//! binding's bit there: a side that puts a frame on a binding sets the bit in the peer's
//! role, so the peer reads only the rings whose bits it finds set.
//!
//! **Using it.** Side 0 produces on the region's `Tx` ring and consumes `Rx`; side 1 the
//! reverse. A side sends a flow's frames on the binding only while (a) its NIC slot word
//! still holds the binding's id, (b) the peer has attached ([`ATTACHED`]) and not closed
//! ([`CLOSED`]) — else through the NIC and the switch, as before. A receiver takes frames from
//! the binding only while its slot word holds the id, and only frames whose 5-tuple is exactly
//! the flow (mirrored); anything else is dropped and counted. Both copy frames in and out of
//! the shared buffers: neither container trusts the other.
//!
//! **Revocation** is the switch's: it writes 0 into both containers' slot words (which the
//! peer cannot write: it never maps the other's NIC region), and both stop at their next frame
//! — the sender's frames go to the switch, which drops them if the grants no longer allow
//! them. The switch revokes a binding when either side's grants stop allowing the flow, when
//! either container detaches, when a side closes it, and when a side that asked first is
//! still alone after [`PENDING_TIMEOUT`].
//!
//! **Advisory words** (slot words of the binding region, written by the containers, read by
//! the switch and the peer; a lying container only changes how its own flow travels):
//! `ATTACHED + side` is 1 once that side mapped the region, `CLOSED + side` is 1 once it is
//! done with it.

use std::os::fd::OwnedFd;
use std::time::Duration;

use super::ring::{Geometry, BUF_SIZE};

/// Geometry of a binding region: 64 frames each way in the NIC's buffers ([`BUF_SIZE`], 68
/// KiB; 8.5 MiB a binding, of which only the pages frames were written in are ever
/// allocated; a flow that fills its ring waits or falls back to the switch).
pub const GEOMETRY: Geometry = Geometry { ring_size: 64, buf_size: BUF_SIZE };

/// Advisory word of a binding region: `ATTACHED + side` is set by that side once mapped.
pub const ATTACHED: usize = 0;
/// Advisory word of a binding region: `CLOSED + side` is set by that side when done.
pub const CLOSED: usize = 2;

/// How long the switch keeps a binding only one side asked for.
pub const PENDING_TIMEOUT: Duration = Duration::from_secs(10);

/// What a container learns with a binding's fds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindingInfo {
    /// 0: this container produces on `Tx` and consumes `Rx`; 1: the reverse.
    pub side: u8,
    /// Slot of this container's NIC region whose word holds `id` while the binding lives.
    pub slot: u32,
    /// The binding's id, never 0, unique for the life of the switch.
    pub id: u32,
    /// The switch's number for the peer's NIC: bindings with one peer share its doorbell, so
    /// a container rings it once for frames it sent on several of them in one pass.
    #[serde(default)]
    pub peer: u32,
    /// This container's role in the pair's summary page (`ring::Summary`): 0 or 1. It marks
    /// frames it sends in the other role's bitmap and takes its own.
    #[serde(default)]
    pub role: u8,
    /// The binding's bit in the summary page's bitmaps (below `ring::SLOTS`), the same for
    /// both containers.
    #[serde(default)]
    pub bit: u32,
}

/// The fds of one binding as they cross the daemon's socket: the binding region's memfd, a
/// doorbell that wakes the peer container, and the pair's summary page (one per pair of
/// containers, the same file with every binding between them).
#[derive(Debug)]
pub struct BindingFds {
    pub region: OwnedFd,
    pub peer_bell: OwnedFd,
    pub summary: OwnedFd,
}
