//! The library OS's network stack: smoltcp driven with our own demultiplexing so that a
//! packet costs O(1) however many connections exist ([`stack`]), sockets with Linux's
//! semantics on it ([`socket`]), and the process's network world — lock, clock, waits,
//! progress thread ([`world`]).

pub mod cmsg;
pub mod hash;
pub mod socket;
pub mod stack;
pub mod tuple;
pub mod udp;
pub mod world;
