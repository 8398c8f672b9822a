//! The emulator backend: a virtual NIC in shared memory, the seed paper's "emulate the
//! hardware in software".
//!
//! * [`ring`] — the memory format of one NIC (a pair of single-producer/single-consumer
//!   descriptor rings and a buffer pool in one sealed memfd), its index protocol, virtio-style
//!   notification suppression and eventfd doorbells. The crate's only `unsafe` code lives
//!   there, and it trusts nothing the peer writes.
//! * [`nic`] — [`EmulatorNic`], the container's end as a [`NetDevice`](crate::NetDevice), and
//!   [`SwitchPort`], the switch's end; [`nic::create`] makes a fresh pair.
//! * [`binding`] — secure bindings: a private ring pair between two containers for one
//!   checked flow, so its frames bypass the switch.
//! * [`filter`] — the switch's view of a grant: which frames a container may send and receive.
//! * [`tap`] — the uplink: a tun interface in IP mode through which the switch reaches the
//!   kernel's network (and, routed by it, other hosts).
//!
//! The switch itself (routing, filter checks, counters, capture) is data plane but runs in
//! its own process; it lives in the `arrakis` binary (`ctl/src/switch/`).

pub mod binding;
pub mod filter;
pub mod mss;
pub mod nic;
#[allow(unsafe_code)]
pub mod ring;
#[allow(unsafe_code)]
pub mod tap;

pub use binding::{BindingFds, BindingInfo};
pub use nic::{create, EmulatorNic, NicFds, SwitchPort};
pub use ring::{Doorbell, Geometry, RingError};
