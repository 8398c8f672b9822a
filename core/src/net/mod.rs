//! The library OS's network stack: smoltcp driven with our own demultiplexing so that a
//! packet costs O(1) however many connections exist ([`stack`]), sockets with Linux's
//! semantics on it ([`socket`]), and the process's network world — lock, clock, waits,
//! progress thread ([`world`]).

pub mod cmsg;
pub mod control;
pub use arrakis_backends::hash;
pub(crate) mod shadow;
pub mod socket;
pub mod stack;
pub mod tuple;
pub mod udp;
pub mod world;

/// Whether flows to other processes on the emulator backend may ask for secure bindings
/// (`ARRAKIS_BINDINGS`); read when the NIC is attached.
pub fn set_bindings(on: bool) {
    control::BINDINGS.store(on, std::sync::atomic::Ordering::SeqCst);
}

/// Whether library-OS TCP sockets get a kernel half for clients not under the shim
/// (`ARRAKIS_KERNEL_CLIENTS`, see [`shadow`]).
pub fn set_kernel_clients(on: bool) {
    shadow::ENABLED.store(on, std::sync::atomic::Ordering::SeqCst);
}
