//! The daemon's state and its rules: who is a container, which grants exist, and whether a
//! request may change them. Pure logic over a [`Host`]: no sockets, no store. Every change
//! is also queued as a [`Change`], which the server writes to the store before it answers.
//!
//! Rules for a grant (checked in this order, first refusal wins):
//! 1. the caller is a registered container whose process is still the one that registered;
//! 2. a port below `net.ipv4.ip_unprivileged_port_start` needs uid 0;
//! 3. no overlap ([`Filter::overlaps`]) with a grant the caller does not hold;
//! 4. the caller's grants and the ports they cover stay within the quota;
//! 5. no kernel socket holds a port of the range on an overlapping address
//!    ([`super::host::parse_proc_net`] says which sockets hold one), except on a port the
//!    caller already holds a grant for (its own library sockets' kernel halves).
//!
//! Before these, a filter the emulator's switch cannot enforce exactly (peer ports, the
//! any-IPv4 peer `0.0.0.0`) is refused ([`super::plane::switch_filter`]): never widened.
//!
//! A container that asks for its NIC also gets, once for its life, one block of
//! [`EPHEMERAL_BLOCK`] TCP ports and one of UDP ports in [`EPHEMERAL_FIRST`]..=
//! [`EPHEMERAL_LAST`] (above Linux's default `ip_local_port_range`), each a grant
//! (`both`, local `::`) that no other grant and no kernel socket overlaps. They are listed
//! like any grant, released with the container, and not counted against its quota.

use std::collections::BTreeMap;
use std::net::IpAddr;

use arrakis_backends::proto::{
    addrs_overlap, ContainerInfo, ContainerStats, DaemonCounters, Direction, ErrorKind, Filter, GrantId,
    GrantInfo, IfAddr, Name, NicInfo, PortRange, Proto, Request, Response, Token,
};
use serde::{Deserialize, Serialize};

use super::host::{Host, KernelSocket};

/// Who is asking, from `SO_PEERCRED`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caller {
    /// Process id (0 if the caller is in a pid namespace the daemon cannot see).
    pub pid: u32,
    /// User id.
    pub uid: u32,
}

/// Per-container quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Grants per container.
    pub max_grants: u32,
    /// Ports per container, summed over its grants.
    pub max_ports: u32,
}

impl Default for Limits {
    /// 64 grants and 4096 ports: a server with a few listeners and a few thousand outgoing
    /// connections' ephemeral ports fits; one container cannot take a whole port space.
    fn default() -> Self {
        Limits { max_grants: 64, max_ports: 4096 }
    }
}

/// First port of the ephemeral blocks.
pub const EPHEMERAL_FIRST: u16 = 61000;
/// Last port of the ephemeral blocks.
pub const EPHEMERAL_LAST: u16 = 65535;
/// Ports per ephemeral block.
pub const EPHEMERAL_BLOCK: u16 = 128;

/// A container as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRec {
    /// Process id.
    pub pid: u32,
    /// Start time of the process (`/proc/PID/stat` field 22): with the pid, the process's
    /// identity across pid reuse.
    pub start: u64,
    /// Name.
    pub name: Name,
    /// User id.
    pub uid: u32,
    /// Parent pid at registration.
    pub parent: u32,
    /// Registration time (Unix seconds).
    pub registered: u64,
}

/// A grant as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantRec {
    /// Number.
    pub id: GrantId,
    /// What it allows.
    pub filter: Filter,
    /// Secret.
    pub token: Token,
    /// Holders' pids; the first asked for it.
    pub holders: Vec<u32>,
    /// The uid of the container that asked for it.
    pub uid: u32,
    /// Creation time (Unix seconds).
    pub created: u64,
    /// One of a container's ephemeral port blocks (made by `nic`, outside the quota).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ephemeral: bool,
}

impl GrantRec {
    fn info(&self) -> GrantInfo {
        GrantInfo {
            id: self.id,
            filter: self.filter.clone(),
            holders: self.holders.clone(),
            created: self.created,
        }
    }
}

/// One change to write to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert or replace a container.
    PutContainer(ContainerRec),
    /// Remove a container.
    DelContainer(u32),
    /// Insert or replace a grant.
    PutGrant(GrantRec),
    /// Remove a grant.
    DelGrant(GrantId),
    /// The next grant number.
    NextId(u64),
    /// Insert or replace a VSA.
    PutVsa(super::vsa::VsaRec),
    /// Remove a VSA.
    DelVsa(String),
}

