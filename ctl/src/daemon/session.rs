//! One client's side of the protocol, apart from its socket: bytes in, reply bytes out.
//! [`Daemon`] holds what all sessions share (the registry, the host, the store) and answers
//! a frame; [`Session`] holds one connection's framing and negotiated version. Both are
//! driven by the server's event loop and, in tests, directly with arbitrary bytes.

use std::path::PathBuf;
use std::time::Instant;

use arrakis_backends::proto::frame::encode;
use arrakis_backends::proto::{
    decode_request, DaemonInfo, ErrorKind, ErrorReply, FrameBuf, Outcome, ReplyFrame, Request, Response,
    MIN_VERSION, VERSION,
};

use super::host::Host;
use super::rules::{Caller, Registry};
use super::store::Store;

/// What every session shares.
pub struct Daemon {
    /// Containers and grants.
    pub registry: Registry,
    /// The outside world.
    pub host: Box<dyn Host>,
    /// The store (`None` in tests of the rules alone).
    pub store: Option<Store>,
    /// The socket, for `status`.
    pub socket: PathBuf,
    /// When the daemon started.
    pub started: Instant,
}

/// What the server must do after a frame.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Reply bytes to send.
    pub reply: Vec<u8>,
    /// The stream lost its framing: close after sending the reply.
    pub close: bool,
    /// A container registered (its pid, to watch for its death).
    pub registered: Option<u32>,
    /// Containers were removed (watches to drop).
    pub removed: bool,
}

impl Daemon {
    /// Writes the registry's changes to the store. On failure the registry is reloaded from
    /// the store (which is the truth) and the error is returned for the reply.
    pub fn persist(&mut self) -> Result<(), ErrorKind> {
        let changes = self.registry.take_changes();
        let Some(store) = &self.store else { return Ok(()) };
        if let Err(e) = store.commit(&changes) {
            eprintln!("arrakis daemon: {e}");
            if let Ok(l) = store.load() {
                let counters = self.registry.counters.clone();
                self.registry = Registry::new(self.registry.limits(), l.containers, l.grants, l.next_id);
                self.registry.counters = counters;
            }
            return Err(ErrorKind::Store { reason: e.to_string() });
        }
        Ok(())
    }

    fn info(&self) -> DaemonInfo {
        let l = self.registry.limits();
        DaemonInfo {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            protocol: (MIN_VERSION, VERSION),
            socket: self.socket.display().to_string(),
            store: self.store.as_ref().map(|s| s.path().display().to_string()).unwrap_or_default(),
            uptime: self.started.elapsed().as_secs(),
            max_grants: l.max_grants,
            max_ports: l.max_ports,
        }
    }

    /// Answers one request of a session whose negotiated version is `version`.
    fn answer(
        &mut self,
        caller: Caller,
        version: &mut Option<u16>,
        req: Request,
        fx: &mut Effects,
    ) -> Outcome {
        // The registry counts the requests it handles; these are counted here.
        if matches!(req, Request::Hello { .. } | Request::Status {}) || version.is_none() {
            self.registry.counters.requests += 1;
        }
        let result = match (req, *version) {
            (Request::Hello { min, max }, _) => {
                let v = max.min(VERSION);
                if min > max || v < MIN_VERSION || v < min {
                    Err(ErrorKind::Version {
                        client_min: min,
                        client_max: max,
                        daemon_min: MIN_VERSION,
                        daemon_max: VERSION,
                    })
                } else {
                    *version = Some(v);
                    Ok(Response::Hello { version: v, daemon: env!("CARGO_PKG_VERSION").to_owned() })
                }
            }
            (_, None) => {
                *self.registry.counters.refusals.entry("hello_first".into()).or_default() += 1;
                Err(ErrorKind::HelloFirst)
            }
            (Request::Status {}, Some(_)) => {
                Ok(Response::Status { daemon: self.info(), containers: self.registry.containers() })
            }
            (req, Some(_)) => {
                let is_register = matches!(req, Request::Register { .. });
                let removes =
                    matches!(req, Request::Unregister {} | Request::Grant { .. } | Request::Inherit { .. });
                let r = self.registry.handle(caller, req, self.host.as_mut());
                // A refusal may still have reclaimed a dead container (pid reuse): persist
                // whatever changed either way.
                match (self.persist(), r) {
                    (Err(e), _) => Err(e),
                    (Ok(()), Ok(resp)) => {
                        if is_register {
                            fx.registered = Some(caller.pid);
                        }
                        fx.removed |= removes;
                        Ok(resp)
                    }
                    (Ok(()), Err(e)) => {
                        fx.removed |= removes;
                        Err(e)
                    }
                }
            }
        };
        match result {
            Ok(r) => Outcome::Ok(r),
            Err(e) => Outcome::Err(ErrorReply::from(e)),
        }
    }
}

/// One connection's protocol state.
#[derive(Debug, Default)]
pub struct Session {
    /// Bytes of the frame being received.
    pub buf: FrameBuf,
    version: Option<u16>,
}

fn reply_bytes(seq: u32, result: Outcome) -> Vec<u8> {
    encode(&ReplyFrame { seq, result }).unwrap_or_else(|e| {
        // Only a listing over 64 KiB could get here; the request is answered with an error.
        let err = ErrorReply::from(ErrorKind::Internal { reason: e.to_string() });
        encode(&ReplyFrame { seq, result: Outcome::Err(err) }).unwrap_or_default()
    })
}

impl Session {
    /// Takes every complete frame from the buffer and answers it. Returns what to send and
    /// whether to close (after a framing error; a body that does not decode is answered and
    /// the connection goes on, since its framing is intact).
    pub fn process(&mut self, d: &mut Daemon, caller: Caller) -> Effects {
        let mut fx = Effects::default();
        loop {
            match self.buf.take() {
                Ok(None) => return fx,
                Ok(Some(body)) => {
                    let (seq, outcome) = match decode_request(&body) {
                        Ok(f) => (f.seq, d.answer(caller, &mut self.version, f.req, &mut fx)),
                        Err(e) => {
                            d.registry.counters.requests += 1;
                            *d.registry.counters.refusals.entry("bad_request".into()).or_default() += 1;
                            (0, Outcome::Err(ErrorKind::BadRequest { reason: e.to_string() }.into()))
                        }
                    };
                    fx.reply.extend(reply_bytes(seq, outcome));
                }
                Err(e) => {
                    let err = ErrorKind::BadRequest { reason: e.to_string() };
                    fx.reply.extend(reply_bytes(0, Outcome::Err(err.into())));
                    fx.close = true;
                    return fx;
                }
            }
        }
    }
}
