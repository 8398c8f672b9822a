//! A small blocking client: connect, say hello, send requests, read replies.
//!
//! The launcher and the admin CLI use it as is; the library OS will use it to register and
//! ask for grants. It never raises `SIGPIPE` (writes use `MSG_NOSIGNAL`), and every read and
//! write has a timeout, so a daemon that hangs cannot hang its client for ever.

use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags,
};

use super::error::ErrorReply;
use super::frame::{self, FrameBuf};
use super::msg::{
    decode_reply, Filter, GrantId, Name, NicInfo, Outcome, Proto, Request, RequestFrame, Response, Token,
    VolumeRole, VsaInfo,
};
use super::{MAX_FDS, MIN_VERSION, VERSION};
use crate::emulator::ring::SLOTS;
use crate::emulator::{BindingFds, BindingInfo};

/// How long a client waits for the daemon to take or answer a request.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens at the socket.
    #[error(
        "no arrakis daemon at {}: start one with `arrakis daemon` or use `arrakis run`, which starts one",
        path.display()
    )]
    NoDaemon {
        /// The socket.
        path: PathBuf,
        /// What connect said.
        #[source]
        source: io::Error,
    },
    /// The socket exists but the caller may not connect to it.
    #[error("cannot connect to the arrakis daemon at {}: {source}; run as the daemon's user or root", path.display())]
    Denied {
        /// The socket.
        path: PathBuf,
        /// What connect said.
        #[source]
        source: io::Error,
    },
    /// Talking to the daemon failed.
    #[error("lost the arrakis daemon at {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The daemon sent something this client cannot read.
    #[error("the arrakis daemon at {} sent a bad reply: {reason}", path.display())]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The daemon refused the request.
    #[error(transparent)]
    Refused(#[from] ErrorReply),
}

/// One connection to the daemon, past `hello`.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    path: PathBuf,
    seq: u32,
    version: u16,
    daemon: String,
}

