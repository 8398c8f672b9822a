//! The admin commands: `arrakis status`, `filters`, `stats`, `revoke`. Each is one request
//! to the daemon through [`arrakis_backends::proto::client`], printed as a table for people
//! or, with `--json`, as the daemon's response itself for scripts.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Result;
use arrakis_backends::proto::client::Client;
use arrakis_backends::proto::{GrantId, GrantInfo, Request, Response};

/// Which admin command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Query {
    /// `arrakis status`.
    Status,
    /// `arrakis filters`.
    Filters,
    /// `arrakis stats`.
    Stats,
}

/// Runs a query and prints its answer.
pub fn query(socket: &Path, q: Query, json: bool) -> Result<()> {
    let mut c = Client::connect(socket)?;
    let req = match q {
        Query::Status => Request::Status {},
        Query::Filters => Request::Filters {},
        Query::Stats => Request::Stats {},
    };
    let resp = c.call(req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        print!("{}", render(&resp));
    }
    Ok(())
}

/// `arrakis revoke ID`.
pub fn revoke(socket: &Path, id: u64, json: bool) -> Result<()> {
    let mut c = Client::connect(socket)?;
    c.revoke(GrantId(id))?;
    if json {
        println!("{}", serde_json::json!({ "revoked": id }));
    } else {
        println!("revoked grant {id}");
    }
    Ok(())
}

/// Complete pcap records in `bytes` (a file being written: the last may be partial).
pub fn pcap_records(bytes: &[u8]) -> u64 {
    let mut off = 24;
    let mut n = 0;
    while let Some(h) = bytes.get(off..off + 16) {
        let incl = u32::from_le_bytes([h[8], h[9], h[10], h[11]]) as usize;
        if bytes.len() < off + 16 + incl {
            break;
        }
        off += 16 + incl;
        n += 1;
    }
    n
}

/// `arrakis capture CONTAINER -w FILE [--count N] [--seconds S]`: the daemon's switch writes
/// the container's frames into FILE (opened here, passed as an fd) until N frames, S seconds
/// or Ctrl-C, whichever comes first.
pub fn capture(
    socket: &Path,
    container: &str,
    file: &Path,
    count: Option<u64>,
    seconds: Option<u64>,
) -> Result<()> {
    use anyhow::Context;
    use nix::sys::signal::{SigSet, Signal};
    use nix::sys::signalfd::SignalFd;
    use std::os::fd::AsFd;
    use std::time::{Duration, Instant};

    // Ctrl-C and kill end the capture cleanly: taken as events, not as a default death.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGINT);
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGHUP);
    mask.thread_block().context("cannot block SIGINT")?;
    let sigfd = SignalFd::new(&mask).context("cannot make a signalfd")?;

    let out = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(file)
        .with_context(|| format!("cannot open {} for writing", file.display()))?;
    let mut c = Client::connect(socket)?;
    let pid = c.capture(container, count, out.as_fd())?;
    drop(out);
    eprintln!("arrakis: capturing container {pid} into {} (Ctrl-C stops)", file.display());
    let deadline = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let why = loop {
        let mut fds = [rustix::event::PollFd::new(&sigfd, rustix::event::PollFlags::IN)];
        let slice = rustix::event::Timespec { tv_sec: 0, tv_nsec: 100_000_000 };
        match rustix::event::poll(&mut fds, Some(&slice)) {
            Ok(n) if n > 0 => break "interrupted",
            _ => {}
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break "time is up";
        }
        if let Some(n) = count {
            let bytes = std::fs::read(file).unwrap_or_default();
            if pcap_records(&bytes) >= n {
                break "count reached";
            }
        }
    };
    // A new connection: the daemon may have restarted meanwhile.
    let stopped = Client::connect(socket).and_then(|mut c| c.capture_stop(container));
    let bytes = std::fs::read(file).unwrap_or_default();
    let frames = pcap_records(&bytes);
    if let Err(e) = stopped {
        eprintln!("arrakis: could not stop the capture: {e}");
    }
    println!("captured {frames} frame(s) of container {pid} into {} ({why})", file.display());
    Ok(())
}

/// Lays rows out in columns, two spaces apart.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, cell) in r.iter().enumerate() {
            w[i] = w[i].max(cell.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: Vec<&str>| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<width$}  ", width = w[i]);
            }
        }
        out.push('\n');
    };
    line(&mut out, header.to_vec());
    for r in rows {
        line(&mut out, r.iter().map(String::as_str).collect());
    }
    out
}

fn ids(ids: &[GrantId]) -> String {
    if ids.is_empty() {
        return "-".into();
    }
    ids.iter().map(GrantId::to_string).collect::<Vec<_>>().join(",")
}

fn local(a: IpAddr) -> String {
    if a.is_unspecified() {
        format!("* ({a})")
    } else {
        a.to_string()
    }
}