/// All containers and grants.
#[derive(Debug)]
pub struct Registry {
    containers: BTreeMap<u32, ContainerRec>,
    grants: BTreeMap<GrantId, GrantRec>,
    next_id: u64,
    limits: Limits,
    /// Counters since start.
    pub counters: DaemonCounters,
    changes: Vec<Change>,
    /// The containers' address on the switch's uplink, if it has one.
    uplink: Option<IfAddr>,
    /// When each ephemeral block was last given back, as a sequence number: a new block is
    /// the free one given back longest ago (never: first), so a block a process just left —
    /// perhaps by `kill -9`, its connections still open at their peers — goes to the next
    /// container as late as possible, not at once (in memory only; a restart forgets).
    released_blocks: BTreeMap<(Proto, u16), u64>,
    release_seq: u64,
}

/// Constant-time comparison of two tokens.
fn same_token(a: &Token, b: &Token) -> bool {
    a.0.iter().zip(b.0.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Registry {
    /// A registry with what the store held.
    pub fn new(limits: Limits, containers: Vec<ContainerRec>, grants: Vec<GrantRec>, next_id: u64) -> Self {
        let max_seen = grants.iter().map(|g| g.id.0 + 1).max().unwrap_or(1);
        Registry {
            containers: containers.into_iter().map(|c| (c.pid, c)).collect(),
            grants: grants.into_iter().map(|g| (g.id, g)).collect(),
            next_id: next_id.max(max_seen).max(1),
            limits,
            counters: DaemonCounters::default(),
            changes: Vec::new(),
            uplink: None,
            released_blocks: BTreeMap::new(),
            release_seq: 0,
        }
    }

    /// The quota.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Takes the changes made since the last call.
    pub fn take_changes(&mut self) -> Vec<Change> {
        std::mem::take(&mut self.changes)
    }

    /// Pids of the registered containers.
    pub fn pids(&self) -> Vec<u32> {
        self.containers.keys().copied().collect()
    }

    /// The container of `pid`, if registered.
    pub fn container(&self, pid: u32) -> Option<&ContainerRec> {
        self.containers.get(&pid)
    }

    /// Every grant.
    pub fn grants(&self) -> impl Iterator<Item = &GrantRec> {
        self.grants.values()
    }

    /// Reclaims every container whose process is gone or is another process by now (its
    /// pid reused: the start time differs). Returns the pids still alive.
    pub fn reclaim_stale(&mut self, host: &dyn Host) -> Vec<u32> {
        let mut alive = Vec::new();
        for (pid, start) in self.containers.values().map(|c| (c.pid, c.start)).collect::<Vec<_>>() {
            match host.process(pid) {
                Some((s, _)) if s == start => alive.push(pid),
                _ => {
                    self.reclaim(pid);
                }
            }
        }
        alive
    }

    /// The container `pid` died: its grants go (those it shared stay with the other holders).
    pub fn reclaim(&mut self, pid: u32) -> Vec<GrantId> {
        if !self.containers.contains_key(&pid) {
            return Vec::new();
        }
        self.counters.reclaimed += 1;
        self.remove_container(pid)
    }

    fn remove_container(&mut self, pid: u32) -> Vec<GrantId> {
        self.containers.remove(&pid);
        self.changes.push(Change::DelContainer(pid));
        let mut released = Vec::new();
        let mut touched = Vec::new();
        for g in self.grants.values_mut() {
            if let Some(i) = g.holders.iter().position(|&h| h == pid) {
                g.holders.remove(i);
                touched.push(g.id);
            }
        }
        for id in touched {
            if self.grants.get(&id).is_some_and(|g| g.holders.is_empty()) {
                if let Some(g) = self.grants.remove(&id) {
                    self.note_release(&g);
                }
                self.changes.push(Change::DelGrant(id));
                self.counters.released += 1;
                released.push(id);
            } else if let Some(g) = self.grants.get(&id) {
                self.changes.push(Change::PutGrant(g.clone()));
            }
        }
        released
    }

    /// Records that an ephemeral block's grant ended (see `released_blocks`).
    fn note_release(&mut self, g: &GrantRec) {
        if g.ephemeral {
            self.release_seq += 1;
            self.released_blocks.insert((g.filter.proto(), g.filter.ports().lo()), self.release_seq);
        }
    }

    /// Whether the caller is a registered container that is still the same process (a pid
    /// reused before the death was noticed is reclaimed here).
    pub fn check_registered(&mut self, caller: Caller, host: &dyn Host) -> Result<(), ErrorKind> {
        self.registered(caller, host).map(|_| ())
    }

    /// The registered container of the caller, checking it is still the same process.
    fn registered(&mut self, caller: Caller, host: &dyn Host) -> Result<&ContainerRec, ErrorKind> {
        let Some(c) = self.containers.get(&caller.pid) else {
            return Err(ErrorKind::NotRegistered { pid: caller.pid });
        };
        if host.process(caller.pid).map(|p| p.0) != Some(c.start) {
            // The pid was reused before the death was noticed.
            self.reclaim(caller.pid);
            return Err(ErrorKind::NotRegistered { pid: caller.pid });
        }
        Ok(&self.containers[&caller.pid])
    }

    /// Grants and ports counted against `pid`'s quota (its ephemeral blocks are not).
    fn held_by(&self, pid: u32) -> (u32, u32) {
        self.grants
            .values()
            .filter(|g| g.holders.contains(&pid) && !g.ephemeral)
            .fold((0, 0), |(n, p), g| (n + 1, p + g.filter.ports().len()))
    }

    fn check_quota(&self, pid: u32, filter: &Filter) -> Result<(), ErrorKind> {
        let (n, p) = self.held_by(pid);
        let (grants, ports) = (n + 1, p + filter.ports().len());
        if grants > self.limits.max_grants || ports > self.limits.max_ports {
            return Err(ErrorKind::Quota {
                pid,
                grants,
                ports,
                max_grants: self.limits.max_grants,
                max_ports: self.limits.max_ports,
            });
        }
        Ok(())
    }

    fn container_info(&self, c: &ContainerRec) -> ContainerInfo {
        ContainerInfo {
            pid: c.pid,
            name: c.name.clone(),
            uid: c.uid,
            parent: c.parent,
            registered: c.registered,
            grants: self.grants.values().filter(|g| g.holders.contains(&c.pid)).map(|g| g.id).collect(),
        }
    }

    /// The container a user names: its pid (all digits), or its name if one container has
    /// it.
    pub fn resolve(&self, given: &str) -> Result<&ContainerRec, ErrorKind> {
        let none = |reason: String| ErrorKind::NoContainer { container: given.to_owned(), reason };
        if let Ok(pid) = given.parse::<u32>() {
            return self.containers.get(&pid).ok_or_else(|| none("no container has that pid".into()));
        }
        let named: Vec<&ContainerRec> =
            self.containers.values().filter(|c| c.name.as_str() == given).collect();
        match named.as_slice() {
            [c] => Ok(c),
            [] => Err(none("no container has that name".into())),
            many => {
                let pids: Vec<String> = many.iter().map(|c| c.pid.to_string()).collect();
                Err(none(format!(
                    "{} containers have that name (pids {}); give a pid",
                    many.len(),
                    pids.join(", ")
                )))
            }
        }
    }

    /// Every container, for `status`.
    pub fn containers(&self) -> Vec<ContainerInfo> {
        self.containers.values().map(|c| self.container_info(c)).collect()
    }

    /// Carries out one request (all but `hello` and `status`, which need the server's
    /// facts). A refusal changes nothing.
    pub fn handle(
        &mut self,
        caller: Caller,
        req: Request,
        host: &mut dyn Host,
    ) -> Result<Response, ErrorKind> {
        let r = self.dispatch(caller, req, host);
        self.counters.requests += 1;
        if let Err(e) = &r {
            *self.counters.refusals.entry(e.code().to_owned()).or_default() += 1;
        }
        r
    }

    fn dispatch(&mut self, caller: Caller, req: Request, host: &mut dyn Host) -> Result<Response, ErrorKind> {
        match req {
            Request::Hello { .. }
            | Request::Status {}
            | Request::Capture { .. }
            | Request::CaptureStop { .. } => Err(ErrorKind::BadRequest {
                reason: "hello, status and capture are answered by the server".into(),
            }),
            Request::Nic {} => self.nic(caller, host),
            Request::Lookup { proto, addr, port } => {
                Ok(Response::Lookup { served: self.serves(proto, addr, port) })
            }
            Request::Register { name } => self.register(caller, name, host),
            Request::Grant { filter } => self.grant(caller, filter, host),
            Request::Revoke { id } => self.revoke(caller, id),
            Request::Inherit { id, token } => self.inherit(caller, id, token, host),
            Request::Filters {} => {
                Ok(Response::Filters { grants: self.grants.values().map(GrantRec::info).collect() })
            }
            Request::Stats {} => Ok(Response::Stats {
                daemon: self.counters.clone(),
                containers: self
                    .containers
                    .values()
                    .map(|c| {
                        let (grants, ports) = self.held_by(c.pid);
                        ContainerStats { pid: c.pid, name: c.name.clone(), grants, ports }
                    })
                    .collect(),
                // The switch's counters arrive with the emulator backend.
                switch: None,
            }),
            Request::VsaCreate { .. }
            | Request::VsaResize { .. }
            | Request::VsaDelete { .. }
            | Request::VsaList {}
            | Request::VolumeAttach { .. }
            | Request::VolumeDetach { .. }
            | Request::Bind { .. } => Err(ErrorKind::BadRequest {
                reason: "VSA, volume and bind requests are answered by the server".into(),
            }),
            Request::Unregister {} => {
                self.registered(caller, host)?;
                let released = self.remove_container(caller.pid);
                Ok(Response::Unregistered { released })
            }
        }
    }

    /// True if some grant receives `proto` traffic on `addr`:`port` (a wildcard destination
    /// means this host, as on Linux: any grant on the port).
    pub fn serves(&self, proto: Proto, addr: IpAddr, port: u16) -> bool {
        self.grants.values().any(|g| {
            let f = &g.filter;
            f.proto() == proto
                && f.direction() != Direction::Out
                && f.ports().contains(port)
                && (addr.is_unspecified() || addrs_overlap(f.local(), addr))
        })
    }

    fn register(&mut self, caller: Caller, name: Name, host: &dyn Host) -> Result<Response, ErrorKind> {
        let Some((start, parent)) = (caller.pid != 0).then(|| host.process(caller.pid)).flatten() else {
            return Err(ErrorKind::BadRequest {
                reason: format!(
                    "process {} is not visible to the daemon (another pid namespace?); run it in the daemon's",
                    caller.pid
                ),
            });
        };
        if let Some(c) = self.containers.get(&caller.pid) {
            if c.start == start {
                return Ok(Response::Registered { container: self.container_info(c) });
            }
            // An earlier process with this pid died unnoticed.
            self.reclaim(caller.pid);
        }
        let c =
            ContainerRec { pid: caller.pid, start, name, uid: caller.uid, parent, registered: host.now() };
        self.changes.push(Change::PutContainer(c.clone()));
        let info = self.container_info(&c);
        self.containers.insert(c.pid, c);
        self.counters.registered += 1;
        Ok(Response::Registered { container: info })
    }

    /// Gives every container `addr` on the switch's uplink (told to each with its NIC).
    pub fn set_uplink(&mut self, addr: Option<IfAddr>) {
        self.uplink = addr;
    }

    /// The containers' uplink address, if any.
    pub fn uplink(&self) -> Option<IfAddr> {
        self.uplink
    }

    /// The caller's NIC, as far as the rules go: its ephemeral blocks (made on the first
    /// call). The server makes and attaches the NIC itself.
    fn nic(&mut self, caller: Caller, host: &mut dyn Host) -> Result<Response, ErrorKind> {
        self.registered(caller, host)?;
        let (tcp_id, tcp_ports) = self.ephemeral_block(caller, Proto::Tcp, host)?;
        let (udp_id, udp_ports) = self.ephemeral_block(caller, Proto::Udp, host)?;
        Ok(Response::Nic {
            nic: NicInfo {
                tcp_ports,
                udp_ports,
                grants: vec![tcp_id, udp_id],
                addrs: self.uplink.into_iter().collect(),
            },
        })
    }

    /// The caller's ephemeral block of `proto`, made if it has none: the first block of the
    /// range that no grant and no kernel socket overlaps.
    fn ephemeral_block(
        &mut self,
        caller: Caller,
        proto: Proto,
        host: &mut dyn Host,
    ) -> Result<(GrantId, PortRange), ErrorKind> {
        if let Some(g) = self
            .grants
            .values()
            .find(|g| g.ephemeral && g.filter.proto() == proto && g.holders.contains(&caller.pid))
        {
            return Ok((g.id, g.filter.ports()));
        }
        let kernel = host.kernel_sockets(proto);
        let blocks = (EPHEMERAL_LAST - EPHEMERAL_FIRST + 1) / EPHEMERAL_BLOCK;
        let any = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);
        let free = (0..blocks)
            .filter_map(|k| {
                let lo = EPHEMERAL_FIRST + k * EPHEMERAL_BLOCK;
                let ports = PortRange::new(lo, lo + (EPHEMERAL_BLOCK - 1))?;
                let f = Filter::new(Direction::Both, proto, any, ports, vec![]).ok()?;
                let taken = self.grants.values().any(|g| g.filter.overlaps(&f))
                    || kernel.iter().any(|s| ports.contains(s.port));
                (!taken).then_some(f)
            })
            .min_by_key(|f| self.released_blocks.get(&(proto, f.ports().lo())).copied().unwrap_or(0));
        let Some(filter) = free else {
            return Err(ErrorKind::NoEphemeral {
                proto,
                block: EPHEMERAL_BLOCK,
                first: EPHEMERAL_FIRST,
                last: EPHEMERAL_LAST,
            });
        };
        let ports = filter.ports();
        let g = self.make_grant(caller, filter, true, host)?;
        Ok((g.id, ports))
    }

    /// Makes a grant held by the caller alone: a fresh id and token, stored with the change.
    fn make_grant(
        &mut self,
        caller: Caller,
        filter: Filter,
        ephemeral: bool,
        host: &mut dyn Host,
    ) -> Result<&GrantRec, ErrorKind> {
        let Some(token) = host.token() else {
            return Err(ErrorKind::Internal {
                reason: "the kernel gave no random bytes for the grant's token".into(),
            });
        };
        let id = GrantId(self.next_id);
        self.next_id += 1;
        let g = GrantRec {
            id,
            filter,
            token,
            holders: vec![caller.pid],
            uid: caller.uid,
            created: host.now(),
            ephemeral,
        };
        self.changes.push(Change::NextId(self.next_id));
        self.changes.push(Change::PutGrant(g.clone()));
        self.counters.grants += 1;
        Ok(self.grants.entry(id).or_insert(g))
    }

    fn grant(&mut self, caller: Caller, filter: Filter, host: &mut dyn Host) -> Result<Response, ErrorKind> {
        self.registered(caller, host)?;
        if let Err(reason) = super::plane::switch_filter(&filter) {
            return Err(ErrorKind::BadRequest { reason });
        }
        let start = host.unprivileged_port_start();
        if filter.ports().lo() < start && caller.uid != 0 {
            return Err(ErrorKind::Privileged { port: filter.ports().lo(), start, uid: caller.uid });
        }
        if let Some(g) =
            self.grants.values().find(|g| !g.holders.contains(&caller.pid) && g.filter.overlaps(&filter))
        {
            let holder = g.holders.first().copied().unwrap_or(0);
            let name =
                self.containers.get(&holder).map(|c| c.name.clone()).unwrap_or_else(|| Name::lossy("?"));
            return Err(ErrorKind::HeldByContainer {
                proto: filter.proto(),
                port: filter.ports().first_common(&g.filter.ports()).unwrap_or(filter.ports().lo()),
                pid: holder,
                name,
                grant: g.id,
            });
        }
        self.check_quota(caller.pid, &filter)?;
        // A kernel socket on a port the caller already holds a grant for is taken to be its
        // own (the kernel half of a library-OS socket bound there, `core::net::shadow`): a
        // program that binds one port twice (IPv4 and IPv6 listeners) must not be refused by
        // its first socket.
        let own = |k: &KernelSocket| {
            self.grants.values().any(|g| {
                g.holders.contains(&caller.pid)
                    && g.filter.proto() == k.proto
                    && g.filter.ports().contains(k.port)
                    && addrs_overlap(g.filter.local(), k.addr)
            })
        };
        if let Some(k) = host
            .kernel_sockets(filter.proto())
            .into_iter()
            .find(|k| filter.ports().contains(k.port) && addrs_overlap(k.addr, filter.local()) && !own(k))
        {
            return Err(ErrorKind::HeldByKernel {
                proto: k.proto,
                port: k.port,
                addr: k.addr,
                state: k.state.into(),
            });
        }
        let g = self.make_grant(caller, filter, false, host)?;
        Ok(Response::Granted { grant: g.info(), token: g.token })
    }

    fn revoke(&mut self, caller: Caller, id: GrantId) -> Result<Response, ErrorKind> {
        let Some(g) = self.grants.get(&id) else { return Err(ErrorKind::UnknownGrant { id }) };
        if caller.uid != 0 && caller.uid != g.uid && !g.holders.contains(&caller.pid) {
            return Err(ErrorKind::NotPermitted { id, uid: caller.uid, owner: g.uid });
        }
        if let Some(g) = self.grants.remove(&id) {
            self.note_release(&g);
        }
        self.changes.push(Change::DelGrant(id));
        self.counters.revoked += 1;
        Ok(Response::Revoked { id })
    }

    fn inherit(
        &mut self,
        caller: Caller,
        id: GrantId,
        token: Token,
        host: &dyn Host,
    ) -> Result<Response, ErrorKind> {
        self.registered(caller, host)?;
        // The same answer for a wrong token and a missing grant would hide which ids exist;
        // ids are public (`arrakis filters`), so the plain answer costs nothing.
        let Some(g) = self.grants.get(&id) else { return Err(ErrorKind::UnknownGrant { id }) };
        if !same_token(&g.token, &token) {
            return Err(ErrorKind::BadToken { id });
        }
        if !g.holders.contains(&caller.pid) {
            let filter = g.filter.clone();
            self.check_quota(caller.pid, &filter)?;
            let Some(g) = self.grants.get_mut(&id) else { return Err(ErrorKind::UnknownGrant { id }) };
            g.holders.push(caller.pid);
            self.changes.push(Change::PutGrant(g.clone()));
        }
        Ok(Response::Inherited { grant: self.grants[&id].info() })
    }
}

#[cfg(test)]
pub mod tests {
    use std::collections::HashMap;

    use arrakis_backends::proto::{Direction, PortRange, Proto};

    use super::super::host::KernelSocket;
    use super::*;

    /// A made-up host: processes by pid, kernel sockets, a counter for tokens.
    #[derive(Default)]
    pub struct FakeHost {
        pub procs: HashMap<u32, (u64, u32)>,
        pub kernel: Vec<KernelSocket>,
        pub next: u8,
    }

    impl Host for FakeHost {
        fn process(&self, pid: u32) -> Option<(u64, u32)> {
            self.procs.get(&pid).copied()
        }
        fn kernel_sockets(&self, proto: Proto) -> Vec<KernelSocket> {
            self.kernel.iter().filter(|k| k.proto == proto).cloned().collect()
        }
        fn unprivileged_port_start(&self) -> u16 {
            1024
        }
        fn token(&mut self) -> Option<Token> {
            self.next += 1;
            Some(Token([self.next; 16]))
        }
        fn now(&self) -> u64 {
            1
        }
    }

    pub fn tcp(local: &str, lo: u16, hi: u16) -> Filter {
        Filter::new(
            Direction::In,
            Proto::Tcp,
            local.parse().unwrap(),
            PortRange::new(lo, hi).unwrap(),
            vec![],
        )
        .unwrap()
    }

    fn setup() -> (Registry, FakeHost) {
        let mut host = FakeHost::default();
        for pid in [100, 200, 300] {
            host.procs.insert(pid, (pid as u64 * 10, 1));
        }
        let mut r = Registry::new(Limits { max_grants: 3, max_ports: 100 }, vec![], vec![], 1);
        for pid in [100, 200] {
            r.handle(Caller { pid, uid: 1000 }, Request::Register { name: Name::lossy("c") }, &mut host)
                .unwrap();
        }
        (r, host)
    }

    const A: Caller = Caller { pid: 100, uid: 1000 };
    const B: Caller = Caller { pid: 200, uid: 1000 };

    fn grant(
        r: &mut Registry,
        h: &mut FakeHost,
        c: Caller,
        f: Filter,
    ) -> Result<(GrantId, Token), ErrorKind> {
        match r.handle(c, Request::Grant { filter: f }, h)? {
            Response::Granted { grant, token } => Ok((grant.id, token)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn overlapping_grants_of_different_containers_are_refused() {
        let (mut r, mut h) = setup();
        let (id, _) = grant(&mut r, &mut h, A, tcp("0.0.0.0", 6379, 6379)).unwrap();
        let e = grant(&mut r, &mut h, B, tcp("127.0.0.1", 6000, 7000)).unwrap_err();
        assert_eq!(
            e,
            ErrorKind::HeldByContainer {
                proto: Proto::Tcp,
                port: 6379,
                pid: 100,
                name: Name::lossy("c"),
                grant: id
            }
        );
        assert!(e.to_string().contains("port 6379/tcp is held by container 100 (c) under grant 1"), "{e}");
        // The same container may hold overlapping grants; another may take another port.
        grant(&mut r, &mut h, A, tcp("127.0.0.1", 6379, 6379)).unwrap();
        grant(&mut r, &mut h, B, tcp("127.0.0.1", 6380, 6380)).unwrap();
    }

    #[test]
    fn unregistered_callers_get_nothing() {
        let (mut r, mut h) = setup();
        let e = grant(&mut r, &mut h, Caller { pid: 300, uid: 0 }, tcp("::", 5000, 5000)).unwrap_err();
        assert_eq!(e, ErrorKind::NotRegistered { pid: 300 });
        // A registered pid whose process is now another one (reused pid) is not registered.
        h.procs.insert(100, (999, 1));
        assert_eq!(
            grant(&mut r, &mut h, A, tcp("::", 5000, 5000)).unwrap_err(),
            ErrorKind::NotRegistered { pid: 100 }
        );
        assert!(r.container(100).is_none());
    }

    #[test]
    fn quota_counts_grants_and_ports() {
        let (mut r, mut h) = setup();
        grant(&mut r, &mut h, A, tcp("::", 2000, 2049)).unwrap();
        let e = grant(&mut r, &mut h, A, tcp("::", 3000, 3050)).unwrap_err();
        assert!(matches!(e, ErrorKind::Quota { grants: 2, ports: 101, .. }), "{e:?}");
        grant(&mut r, &mut h, A, tcp("::", 3000, 3049)).unwrap();
        // Ports are full; the grant count is checked too.
        let mut r2 = Registry::new(Limits { max_grants: 1, max_ports: 100 }, vec![], vec![], 1);
        r2.handle(A, Request::Register { name: Name::lossy("a") }, &mut h).unwrap();
        grant(&mut r2, &mut h, A, tcp("::", 4000, 4000)).unwrap();
        assert!(matches!(grant(&mut r2, &mut h, A, tcp("::", 4001, 4001)), Err(ErrorKind::Quota { .. })));
    }

    #[test]
    fn kernel_held_ports_and_privileged_ports_are_refused() {
        let (mut r, mut h) = setup();
        h.kernel.push(KernelSocket {
            proto: Proto::Tcp,
            addr: "127.0.0.1".parse().unwrap(),
            port: 8080,
            state: "LISTEN",
        });
        let e = grant(&mut r, &mut h, A, tcp("0.0.0.0", 8000, 8090)).unwrap_err();
        assert!(matches!(e, ErrorKind::HeldByKernel { port: 8080, .. }), "{e:?}");
        // Another address, or UDP, is free.
        grant(&mut r, &mut h, A, tcp("10.0.0.1", 8080, 8080)).unwrap();
        assert!(matches!(
            grant(&mut r, &mut h, A, tcp("::", 80, 80)),
            Err(ErrorKind::Privileged { port: 80, .. })
        ));
        grant(&mut r, &mut h, Caller { pid: 100, uid: 0 }, tcp("::", 80, 80)).unwrap();
        assert_eq!(r.counters.refusals.get("held_by_kernel"), Some(&1));
    }

    #[test]
    fn a_containers_own_kernel_half_does_not_block_its_second_listener() {
        let (mut r, mut h) = setup();
        grant(&mut r, &mut h, A, tcp("0.0.0.0", 11211, 11211)).unwrap();
        // Its IPv4 listener's kernel half now holds the port...
        h.kernel.push(KernelSocket {
            proto: Proto::Tcp,
            addr: "0.0.0.0".parse().unwrap(),
            port: 11211,
            state: "LISTEN",
        });
        // ...and its IPv6 listener on the same port is still granted; another container not.
        grant(&mut r, &mut h, A, tcp("::", 11211, 11211)).unwrap();
        let e = grant(&mut r, &mut h, B, tcp("::1", 11211, 11211)).unwrap_err();
        assert!(matches!(e, ErrorKind::HeldByContainer { port: 11211, .. }), "{e:?}");
    }

    #[test]
    fn a_block_given_back_goes_to_the_next_container_last() {
        let (mut r, mut h) = setup();
        let tcp_block = |r: &mut Registry, h: &mut FakeHost, c: Caller| match r.handle(c, Request::Nic {}, h)
        {
            Ok(Response::Nic { nic }) => nic.tcp_ports.lo(),
            other => panic!("{other:?}"),
        };
        let a = tcp_block(&mut r, &mut h, A);
        assert_eq!(a, EPHEMERAL_FIRST);
        r.handle(A, Request::Unregister {}, &mut h).unwrap();
        // A's block is free again, but a block never used goes first.
        let b = tcp_block(&mut r, &mut h, B);
        assert_ne!(b, a);
        r.handle(B, Request::Unregister {}, &mut h).unwrap();
        // Of two blocks given back, the one given back longer ago.
        let c = Caller { pid: 300, uid: 1000 };
        r.handle(c, Request::Register { name: Name::lossy("c") }, &mut h).unwrap();
        let got = tcp_block(&mut r, &mut h, c);
        assert!(got != a && got != b, "a never-used block first: {got}");
    }

    #[test]
    fn lookup_says_whether_a_grant_receives_there() {
        let (mut r, mut h) = setup();
        grant(&mut r, &mut h, A, tcp("0.0.0.0", 6379, 6379)).unwrap();
        let out = Filter::new(
            Direction::Out,
            Proto::Udp,
            "0.0.0.0".parse().unwrap(),
            PortRange::one(5353).unwrap(),
            vec![],
        )
        .unwrap();
        grant(&mut r, &mut h, B, out).unwrap();
        let ask = |r: &mut Registry, h: &mut FakeHost, proto, addr: &str, port| match r
            .handle(B, Request::Lookup { proto, addr: addr.parse().unwrap(), port }, h)
            .unwrap()
        {
            Response::Lookup { served } => served,
            other => panic!("{other:?}"),
        };
        assert!(ask(&mut r, &mut h, Proto::Tcp, "127.0.0.1", 6379));
        assert!(ask(&mut r, &mut h, Proto::Tcp, "0.0.0.0", 6379));
        assert!(ask(&mut r, &mut h, Proto::Tcp, "::ffff:127.0.0.1", 6379));
        assert!(!ask(&mut r, &mut h, Proto::Tcp, "::1", 6379));
        assert!(!ask(&mut r, &mut h, Proto::Udp, "127.0.0.1", 6379));
        assert!(!ask(&mut r, &mut h, Proto::Tcp, "127.0.0.1", 6380));
        // A send-only grant receives nothing.
        assert!(!ask(&mut r, &mut h, Proto::Udp, "127.0.0.1", 5353));
    }

    #[test]
    fn revocation_frees_the_port_and_needs_authority() {
        let (mut r, mut h) = setup();
        let (id, _) = grant(&mut r, &mut h, A, tcp("::", 5000, 5000)).unwrap();
        let stranger = Caller { pid: 300, uid: 2000 };
        assert!(matches!(
            r.handle(stranger, Request::Revoke { id }, &mut h),
            Err(ErrorKind::NotPermitted { .. })
        ));
        r.handle(Caller { pid: 1, uid: 0 }, Request::Revoke { id }, &mut h).unwrap();
        assert_eq!(r.handle(A, Request::Revoke { id }, &mut h), Err(ErrorKind::UnknownGrant { id }));
        grant(&mut r, &mut h, B, tcp("::", 5000, 5000)).unwrap();
    }

    #[test]
    fn inheritance_needs_the_token_and_survives_the_parent() {
        let (mut r, mut h) = setup();
        let (id, token) = grant(&mut r, &mut h, A, tcp("::", 5000, 5000)).unwrap();
        let bad = Token([0; 16]);
        assert_eq!(r.handle(B, Request::Inherit { id, token: bad }, &mut h), Err(ErrorKind::BadToken { id }));
        r.handle(B, Request::Inherit { id, token }, &mut h).unwrap();
        // B holds it now: B may grant on overlapping ports, and the grant outlives A.
        grant(&mut r, &mut h, B, tcp("127.0.0.1", 5000, 5000)).unwrap();
        assert_eq!(r.reclaim(100), Vec::<GrantId>::new());
        assert_eq!(r.grants().find(|g| g.id == id).unwrap().holders, vec![200]);
        let released = r.reclaim(200);
        assert_eq!(released.len(), 2);
        assert_eq!(r.grants().count(), 0);
        assert_eq!(r.counters.reclaimed, 2);
    }

    #[test]
    fn stale_containers_are_reclaimed_at_start() {
        let (mut r, mut h) = setup();
        grant(&mut r, &mut h, A, tcp("::", 5000, 5000)).unwrap();
        grant(&mut r, &mut h, B, tcp("::", 5001, 5001)).unwrap();
        h.procs.remove(&100);
        h.procs.insert(200, (1, 1)); // pid reused
        let c: Vec<ContainerRec> = [100, 200].iter().map(|p| r.container(*p).unwrap().clone()).collect();
        let g: Vec<GrantRec> = r.grants().cloned().collect();
        let mut again = Registry::new(r.limits(), c, g, 3);
        assert!(again.reclaim_stale(&h).is_empty());
        assert_eq!(again.grants().count(), 0);
        let ch = again.take_changes();
        assert!(ch.contains(&Change::DelContainer(100)) && ch.contains(&Change::DelGrant(GrantId(2))));
    }

    #[test]
    fn unregister_releases_only_what_the_container_alone_held() {
        let (mut r, mut h) = setup();
        let (id, token) = grant(&mut r, &mut h, A, tcp("::", 5000, 5000)).unwrap();
        let (id2, _) = grant(&mut r, &mut h, A, tcp("::", 5001, 5001)).unwrap();
        r.handle(B, Request::Inherit { id, token }, &mut h).unwrap();
        assert_eq!(
            r.handle(A, Request::Unregister {}, &mut h),
            Ok(Response::Unregistered { released: vec![id2] })
        );
        assert!(r.container(100).is_none());
    }
}