impl Client {
    /// Connects to the daemon at `path` and negotiates the version.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| {
            let path = path.to_path_buf();
            match source.kind() {
                io::ErrorKind::PermissionDenied => ClientError::Denied { path, source },
                _ => ClientError::NoDaemon { path, source },
            }
        })?;
        let io_err = |source| ClientError::Io { path: path.to_path_buf(), source };
        stream.set_read_timeout(Some(TIMEOUT)).map_err(io_err)?;
        stream.set_write_timeout(Some(TIMEOUT)).map_err(io_err)?;
        let mut c = Client { stream, path: path.to_path_buf(), seq: 0, version: 0, daemon: String::new() };
        match c.call(Request::Hello { min: MIN_VERSION, max: VERSION })? {
            Response::Hello { version, daemon } => {
                c.version = version;
                c.daemon = daemon;
                Ok(c)
            }
            other => Err(c.unexpected(&other)),
        }
    }

    /// The negotiated protocol version.
    pub fn version(&self) -> u16 {
        self.version
    }

    /// The daemon's build, as it said in `hello`.
    pub fn daemon_version(&self) -> &str {
        &self.daemon
    }

    /// The socket this client is connected to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn unexpected(&self, r: &Response) -> ClientError {
        ClientError::Protocol { path: self.path.clone(), reason: format!("unexpected response {r:?}") }
    }

    /// Sends one request and waits for its reply. Fds that came with the reply are closed.
    pub fn call(&mut self, req: Request) -> Result<Response, ClientError> {
        self.call_with_fds(req).map(|(r, _fds)| r)
    }

    /// Sends one request and waits for its reply, with the fds that came with it
    /// (`SCM_RIGHTS`, at most [`MAX_FDS`]; received close-on-exec).
    pub fn call_with_fds(&mut self, req: Request) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        self.call_sending_fds(req, &[])
    }

    /// Sends one request with `fds` as `SCM_RIGHTS` on its first byte (at most one, for
    /// [`Request::Capture`]) and waits for its reply, with the fds that came with it.
    pub fn call_sending_fds(
        &mut self,
        req: Request,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        self.seq = self.seq.wrapping_add(1);
        let wire = |e| match e {
            WireError::Io(source) => ClientError::Io { path: self.path.clone(), source },
            WireError::Protocol(reason) => ClientError::Protocol { path: self.path.clone(), reason },
        };
        match exchange(&self.stream, self.seq, req, fds).map_err(wire)? {
            (Outcome::Ok(r), fds) => Ok((r, fds)),
            (Outcome::Err(e), _) => Err(ClientError::Refused(e)),
        }
    }

    fn proto_err(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Protocol { path: self.path.clone(), reason: e.to_string() }
    }

    /// Registers the calling process as a container named `name`.
    pub fn register(&mut self, name: &str) -> Result<Response, ClientError> {
        self.call(Request::Register { name: Name::lossy(name) })
    }

    /// Asks for a filter; returns the grant's id and token.
    pub fn grant(&mut self, filter: Filter) -> Result<(GrantId, Token), ClientError> {
        match self.call(Request::Grant { filter })? {
            Response::Granted { grant, token } => Ok((grant.id, token)),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Ends a grant.
    pub fn revoke(&mut self, id: GrantId) -> Result<(), ClientError> {
        match self.call(Request::Revoke { id })? {
            Response::Revoked { .. } => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The calling container's virtual NIC ([`Request::Nic`]): what the daemon says of it and
    /// its fds (region, doorbell to the container, doorbell to the switch).
    pub fn nic(&mut self) -> Result<(NicInfo, [OwnedFd; 3]), ClientError> {
        match self.call_with_fds(Request::Nic {})? {
            (Response::Nic { nic }, fds) => {
                let n = fds.len();
                let fds: [OwnedFd; 3] = fds
                    .try_into()
                    .map_err(|_| self.proto_err(format!("the nic reply carried {n} fds; it must carry 3")))?;
                Ok((nic, fds))
            }
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    /// Whether some container receives `proto` traffic at `addr`:`port` ([`Request::Lookup`]).
    pub fn lookup(&mut self, proto: Proto, addr: IpAddr, port: u16) -> Result<bool, ClientError> {
        match self.call(Request::Lookup { proto, addr, port })? {
            Response::Lookup { served } => Ok(served),
            other => Err(self.unexpected(&other)),
        }
    }

    /// A secure binding for the flow from `local` (the caller's end) to `remote`
    /// ([`Request::Bind`], protocol version 7): which side the caller is, its NIC slot and the
    /// binding's id, and the fds (the binding region, the peer's doorbell, the pair's summary
    /// page). A flow that [`bind_flow`](super::msg::bind_flow) refuses is refused here without
    /// asking; a reply whose side, slot or id is out of range, or that does not carry exactly
    /// three fds, is a protocol error.
    pub fn bind(
        &mut self,
        proto: Proto,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(BindingInfo, BindingFds), ClientError> {
        if let Err(reason) = super::msg::bind_flow(local, remote) {
            return Err(ClientError::Refused(super::error::ErrorKind::BadRequest { reason }.into()));
        }
        match self.call_with_fds(Request::Bind { proto, local, remote })? {
            (Response::Bound { binding }, fds) => {
                if binding.side > 1 || binding.slot as usize >= SLOTS || binding.id == 0 {
                    return Err(self.proto_err(format!(
                        "the bind reply names side {}, slot {} and id {}; it must be side 0 or 1, a \
                         slot below {SLOTS} and an id other than 0",
                        binding.side, binding.slot, binding.id
                    )));
                }
                let n = fds.len();
                let [region, peer_bell, summary]: [OwnedFd; 3] = fds.try_into().map_err(|_| {
                    self.proto_err(format!("the bind reply carried {n} fds; it must carry 3"))
                })?;
                Ok((binding, BindingFds { region, peer_bell, summary }))
            }
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    /// Starts capturing `container`'s frames (a pid or a name) as pcap into `out`, at most
    /// `count` of them; returns the container's pid ([`Request::Capture`]).
    pub fn capture(
        &mut self,
        container: &str,
        count: Option<u64>,
        out: BorrowedFd<'_>,
    ) -> Result<u32, ClientError> {
        let req = Request::Capture { container: Name::lossy(container), count };
        match self.call_sending_fds(req, &[out])? {
            (Response::Capturing { pid }, _) => Ok(pid),
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    /// Stops `container`'s capture; the frames it wrote, if it was still running.
    pub fn capture_stop(&mut self, container: &str) -> Result<Option<u64>, ClientError> {
        match self.call(Request::CaptureStop { container: Name::lossy(container) })? {
            Response::CaptureStopped { frames, .. } => Ok(frames),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Refuses, before asking, a name that is not a valid protocol [`Name`].
    fn vsa_name(&self, name: &str) -> Result<Name, ClientError> {
        Name::try_from(name.to_owned()).map_err(|reason| {
            ClientError::Refused(
                super::error::ErrorKind::VsaName { name: name.to_owned(), reason: reason.to_string() }.into(),
            )
        })
    }

    /// Creates VSA `name` of `size` bytes (rounded up to 4096), owned by this process's uid
    /// ([`Request::VsaCreate`]).
    pub fn vsa_create(&mut self, name: &str, size: u64) -> Result<VsaInfo, ClientError> {
        let name = self.vsa_name(name)?;
        match self.call(Request::VsaCreate { name, size })? {
            Response::Vsa { vsa } => Ok(vsa),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Grows or shrinks VSA `name` to `size` bytes ([`Request::VsaResize`]).
    pub fn vsa_resize(&mut self, name: &str, size: u64) -> Result<VsaInfo, ClientError> {
        let name = self.vsa_name(name)?;
        match self.call(Request::VsaResize { name, size })? {
            Response::Vsa { vsa } => Ok(vsa),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Deletes VSA `name` and its storage ([`Request::VsaDelete`]).
    pub fn vsa_delete(&mut self, name: &str) -> Result<(), ClientError> {
        let name = self.vsa_name(name)?;
        match self.call(Request::VsaDelete { name })? {
            Response::VsaDeleted { .. } => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Every VSA, by name ([`Request::VsaList`]).
    pub fn vsa_list(&mut self) -> Result<Vec<VsaInfo>, ClientError> {
        match self.call(Request::VsaList {})? {
            Response::Vsas { vsas } => Ok(vsas),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Attaches this process to volume `name` ([`Request::VolumeAttach`]): creating the VSA
    /// with `create` bytes if it is missing; `read_only` for a read-only fd whoever owns it.
    /// The fd is there for [`VolumeRole::Owner`] (read-write) and [`VolumeRole::ReadOnly`],
    /// and `None` for [`VolumeRole::Remote`]; a reply that breaks this is a protocol error.
    pub fn volume_attach(
        &mut self,
        name: &str,
        create: Option<u64>,
        read_only: bool,
    ) -> Result<(VsaInfo, VolumeRole, Option<OwnedFd>), ClientError> {
        let name = self.vsa_name(name)?;
        match self.call_with_fds(Request::VolumeAttach { name, create, read_only })? {
            (Response::VolumeAttached { vsa, role }, mut fds) => {
                let want = usize::from(!matches!(role, VolumeRole::Remote { .. }));
                if fds.len() != want {
                    return Err(self.proto_err(format!(
                        "the volume_attach reply ({role:?}) carried {} fds; it must carry {want}",
                        fds.len()
                    )));
                }
                Ok((vsa, role, fds.pop()))
            }
            (other, _) => Err(self.unexpected(&other)),
        }
    }

    /// Gives up ownership of volume `name` ([`Request::VolumeDetach`]).
    pub fn volume_detach(&mut self, name: &str) -> Result<(), ClientError> {
        let name = self.vsa_name(name)?;
        match self.call(Request::VolumeDetach { name })? {
            Response::VolumeDetached { .. } => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Becomes a holder of a grant whose token this process was given.
    pub fn inherit(&mut self, id: GrantId, token: Token) -> Result<(), ClientError> {
        match self.call(Request::Inherit { id, token })? {
            Response::Inherited { .. } => Ok(()),
            other => Err(self.unexpected(&other)),
        }
    }
}

/// What went wrong on the wire; the caller says with which daemon.
#[derive(Debug)]
pub enum WireError {
    /// Sending or receiving failed (a timeout set on the stream included).
    Io(io::Error),
    /// The daemon sent something that is not a valid reply to the request.
    Protocol(String),
}

/// One round trip on a connection past `hello`: sends `req` as frame `seq`, with `fds` as
/// `SCM_RIGHTS` on its first byte (at most [`MAX_FDS`]), and reads the reply, which must echo
/// `seq`, with the fds that came with it (received close-on-exec, at most [`MAX_FDS`]). Never
/// raises `SIGPIPE`; a time-out is the stream's own (`set_read_timeout`/`set_write_timeout`).
/// Shared by [`Client`] and the library OS's own connection (`core::net::control`), which
/// places its socket itself.
pub fn exchange(
    stream: &UnixStream,
    seq: u32,
    req: Request,
    fds: &[BorrowedFd<'_>],
) -> Result<(Outcome, Vec<OwnedFd>), WireError> {
    let proto = |e: &dyn std::fmt::Display| WireError::Protocol(e.to_string());
    let bytes = frame::encode(&RequestFrame { seq, req }).map_err(|e| proto(&e))?;
    let mut rest = &bytes[..];
    if !fds.is_empty() {
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = SendAncillaryBuffer::new(&mut space);
        if !anc.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(proto(&format!("{} fds with one request; at most {MAX_FDS}", fds.len())));
        }
        let n = loop {
            match rustix::net::sendmsg(stream, &[io::IoSlice::new(rest)], &mut anc, SendFlags::NOSIGNAL) {
                Ok(n) => break n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(WireError::Io(e.into())),
            }
        };
        rest = &rest[n..];
    }
    while !rest.is_empty() {
        match rustix::net::send(stream, rest, SendFlags::NOSIGNAL) {
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(WireError::Io(e.into())),
        }
    }
    let mut fb = FrameBuf::new();
    let mut chunk = vec![0u8; 4096];
    let mut got_fds = Vec::new();
    // Bounded: each pass takes at least one byte of a frame of at most MAX_FRAME + header, or
    // ends the call.
    for _ in 0..=super::MAX_FRAME + frame::HEADER {
        match fb.take() {
            Ok(Some(body)) => {
                let reply = decode_reply(&body).map_err(|e| proto(&e))?;
                if reply.seq != seq {
                    return Err(proto(&format!("reply for request {} while waiting for {seq}", reply.seq)));
                }
                return Ok((reply.result, got_fds));
            }
            Ok(None) => {}
            Err(e) => return Err(proto(&e)),
        }
        let want = fb.room().min(chunk.len());
        let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut anc = RecvAncillaryBuffer::new(&mut space);
        let got = rustix::net::recvmsg(
            stream,
            &mut [io::IoSliceMut::new(&mut chunk[..want])],
            &mut anc,
            RecvFlags::CMSG_CLOEXEC,
        );
        for m in anc.drain() {
            if let RecvAncillaryMessage::ScmRights(r) = m {
                got_fds.extend(r);
            }
        }
        if got_fds.len() > MAX_FDS {
            return Err(proto(&format!("{} fds with one reply; at most {MAX_FDS}", got_fds.len())));
        }
        match got {
            Ok(r) if r.bytes == 0 => {
                return Err(WireError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the daemon closed the connection",
                )))
            }
            Ok(r) => fb.extend(&chunk[..r.bytes]).map_err(|e| proto(&e))?,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(WireError::Io(e.into())),
        }
    }
    Err(proto(&"the reply never completed"))
}
