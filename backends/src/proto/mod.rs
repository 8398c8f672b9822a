//! The control protocol between the `arrakis` daemon and its clients (the library OS, the
//! launcher, the admin CLI).
//!
//! It lives here, in `backends`, so that both `ctl` (the daemon) and `core` (the library OS's
//! control-plane client) reach it without the daemon pulling in the network stack. This
//! module owns the wire format only: framing ([`frame`]), the messages and their validation
//! ([`msg`]), the typed errors a daemon answers with ([`error`]) and a small blocking
//! [`client`]. It makes no policy: which grant is allowed is the daemon's business.
//!
//! Wire format, in one paragraph (docs/ARCHITECTURE.md, "Control protocol", has the rest):
//! every message is a *frame*, a little-endian `u32` body length followed by that many bytes
//! of UTF-8 JSON; a body is 1 to [`MAX_FRAME`] bytes. A client sends [`msg::RequestFrame`]s
//! and reads one [`msg::ReplyFrame`] per request, in order, echoing its `seq`. The first
//! request on a connection must be `hello`, which picks the protocol version.
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod frame;
pub mod msg;

use std::path::PathBuf;

pub use error::{ErrorKind, ErrorReply};
pub use frame::{FrameBuf, FrameError, MAX_FRAME};
pub use msg::*;

/// The protocol version this build speaks best (2: `nic`, `lookup`; 3: `capture`,
/// `capture_stop`; 4: VSAs and volumes; 5: `bind`, secure bindings; 6: `bind`'s reply also
/// carries the pair's summary page, and `bind` needs version 6; 7: the page has `rung`
/// words, and `bind` needs version 7).
pub const VERSION: u16 = 7;
/// The oldest protocol version this build still speaks.
pub const MIN_VERSION: u16 = 1;

/// How many fds a reply may carry (`SCM_RIGHTS`); [`Request::Nic`]'s and [`Request::Bind`]'s
/// carry three. A
/// request carries at most one ([`Request::Capture`]'s).
pub const MAX_FDS: usize = 4;

/// The socket's file name inside the run directory.
pub const SOCKET_NAME: &str = "ctl.sock";

/// The daemon's run directory: `$ARRAKIS_RUN_DIR`, else `/run/arrakis`.
pub fn default_run_dir() -> PathBuf {
    match std::env::var_os("ARRAKIS_RUN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from("/run/arrakis"),
    }
}

/// The daemon's socket: `$ARRAKIS_SOCKET`, else `ctl.sock` in [`default_run_dir`].
pub fn default_socket() -> PathBuf {
    match std::env::var_os("ARRAKIS_SOCKET") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => default_run_dir().join(SOCKET_NAME),
    }
}
