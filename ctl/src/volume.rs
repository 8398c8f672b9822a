//! The admin and launcher side of volumes: sizes as people write them, `--volume` specs and
//! the `ARRAKIS_VOLUMES` value the shim reads, and attaching to a volume through the daemon
//! ([`attach_volume`], [`attach_read_only`]) for `arrakis fsck` and `arrakis mount`.

use std::os::fd::OwnedFd;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use arrakis_backends::proto::client::{Client, ClientError};
use arrakis_backends::proto::{ErrorKind, VolumeRole, VsaInfo};

/// The size `arrakis run --volume` gives a VSA it creates: 256 MiB.
pub const DEFAULT_VOLUME_SIZE: u64 = 256 << 20;

/// The environment variable the launcher sets and the shim reads: `NAME:/abs/path[:ro]`
/// entries separated by commas.
pub const VOLUMES_ENV: &str = "ARRAKIS_VOLUMES";

/// A size as people write it: bytes (`4096`), or a number with a binary unit `K`, `M`, `G`,
/// `T` (`64M` = 64 MiB; `KiB`, `MB`, lower case also accepted: every unit is a power of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let bad = || format!("{s:?} is not a size; write bytes (4096) or a number with K, M, G or T (64M, 1G)");
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?} is too large"))
}

/// Bytes as people read them (`256 MiB`, `4097 B`).
pub fn human_size(bytes: u64) -> String {
    for (u, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        let n = 1u64 << shift;
        if bytes >= n && bytes.is_multiple_of(n) {
            return format!("{} {u}", bytes / n);
        }
        if bytes >= n {
            return format!("{:.1} {u}", bytes as f64 / n as f64);
        }
    }
    format!("{bytes} B")
}

/// One `--volume NAME:/abs/path[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeSpec {
    /// The VSA.
    pub name: String,
    /// Where the program sees it (absolute, no `,` or `:`).
    pub path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl VolumeSpec {
    /// Parses `NAME:/abs/path[:ro]`.
    pub fn parse(s: &str) -> Result<VolumeSpec, String> {
        let form = "write NAME:/absolute/path or NAME:/absolute/path:ro";
        let mut parts = s.split(':');
        let (Some(name), Some(path)) = (parts.next(), parts.next()) else {
            return Err(format!("--volume {s:?}: {form}"));
        };
        let read_only = match parts.next() {
            None => false,
            Some("ro") => true,
            Some("rw") => false,
            Some(other) => return Err(format!("--volume {s:?}: unknown option {other:?}; {form}")),
        };
        if parts.next().is_some() {
            return Err(format!("--volume {s:?}: too many ':'; {form} (paths may not contain ':')"));
        }
        crate::daemon::vsa::check_name(name).map_err(|e| format!("--volume {s:?}: {e}"))?;
        if !path.starts_with('/') || path.contains(',') {
            return Err(format!("--volume {s:?}: the path must be absolute and contain no ','; {form}"));
        }
        let path = if path.len() > 1 { path.trim_end_matches('/') } else { path };
        Ok(VolumeSpec { name: name.to_owned(), path: path.to_owned(), read_only })
    }
}

/// The `ARRAKIS_VOLUMES` value for `specs`: `NAME:/abs/path[:ro]`, comma-separated.
pub fn volumes_env(specs: &[VolumeSpec]) -> String {
    specs
        .iter()
        .map(|v| format!("{}:{}{}", v.name, v.path, if v.read_only { ":ro" } else { "" }))
        .collect::<Vec<_>>()
        .join(",")
}

/// Creates every VSA of `specs` that does not exist yet, with `size` bytes.
pub fn ensure_vsas(client: &mut Client, specs: &[VolumeSpec], size: u64) -> Result<()> {
    for v in specs {
        match client.vsa_create(&v.name, size) {
            Ok(_) => {}
            Err(ClientError::Refused(e)) if matches!(e.kind, ErrorKind::VsaExists { .. }) => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create VSA \"{}\" for --volume", v.name))
            }
        }
    }
    Ok(())
}

/// How this process reaches a volume after [`attach_volume`].
#[derive(Debug)]
pub enum Attached {
    /// This process owns the volume: it mounts the backing file itself (read-write fd) and
    /// should serve RPC clients on `socket` while it owns it; `volume_detach` (or exiting)
    /// ends the ownership.
    Owner {
        /// The VSA.
        vsa: VsaInfo,
        /// The backing file, read-write, `vsa.size` bytes.
        fd: OwnedFd,
        /// Where to serve the volume by RPC.
        socket: PathBuf,
    },
    /// Another process owns the volume: reach it by RPC at `socket`.
    Remote {
        /// The VSA.
        vsa: VsaInfo,
        /// The owner's RPC socket.
        socket: PathBuf,
        /// The owner's pid.
        owner: u32,
    },
}

/// Attaches to volume `name` read-write: the owner's fd and socket if no live process owns
/// it (this process is the owner now), else the owner's socket.
pub fn attach_volume(client: &mut Client, name: &str) -> Result<Attached> {
    let (vsa, role, fd) = client
        .volume_attach(name, None, false)
        .with_context(|| format!("cannot attach volume \"{name}\""))?;
    match (role, fd) {
        (VolumeRole::Owner { socket }, Some(fd)) => Ok(Attached::Owner { vsa, fd, socket: socket.into() }),
        (VolumeRole::Remote { socket, owner }, _) => {
            Ok(Attached::Remote { vsa, socket: socket.into(), owner })
        }
        (role, _) => bail!("the daemon answered the attach of volume \"{name}\" with {role:?} and no fd"),
    }
}

/// Attaches to volume `name` read-only: its backing fd, whoever owns it (the caller decides
/// whether an owner running — `vsa.owner` — matters).
pub fn attach_read_only(client: &mut Client, name: &str) -> Result<(VsaInfo, OwnedFd)> {
    let (vsa, role, fd) = client
        .volume_attach(name, None, true)
        .with_context(|| format!("cannot attach volume \"{name}\" read-only"))?;
    match fd {
        Some(fd) => Ok((vsa, fd)),
        None => {
            bail!("the daemon answered the read-only attach of volume \"{name}\" with {role:?} and no fd")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("2KiB"), Ok(2048));
        assert_eq!(parse_size("3 MB"), Ok(3 << 20));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        for bad in ["", "M", "1X", "-1", "1.5G", "99999999999999999999"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        assert!(parse_size("99999999T").unwrap_err().contains("too large"));
        assert_eq!(human_size(256 << 20), "256 MiB");
        assert_eq!(human_size(4097), "4.0 KiB");
        assert_eq!(human_size(100), "100 B");
    }

    #[test]
    fn volume_specs_parse_and_make_the_env() {
        let a = VolumeSpec::parse("redis-data:/var/lib/redis/").unwrap();
        assert_eq!(
            a,
            VolumeSpec { name: "redis-data".into(), path: "/var/lib/redis".into(), read_only: false }
        );
        let b = VolumeSpec::parse("logs:/x:ro").unwrap();
        assert!(b.read_only);
        assert_eq!(volumes_env(&[a, b]), "redis-data:/var/lib/redis,logs:/x:ro");
        for bad in ["x", "x:rel", "x:/a:rw:ro", "x:/a:zz", ".x:/a", "a/b:/a", "x:/a,b", ":/a"] {
            assert!(VolumeSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