fn grant_row(g: &GrantInfo) -> Vec<String> {
    let f = &g.filter;
    let peers = if f.peers().is_empty() {
        "any".into()
    } else {
        f.peers().iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
    };
    let holders = g.holders.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    vec![
        g.id.to_string(),
        f.direction().to_string(),
        f.proto().to_string(),
        local(f.local()),
        f.ports().to_string(),
        peers,
        holders,
    ]
}

/// A response as people read it.
pub fn render(resp: &Response) -> String {
    match resp {
        Response::Status { daemon, containers } => {
            let mut s = format!(
                "daemon  pid {}, version {}, protocol {}-{}, up {} s\nsocket  {}\nstore   {}\nquota   {} grants, {} ports per container\n\n",
                daemon.pid,
                daemon.version,
                daemon.protocol.0,
                daemon.protocol.1,
                daemon.uptime,
                daemon.socket,
                daemon.store,
                daemon.max_grants,
                daemon.max_ports
            );
            if containers.is_empty() {
                s.push_str("no containers\n");
            } else {
                let rows: Vec<Vec<String>> = containers
                    .iter()
                    .map(|c| {
                        vec![
                            c.pid.to_string(),
                            c.name.to_string(),
                            c.uid.to_string(),
                            c.parent.to_string(),
                            ids(&c.grants),
                        ]
                    })
                    .collect();
                s.push_str(&table(&["PID", "NAME", "UID", "PARENT", "GRANTS"], &rows));
            }
            s
        }
        Response::Filters { grants } => {
            if grants.is_empty() {
                return "no grants\n".into();
            }
            let rows: Vec<Vec<String>> = grants.iter().map(grant_row).collect();
            table(&["ID", "DIR", "PROTO", "LOCAL", "PORTS", "PEERS", "HOLDERS"], &rows)
        }
        Response::Stats { daemon, containers, switch } => {
            let mut rows = vec![
                vec!["connections".to_string(), daemon.connections.to_string()],
                vec!["clients dropped".into(), daemon.dropped_clients.to_string()],
                vec!["requests".into(), daemon.requests.to_string()],
                vec!["containers registered".into(), daemon.registered.to_string()],
                vec!["containers reclaimed".into(), daemon.reclaimed.to_string()],
                vec!["grants made".into(), daemon.grants.to_string()],
                vec!["grants revoked".into(), daemon.revoked.to_string()],
                vec!["grants released".into(), daemon.released.to_string()],
            ];
            for (code, n) in &daemon.refusals {
                rows.push(vec![format!("refused: {code}"), n.to_string()]);
            }
            let mut s = table(&["DAEMON", "COUNT"], &rows);
            s.push('\n');
            if !containers.is_empty() {
                let rows: Vec<Vec<String>> = containers
                    .iter()
                    .map(|c| {
                        vec![c.pid.to_string(), c.name.to_string(), c.grants.to_string(), c.ports.to_string()]
                    })
                    .collect();
                s.push_str(&table(&["PID", "NAME", "GRANTS", "PORTS"], &rows));
                s.push('\n');
            }
            match switch {
                None => s.push_str("switch  not running (frames and drops by reason appear here with the emulator backend)\n"),
                Some(sw) => {
                    let rows: Vec<Vec<String>> = sw
                        .containers
                        .iter()
                        .chain(sw.uplink.as_ref())
                        .map(|t| {
                            let total: u64 = t.drops.values().sum();
                            let why: Vec<String> = t.drops.iter().map(|(k, n)| format!("{k} {n}")).collect();
                            let drops =
                                if why.is_empty() { "0".to_owned() } else { format!("{total} ({})", why.join(", ")) };
                            vec![
                                if std::ptr::eq(t, sw.uplink.as_ref().map_or(std::ptr::null(), |u| u)) {
                                    "uplink".to_owned()
                                } else {
                                    t.pid.to_string()
                                },
                                t.tx_frames.to_string(),
                                t.rx_frames.to_string(),
                                t.tx_bytes.to_string(),
                                t.rx_bytes.to_string(),
                                drops,
                                t.bindings.to_string(),
                            ]
                        })
                        .collect();
                    s.push_str(&table(
                        &["PID", "TX FRAMES", "RX FRAMES", "TX BYTES", "RX BYTES", "DROPS", "BINDINGS"],
                        &rows,
                    ));
                }
            }
            s
        }
        Response::Vsas { vsas } => {
            if vsas.is_empty() {
                return "no VSAs (`arrakis vsa create NAME SIZE` makes one)\n".into();
            }
            let rows: Vec<Vec<String>> = vsas
                .iter()
                .map(|v| {
                    vec![
                        v.name.to_string(),
                        crate::volume::human_size(v.size),
                        v.size.to_string(),
                        v.uid.to_string(),
                        v.owner.map_or("-".to_owned(), |p| p.to_string()),
                    ]
                })
                .collect();
            table(&["NAME", "SIZE", "BYTES", "UID", "OWNER"], &rows)
        }
        Response::Vsa { vsa } => format!(
            "VSA {}: {} ({} bytes), uid {}{}\n",
            vsa.name,
            crate::volume::human_size(vsa.size),
            vsa.size,
            vsa.uid,
            vsa.owner.map_or(String::new(), |p| format!(", owned by pid {p}"))
        ),
        Response::VsaDeleted { name } => format!("deleted VSA {name}\n"),
        other => format!("{other:?}\n"),
    }
}

