//! Devices the library OS drives. Empty until the networking issue adds the loopback
//! backend; the crate exists now so that the dependency direction `shim → core → backends`
//! is fixed from the start.
#![forbid(unsafe_code)]
