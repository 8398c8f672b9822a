//! The daemon's refusals: a typed kind (for programs) and its message (for people). Every
//! message names the thing that is wrong and says what to do about it.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::msg::{GrantId, Name, Proto};

/// A refusal as it travels: the kind and the message the daemon made from it. Clients print
/// `message`; programs match on `kind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(deny_unknown_fields)]
#[error("{message}")]
pub struct ErrorReply {
    /// What went wrong, with its details.
    pub kind: ErrorKind,
    /// The same for a person, with the fix.
    pub message: String,
}

impl From<ErrorKind> for ErrorReply {
    fn from(kind: ErrorKind) -> Self {
        ErrorReply { message: kind.to_string(), kind }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "code", rename_all = "snake_case", deny_unknown_fields)]
pub enum ErrorKind {
    /// The frame's body is not a valid request.
    #[error("bad request: {reason}; see docs/ARCHITECTURE.md, \"Control protocol\", for the message format")]
    BadRequest {
        /// What the decoder said.
        reason: String,
    },
    /// The first request was not `hello`.
    #[error("the first request on a connection must be hello (protocol version negotiation)")]
    HelloFirst,
    /// No version in common.
    #[error(
        "protocol versions {client_min}-{client_max} are not spoken by this daemon, which speaks \
         {daemon_min}-{daemon_max}; use an arrakis client and daemon from the same release"
    )]
    Version {
        /// Client's oldest.
        client_min: u16,
        /// Client's newest.
        client_max: u16,
        /// Daemon's oldest.
        daemon_min: u16,
        /// Daemon's newest.
        daemon_max: u16,
    },
    /// The request needs a registered container.
    #[error("process {pid} is not a registered container; register first (`arrakis run` does it)")]
    NotRegistered {
        /// The caller.
        pid: u32,
    },
    /// Another container holds an overlapping grant.
    #[error(
        "port {port}/{proto} is held by container {pid} ({name}) under grant {grant}; \
         choose another port or revoke grant {grant} (`arrakis revoke {grant}`)"
    )]
    HeldByContainer {
        /// Protocol.
        proto: Proto,
        /// First port in common.
        port: u16,
        /// The holder's pid.
        pid: u32,
        /// The holder's name.
        name: Name,
        /// The grant.
        grant: GrantId,
    },
    /// A process outside the library OS has a kernel socket on the port.
    #[error(
        "port {port}/{proto} is in use by a kernel socket on {addr} ({state}); choose another \
         port or stop the process that uses it (`ss -lntup 'sport = :{port}'` shows it)"
    )]
    HeldByKernel {
        /// Protocol.
        proto: Proto,
        /// The port.
        port: u16,
        /// The kernel socket's local address.
        addr: IpAddr,
        /// Its state as `ss` names it.
        state: String,
    },
    /// The grant would take the container past its quota.
    #[error(
        "container {pid} would hold {grants} grants covering {ports} ports, over its quota of \
         {max_grants} grants and {max_ports} ports; revoke a grant it no longer needs or start \
         the daemon with a larger --max-grants/--max-ports"
    )]
    Quota {
        /// The container.
        pid: u32,
        /// Grants it would hold.
        grants: u32,
        /// Ports it would hold.
        ports: u32,
        /// Quota of grants.
        max_grants: u32,
        /// Quota of ports.
        max_ports: u32,
    },
    /// A port below the unprivileged start, asked for by a non-root user.
    #[error(
        "port {port} is privileged (below {start}) and uid {uid} is not root; choose a port of \
         {start} or above, or run as root"
    )]
    Privileged {
        /// The port.
        port: u16,
        /// `net.ipv4.ip_unprivileged_port_start`.
        start: u16,
        /// The caller's uid.
        uid: u32,
    },
    /// No such grant.
    #[error("there is no grant {id}; `arrakis filters` lists the grants")]
    UnknownGrant {
        /// The id asked for.
        id: GrantId,
    },
    /// The caller may not act on the grant.
    #[error("uid {uid} may not revoke grant {id}, which belongs to uid {owner}; ask its owner or root")]
    NotPermitted {
        /// The grant.
        id: GrantId,
        /// The caller's uid.
        uid: u32,
        /// The holders' uid.
        owner: u32,
    },
    /// The token does not match the grant.
    #[error("the token does not match grant {id}; inherit with the token the grant's holder was given")]
    BadToken {
        /// The grant.
        id: GrantId,
    },
    /// Something inside the daemon failed (no randomness, ...).
    #[error("the daemon failed: {reason}; see the daemon's log")]
    Internal {
        /// What failed.
        reason: String,
    },
    /// The daemon could not write its store.
    #[error("the daemon could not record the change in its store ({reason}); nothing was changed, see the daemon's log")]
    Store {
        /// What the store said.
        reason: String,
    },
    /// Version 2: no block of ephemeral ports is free for a container's NIC.
    #[error(
        "no block of {block} ephemeral {proto} ports is free in {first}-{last} (grants or kernel \
         sockets hold every one); revoke grants in that range or stop the kernel sockets there"
    )]
    NoEphemeral {
        /// Protocol.
        proto: Proto,
        /// Ports per block.
        block: u16,
        /// First port of the ephemeral range.
        first: u16,
        /// Last port of the ephemeral range.
        last: u16,
    },
    /// Version 3: no container answers to the name or pid given.
    #[error("no container {container}: {reason}; `arrakis status` lists the containers")]
    NoContainer {
        /// What was given.
        container: String,
        /// Why it names none (or several).
        reason: String,
    },
    /// Version 3: the caller may not capture another user's container.
    #[error(
        "uid {uid} may not capture container {pid}, which belongs to uid {owner}; run as its user or root"
    )]
    CaptureNotPermitted {
        /// The container.
        pid: u32,
        /// The caller's uid.
        uid: u32,
        /// The container's uid.
        owner: u32,
    },
    /// Version 4: no VSA has that name.
    #[error(
        "there is no VSA \"{name}\"; `arrakis vsa list` lists the VSAs and `arrakis vsa create {name} SIZE` \
         makes one"
    )]
    NoVsa {
        /// The name asked for.
        name: String,
    },
    /// Version 4: a VSA of that name exists already.
    #[error(
        "a VSA \"{name}\" exists already; choose another name or delete it first (`arrakis vsa delete {name}`)"
    )]
    VsaExists {
        /// The name.
        name: String,
    },
    /// Version 4: the name cannot name a VSA (it becomes a file name).
    #[error("\"{name}\" cannot name a VSA: {reason}")]
    VsaName {
        /// The name given.
        name: String,
        /// What is wrong with it, and what is allowed.
        reason: String,
    },
    /// Version 4: the caller's uid may not use the VSA.
    #[error(
        "uid {uid} may not use VSA \"{name}\", which belongs to uid {owner}; run as uid {owner} or root"
    )]
    VsaNotPermitted {
        /// The VSA.
        name: String,
        /// The caller's uid.
        uid: u32,
        /// The uid that created it.
        owner: u32,
    },
    /// Version 4: a running process owns the volume, so the VSA cannot be changed that way.
    #[error(
        "cannot {action} VSA \"{name}\": it is owned by pid {pid}; stop that process (or let it \
         detach) first, or work on a copy"
    )]
    VsaOwned {
        /// The VSA.
        name: String,
        /// The owner's pid.
        pid: u32,
        /// What was refused (`delete`, `shrink`).
        action: String,
    },
    /// Version 4: a size that cannot be given (zero, past the limit, past the free space,
    /// below what the volume uses, or a shrink this build cannot check).
    #[error("VSA \"{name}\": {reason}")]
    VsaSize {
        /// The VSA.
        name: String,
        /// What is wrong, with the numbers and the fix.
        reason: String,
    },
    /// Version 4: the VSA's backing file could not be made, read or changed.
    #[error("VSA \"{name}\": its backing file failed: {reason}; see the daemon's log")]
    VsaStorage {
        /// The VSA.
        name: String,
        /// The operation, the file and the OS error.
        reason: String,
    },
    /// Version 4: `volume_detach` by a process that does not own the volume.
    #[error("process {pid} does not own volume \"{name}\" ({owner}); only its owner detaches it")]
    NotVolumeOwner {
        /// The VSA.
        name: String,
        /// The caller.
        pid: u32,
        /// Who owns it, in words (`owned by pid 42`, `no owner`).
        owner: String,
    },
    /// Version 5: the switch will not make a secure binding for the flow (the grants do not
    /// allow it both ways, no other container receives at the remote end, the caller has no
    /// NIC, a table is full, ...). The flow's frames keep going through the switch.
    #[error("no secure binding for {flow}: {reason}; its frames keep going through the switch")]
    NotBindable {
        /// The flow as asked (`tcp 127.0.0.1:5000 -> 127.0.0.1:6379`).
        flow: String,
        /// Why, and what to do about it.
        reason: String,
    },
}