/// `arrakis vsa ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsaOp {
    /// `create NAME SIZE`.
    Create(String, u64),
    /// `resize NAME SIZE`.
    Resize(String, u64),
    /// `delete NAME`.
    Delete(String),
    /// `list`.
    List,
}

/// Runs a VSA command and prints its answer.
pub fn vsa(socket: &Path, op: VsaOp, json: bool) -> Result<()> {
    let mut c = Client::connect(socket)?;
    let req = match op {
        VsaOp::Create(name, size) => Request::VsaCreate { name: vsa_name(&name)?, size },
        VsaOp::Resize(name, size) => Request::VsaResize { name: vsa_name(&name)?, size },
        VsaOp::Delete(name) => Request::VsaDelete { name: vsa_name(&name)? },
        VsaOp::List => Request::VsaList {},
    };
    let resp = c.call(req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&resp)?);
    } else {
        print!("{}", render(&resp));
    }
    Ok(())
}

fn vsa_name(name: &str) -> Result<arrakis_backends::proto::Name> {
    crate::daemon::vsa::check_name(name)?;
    arrakis_backends::proto::Name::try_from(name.to_owned()).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `arrakis fsck VOLUME [--repair]` or `arrakis fsck --image FILE [--repair]`: true if the
/// volume was clean. A volume whose owner runs is refused (its owner may be writing it); to
/// repair, this process becomes the owner for the duration and detaches at the end (if it
/// dies instead, the daemon ends its ownership like any owner's).
pub fn fsck(socket: &Path, volume: Option<&str>, image: Option<&Path>, repair: bool) -> Result<bool> {
    use std::fs::File;

    use anyhow::{bail, Context};

    use crate::volume::{attach_read_only, attach_volume, Attached};

    let busy = |name: &str, pid: u32| {
        anyhow::anyhow!(
            "VSA \"{name}\" is owned by pid {pid}, which may be writing it; stop that process first, or \
             check a copy of its image with `arrakis fsck --image FILE`"
        )
    };
    match (volume, image) {
        (_, Some(path)) => {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(repair)
                .open(path)
                .with_context(|| format!("cannot open the image {}", path.display()))?;
            check_image(&f, &path.display().to_string(), repair)
        }
        (Some(name), None) => {
            let mut c = Client::connect(socket)?;
            if !repair {
                let (vsa, fd) = attach_read_only(&mut c, name)?;
                if let Some(pid) = vsa.owner {
                    return Err(busy(name, pid));
                }
                return check_image(&File::from(fd), &format!("volume \"{name}\""), false);
            }
            match attach_volume(&mut c, name)? {
                Attached::Remote { owner, .. } => Err(busy(name, owner)),
                Attached::Owner { fd, .. } => {
                    let r = check_image(&File::from(fd), &format!("volume \"{name}\""), true);
                    let detached = c.volume_detach(name);
                    let clean = r?;
                    detached.with_context(|| {
                        format!("repaired volume \"{name}\" but could not detach from it")
                    })?;
                    Ok(clean)
                }
            }
        }
        (None, None) => bail!("fsck needs a volume name or --image FILE"),
    }
}

/// Checks (and with `repair`, repairs) the volume image in `f`; prints the report. True if
/// it was clean (a repair that fixed something counts as not clean: problems were found).
fn check_image(f: &std::fs::File, what: &str, repair: bool) -> Result<bool> {
    use anyhow::Context;
    use arrakis_core::fs::{dev::FileDev, fsck};

    let len = f.metadata().with_context(|| format!("cannot stat {what}"))?.len();
    if len < 2 * 4096 {
        anyhow::bail!("{what} is {len} bytes, too small to hold a volume");
    }
    let fd = f.try_clone().with_context(|| format!("cannot duplicate the fd of {what}"))?;
    let dev = FileDev::new(fd.into(), len);
    let report = if repair { fsck::repair(&dev) } else { fsck::check(&dev) }
        .map_err(|e| anyhow::anyhow!("cannot {} {what}: {e}", if repair { "repair" } else { "check" }))?;
    print!("{what}: {report}");
    let clean = report.ok && report.problems.is_empty();
    Ok(clean)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t =
            table(&["ID", "NAME"], &[vec!["1".into(), "redis-server".into()], vec!["22".into(), "x".into()]]);
        assert_eq!(t, "ID  NAME\n1   redis-server\n22  x\n");
    }
}
