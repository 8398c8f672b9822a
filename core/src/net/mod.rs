//! The library OS's network stack (networking issue, in progress): smoltcp driven with our own
//! demultiplexing so that a packet costs O(1) however many connections exist. The socket layer
//! (Linux semantics, placeholders, blocking) will sit on [`stack::Stack`].

pub mod stack;
pub mod tuple;