impl ErrorKind {
    /// The kind's code, as in the wire format (`held_by_kernel`, ...), for counters.
    pub fn code(&self) -> &'static str {
        match self {
            ErrorKind::BadRequest { .. } => "bad_request",
            ErrorKind::HelloFirst => "hello_first",
            ErrorKind::Version { .. } => "version",
            ErrorKind::NotRegistered { .. } => "not_registered",
            ErrorKind::HeldByContainer { .. } => "held_by_container",
            ErrorKind::HeldByKernel { .. } => "held_by_kernel",
            ErrorKind::Quota { .. } => "quota",
            ErrorKind::Privileged { .. } => "privileged",
            ErrorKind::UnknownGrant { .. } => "unknown_grant",
            ErrorKind::NotPermitted { .. } => "not_permitted",
            ErrorKind::BadToken { .. } => "bad_token",
            ErrorKind::Internal { .. } => "internal",
            ErrorKind::Store { .. } => "store",
            ErrorKind::NoEphemeral { .. } => "no_ephemeral",
            ErrorKind::NoContainer { .. } => "no_container",
            ErrorKind::CaptureNotPermitted { .. } => "capture_not_permitted",
            ErrorKind::NoVsa { .. } => "no_vsa",
            ErrorKind::VsaExists { .. } => "vsa_exists",
            ErrorKind::VsaName { .. } => "vsa_name",
            ErrorKind::VsaNotPermitted { .. } => "vsa_not_permitted",
            ErrorKind::VsaOwned { .. } => "vsa_owned",
            ErrorKind::VsaSize { .. } => "vsa_size",
            ErrorKind::VsaStorage { .. } => "vsa_storage",
            ErrorKind::NotVolumeOwner { .. } => "not_volume_owner",
            ErrorKind::NotBindable { .. } => "not_bindable",
        }
    }
}
