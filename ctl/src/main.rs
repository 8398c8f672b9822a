//! `arrakis`: the command-line front end of Arrakis for Linux.
//!
//! Subcommands: the launcher, `arrakis run [--backend NAME] [--] CMD ARGS...`, which puts
//! the shim into `LD_PRELOAD` and execs the command (with `--backend emulator` it first
//! starts a daemon if none answers, [`launcher`]); the control daemon, `arrakis daemon`
//! ([`daemon`]); the admin commands `status`, `filters`, `stats`, `revoke` and `capture`
//! ([`admin`]); `arrakis mount`, the FUSE export of a volume ([`fuse`]); and, hidden,
//! `arrakis switch`, the software switch process the daemon starts and supervises ([`switch`]).
//!
//! The launcher must hand the command the process state it was given: Rust's runtime, before
//! `main`, sets `SIGPIPE` to ignored and opens `/dev/null` on closed fds 0-2, and `Command`
//! resets `SIGPIPE` and rebuilds the environment as a sorted map. So the binary has no Rust
//! runtime entry (`#![no_main]`), execs with `execvpe(3)` directly, and edits the environment
//! it was started with (`/proc/self/environ`) in place: order, duplicates and entries without
//! `=` survive.
// Test builds keep the harness's own `main`.
#![cfg_attr(not(test), no_main)]

use std::ffi::{CString, OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

mod admin;
mod daemon;
mod fuse;
mod launcher;
pub mod volume;

/// The backend whose NIC is on the daemon's switch.
const EMULATOR: &str = "emulator";

use anyhow::{bail, Context, Result};
use arrakis_core::config::Backend;
use clap::{Parser, Subcommand};
use nix::errno::Errno;

mod switch;

#[derive(Parser)]
#[command(name = "arrakis", version, about = "Arrakis for Linux: a library OS for unmodified programs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Options of the commands that talk to the daemon.
#[derive(clap::Args, Debug)]
struct AdminOpts {
    /// The daemon's socket [default: $ARRAKIS_SOCKET, else ctl.sock in $ARRAKIS_RUN_DIR or /run/arrakis].
    #[arg(long, value_name = "PATH", global = true)]
    socket: Option<PathBuf>,
    /// Print JSON (the daemon's response) instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl AdminOpts {
    fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(arrakis_backends::proto::default_socket)
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a program under the shim (LD_PRELOAD=libarrakis.so).
    Run {
        /// Device the library OS drives: kernel (every fd on the kernel path), loopback, or
        /// emulator (a virtual NIC on the daemon's switch; starts a daemon if none answers).
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// Mount VSA NAME's volume at /abs/path in the program (repeatable; `:ro` for
        /// read-only). A missing VSA is created (--volume-size). Starts a daemon if none answers.
        #[arg(long = "volume", value_name = "NAME:/abs/path[:ro]", value_parser = volume::VolumeSpec::parse)]
        volumes: Vec<volume::VolumeSpec>,
        /// Size of the VSAs --volume creates (e.g. 64M, 1G).
        #[arg(long, value_name = "SIZE", value_parser = volume::parse_size, default_value = "256M")]
        volume_size: u64,
        /// Program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
    /// Run the control daemon in the foreground.
    Daemon {
        /// Socket to listen on [default: $ARRAKIS_SOCKET, else ctl.sock in $ARRAKIS_RUN_DIR or /run/arrakis].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
        /// Directory of the grant store [default: $ARRAKIS_STATE_DIR, else the socket's directory].
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Grants one container may hold.
        #[arg(long, value_name = "N", default_value_t = daemon::rules::Limits::default().max_grants)]
        max_grants: u32,
        /// Ports one container's grants may cover in all.
        #[arg(long, value_name = "N", default_value_t = daemon::rules::Limits::default().max_ports)]
        max_ports: u32,
        /// How long a client may take to send the rest of a frame it started, in ms.
        #[arg(long, value_name = "MS", default_value_t = 5000, hide = true)]
        frame_timeout_ms: u64,
        /// Leave the caller's session first (the launcher starts daemons this way).
        #[arg(long, hide = true)]
        setsid: bool,
        /// Connect the switch to the kernel's network through this tun interface (create it
        /// first: `ip tuntap add dev NAME mode tun`, give it an address, bring it up).
        #[arg(long, value_name = "NAME", requires = "uplink_addr")]
        uplink: Option<String>,
        /// The address (with prefix) every container has on the uplink's network, e.g.
        /// 10.77.0.2/24 when the interface is 10.77.0.1/24.
        #[arg(long, value_name = "ADDR/PREFIX", requires = "uplink", value_parser = parse_ifaddr)]
        uplink_addr: Option<arrakis_backends::proto::IfAddr>,
        /// Largest VSA (e.g. 64G); the free space of the state directory's file system also
        /// bounds every VSA.
        #[arg(long, value_name = "SIZE", value_parser = volume::parse_size, default_value = "1T")]
        max_vsa_size: u64,
    },
    /// Show the daemon and its containers.
    Status(AdminOpts),
    /// List the grants (filters).
    Filters(AdminOpts),
    /// Show counters: the daemon's, and the switch's per container (frames, bytes, drops by reason).
    Stats(AdminOpts),
    /// The software switch (started and supervised by the daemon).
    #[command(hide = true)]
    Switch {
        /// The switch's control socket (switch.sock in the daemon's run directory).
        #[arg(long, value_name = "PATH")]
        socket: PathBuf,
        /// The tun interface to use as the uplink.
        #[arg(long, value_name = "NAME")]
        uplink: Option<String>,
    },
    /// Capture a container's frames on the switch into a pcap file (tcpdump/tshark read it).
    Capture {
        /// The container: its pid, or its name.
        container: String,
        /// The file to write (created or truncated).
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        file: PathBuf,
        /// Stop after this many frames.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Stop after this many seconds.
        #[arg(long, value_name = "S")]
        seconds: Option<u64>,
        /// The daemon's socket [default: $ARRAKIS_SOCKET, else ctl.sock in $ARRAKIS_RUN_DIR or /run/arrakis].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Show a volume's files to programs not under the shim, through FUSE, until the mount is
    /// unmounted (`umount DIR`) or this process gets SIGTERM/SIGINT.
    Mount {
        /// `VOLUME DIR`: the volume through the daemon; with --image only `DIR`.
        #[arg(required = true, num_args = 1..=2, value_name = "VOLUME DIR")]
        args: Vec<PathBuf>,
        /// Mount the volume in this image file directly (no daemon).
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Refuse every change (EROFS).
        #[arg(long)]
        read_only: bool,
        /// The daemon's socket [default: $ARRAKIS_SOCKET, else ctl.sock in $ARRAKIS_RUN_DIR or /run/arrakis].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Virtual storage areas: create, resize, delete, list.
    Vsa {
        #[command(subcommand)]
        op: VsaCmd,
        #[command(flatten)]
        opts: AdminOpts,
    },
    /// Check a volume (on a VSA, or an image file) and optionally repair it. Exit status: 0
    /// clean, 1 problems found (or repaired), 2 the check could not run.
    Fsck {
        /// The volume (its VSA's name); it must have no running owner.
        #[arg(required_unless_present = "image", conflicts_with = "image")]
        volume: Option<String>,
        /// Check an image file instead of a VSA.
        #[arg(long, value_name = "FILE")]
        image: Option<PathBuf>,
        /// Repair what can be repaired.
        #[arg(long)]
        repair: bool,
        /// The daemon's socket [default: $ARRAKIS_SOCKET, else ctl.sock in $ARRAKIS_RUN_DIR or /run/arrakis].
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Revoke a grant.
    Revoke {
        /// The grant's number (`arrakis filters` lists them).
        id: u64,
        #[command(flatten)]
        opts: AdminOpts,
    },
}

/// `arrakis vsa` subcommands.
#[derive(Subcommand, Debug)]
enum VsaCmd {
    /// Create a VSA: NAME (letters, digits, '.', '_', '-') and SIZE (4096, 64M, 1G; rounded up to 4 KiB).
    Create {
        /// Its name.
        name: String,
        /// Its size.
        #[arg(value_parser = volume::parse_size)]
        size: u64,
    },
    /// Grow or shrink a VSA (shrinking is refused while a process owns its volume, or below
    /// what the volume uses).
    Resize {
        /// Its name.
        name: String,
        /// The new size.
        #[arg(value_parser = volume::parse_size)]
        size: u64,
    },
    /// Delete a VSA and its storage (refused while a process owns its volume).
    Delete {
        /// Its name.
        name: String,
    },
    /// List the VSAs.
    List,
}

/// The process entry point, called by the C runtime (see the crate doc for why not Rust's).
#[cfg(not(test))]
#[no_mangle]
pub extern "C" fn main(_argc: std::ffi::c_int, _argv: *const *const std::ffi::c_char) -> std::ffi::c_int {
    entry()
}

/// Parses the command line and runs the subcommand; returns the exit status.
#[cfg_attr(test, allow(dead_code))]
fn entry() -> std::ffi::c_int {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { backend, volumes, volume_size, command } => {
            let err = run(backend.as_deref(), &volumes, volume_size, &command);
            eprintln!("arrakis: {err:#}");
            return exit_code(&err);
        }
        Cmd::Daemon {
            socket,
            state_dir,
            max_grants,
            max_ports,
            frame_timeout_ms,
            setsid,
            uplink,
            uplink_addr,
            max_vsa_size,
        } => {
            if setsid {
                // Ctrl-C in the launcher's terminal, or its hang-up, must not reach the daemon.
                let _ = rustix::process::setsid();
            }
            let socket = socket.unwrap_or_else(arrakis_backends::proto::default_socket);
            let state_dir = state_dir
                .or_else(|| {
                    std::env::var_os("ARRAKIS_STATE_DIR").filter(|d| !d.is_empty()).map(PathBuf::from)
                })
                .unwrap_or_else(|| {
                    socket.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
                });
            daemon::run(&daemon::Config {
                socket,
                state_dir,
                limits: daemon::rules::Limits { max_grants, max_ports },
                frame_timeout: std::time::Duration::from_millis(frame_timeout_ms),
                uplink: uplink.zip(uplink_addr),
                max_vsa_size,
            })
        }
        Cmd::Switch { socket, uplink } => switch::service::main(&socket, uplink.as_deref()),
        Cmd::Capture { container, file, count, seconds, socket } => {
            let socket = socket.unwrap_or_else(arrakis_backends::proto::default_socket);
            admin::capture(&socket, &container, &file, count, seconds)
        }
        Cmd::Status(o) => admin::query(&o.socket(), admin::Query::Status, o.json),
        Cmd::Filters(o) => admin::query(&o.socket(), admin::Query::Filters, o.json),
        Cmd::Stats(o) => admin::query(&o.socket(), admin::Query::Stats, o.json),
        Cmd::Mount { args, image, read_only, socket } => mount(&args, image.as_deref(), read_only, socket),
        Cmd::Vsa { op, opts } => {
            let op = match op {
                VsaCmd::Create { name, size } => admin::VsaOp::Create(name, size),
                VsaCmd::Resize { name, size } => admin::VsaOp::Resize(name, size),
                VsaCmd::Delete { name } => admin::VsaOp::Delete(name),
                VsaCmd::List => admin::VsaOp::List,
            };
            admin::vsa(&opts.socket(), op, opts.json)
        }
        Cmd::Fsck { volume, image, repair, socket } => {
            let socket = socket.unwrap_or_else(arrakis_backends::proto::default_socket);
            return match admin::fsck(&socket, volume.as_deref(), image.as_deref(), repair) {
                Ok(clean) => std::ffi::c_int::from(!clean),
                Err(e) => {
                    eprintln!("arrakis fsck: {e:#}");
                    2
                }
            };
        }
        Cmd::Revoke { id, opts } => admin::revoke(&opts.socket(), id, opts.json),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("arrakis: {e:#}");
            1
        }
    }
}

/// `arrakis mount`: `--image FILE DIR`, or `VOLUME DIR` through the daemon.
fn mount(args: &[PathBuf], image: Option<&Path>, read_only: bool, socket: Option<PathBuf>) -> Result<()> {
    match (image, args) {
        (Some(image), [dir]) => fuse::mount_image(image, dir, read_only),
        (Some(_), _) => bail!("with --image, give only the directory to mount on"),
        (None, [volume, dir]) => {
            let socket = socket.unwrap_or_else(arrakis_backends::proto::default_socket);
            let Some(name) = volume.to_str() else { bail!("the volume name is not UTF-8") };
            fuse::mount_volume(&socket, name, dir, read_only)
        }
        (None, _) => bail!("give the volume and the directory to mount it on (or --image FILE DIR)"),
    }
}

fn parse_ifaddr(s: &str) -> Result<arrakis_backends::proto::IfAddr, String> {
    arrakis_backends::proto::IfAddr::parse(s)
}

/// As shells report a command they could not run: 127 not found, 126 found but not runnable.
fn exit_code(err: &anyhow::Error) -> std::ffi::c_int {
    match err.downcast_ref::<Errno>() {
        Some(Errno::ENOENT | Errno::ENOTDIR) | None => 127,
        Some(_) => 126,
    }
}

/// Finds the shim: `$ARRAKIS_SHIM`, else `libarrakis.so` next to this binary.
fn find_shim() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ARRAKIS_SHIM") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("ARRAKIS_SHIM={} is not a file; point it at libarrakis.so or unset it", p.display());
        }
        return absolute(&p);
    }
    let exe = std::env::current_exe().context("cannot find the arrakis binary's own path")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let p = dir.join("libarrakis.so");
    if !p.is_file() {
        bail!(
            "no libarrakis.so next to {}; build it with `cargo build --release` \
             (the workspace builds both) or set ARRAKIS_SHIM to its path",
            exe.display()
        );
    }
    absolute(&p)
}

fn absolute(p: &Path) -> Result<PathBuf> {
    p.canonicalize().with_context(|| format!("cannot resolve {}", p.display()))
}

/// `LD_PRELOAD` with the shim first, keeping whatever was there (unless it is the shim).
fn preload_value(shim: &Path, existing: Option<&OsStr>) -> OsString {
    let mut v = OsString::from(shim);
    if let Some(old) = existing {
        let shim_bytes = shim.as_os_str().as_encoded_bytes();
        let kept: Vec<&[u8]> = old
            .as_encoded_bytes()
            .split(|&b| b == b':' || b == b' ')
            .filter(|e| !e.is_empty() && *e != shim_bytes)
            .collect();
        for e in kept {
            v.push(":");
            v.push(OsStr::from_bytes(e));
        }
    }
    v
}

/// The environment this process was started with, entry by entry, as the kernel passed it.
fn initial_environment() -> Vec<Vec<u8>> {
    match std::fs::read("/proc/self/environ") {
        Ok(raw) => raw.split(|&b| b == 0).filter(|e| !e.is_empty()).map(<[u8]>::to_vec).collect(),
        // No /proc: std's view (it drops entries without '=').
        Err(_) => std::env::vars_os().map(|(k, v)| [k.as_bytes(), b"=", v.as_bytes()].concat()).collect(),
    }
}

/// Sets `name` to `value` in `env`: every entry of that name is replaced in place (ld.so and
/// getenv read different ones when a name repeats), or the entry is appended.
fn set_var(env: &mut Vec<Vec<u8>>, name: &[u8], value: &[u8]) {
    let entry = [name, b"=", value].concat();
    let mut found = false;
    for e in env.iter_mut() {
        if e.len() > name.len() && e.starts_with(name) && e[name.len()] == b'=' {
            *e = entry.clone();
            found = true;
        }
    }
    if !found {
        env.push(entry);
    }
}

/// The value of the first `name` entry in `env`.
fn get_var<'a>(env: &'a [Vec<u8>], name: &[u8]) -> Option<&'a [u8]> {
    env.iter().find_map(|e| e.strip_prefix(name).and_then(|rest| rest.strip_prefix(b"=")))
}

/// Execs the command under the shim; returns only with the reason it could not.
fn run(
    backend: Option<&str>,
    volumes: &[volume::VolumeSpec],
    volume_size: u64,
    command: &[OsString],
) -> anyhow::Error {
    match try_run(backend, volumes, volume_size, command) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

fn try_run(
    backend: Option<&str>,
    volumes: &[volume::VolumeSpec],
    volume_size: u64,
    command: &[OsString],
) -> Result<std::convert::Infallible> {
    let Some(prog) = command.first() else { bail!("arrakis run needs a command") };
    let shim = find_shim()?;
    let mut env = initial_environment();
    if let Some(b) = backend {
        // The library OS learns `emulator` with its NIC driver; the launcher knows it already.
        if b.trim() != EMULATOR {
            Backend::parse(b)?;
        }
        set_var(&mut env, b"ARRAKIS_BACKEND", b.trim().as_bytes());
        if b.trim() == EMULATOR {
            launcher::ensure_daemon(&arrakis_backends::proto::default_socket())?;
        }
    }
    if !volumes.is_empty() {
        // The library OS attaches each volume through the daemon (the loopback backend keeps
        // volumes in memory, but the variable is set all the same).
        let socket = arrakis_backends::proto::default_socket();
        launcher::ensure_daemon(&socket)?;
        let mut client = arrakis_backends::proto::client::Client::connect(&socket)?;
        volume::ensure_vsas(&mut client, volumes, volume_size)?;
        set_var(&mut env, volume::VOLUMES_ENV.as_bytes(), volume::volumes_env(volumes).as_bytes());
    }
    let preload = preload_value(&shim, get_var(&env, b"LD_PRELOAD").map(OsStr::from_bytes));
    set_var(&mut env, b"LD_PRELOAD", preload.as_bytes());
    let cstr = |b: Vec<u8>| CString::new(b).context("an argument or variable contains a NUL byte");
    let args = command.iter().map(|a| cstr(a.clone().into_vec())).collect::<Result<Vec<_>>>()?;
    let env = env.into_iter().map(cstr).collect::<Result<Vec<_>>>()?;
    // execvpe returns only on failure (its Ok type is uninhabited).
    let Err(err) = nix::unistd::execvpe(&args[0], &args, &env);
    Err(anyhow::Error::new(err).context(format!("cannot run {}", Path::new(prog).display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preload_puts_the_shim_first_once() {
        let shim = Path::new("/a/libarrakis.so");
        assert_eq!(preload_value(shim, None), "/a/libarrakis.so");
        assert_eq!(preload_value(shim, Some(OsStr::new("/x/libz.so"))), "/a/libarrakis.so:/x/libz.so");
        assert_eq!(
            preload_value(shim, Some(OsStr::new("/a/libarrakis.so /x/libz.so"))),
            "/a/libarrakis.so:/x/libz.so"
        );
    }

    #[test]
    fn variables_are_replaced_in_place_or_appended() {
        let mut env: Vec<Vec<u8>> =
            vec![b"Z=1".to_vec(), b"LD_PRELOAD=a".to_vec(), b"NOEQ".to_vec(), b"Z=2".to_vec()];
        set_var(&mut env, b"LD_PRELOAD", b"shim:a");
        set_var(&mut env, b"NEW", b"x");
        assert_eq!(
            env,
            vec![
                b"Z=1".to_vec(),
                b"LD_PRELOAD=shim:a".to_vec(),
                b"NOEQ".to_vec(),
                b"Z=2".to_vec(),
                b"NEW=x".to_vec()
            ]
        );
        assert_eq!(get_var(&env, b"Z"), Some(&b"1"[..]));
        assert_eq!(get_var(&env, b"NOEQ"), None);
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(&anyhow::Error::new(Errno::ENOENT).context("x")), 127);
        assert_eq!(exit_code(&anyhow::Error::new(Errno::EACCES)), 126);
        assert_eq!(exit_code(&anyhow::anyhow!("no shim")), 127);
    }

    #[test]
    fn the_emulator_backend_is_accepted_and_others_checked() {
        let cli = Cli::try_parse_from(["arrakis", "run", "--backend", "emulator", "--", "true"]).unwrap();
        let Cmd::Run { backend, .. } = cli.cmd else { panic!("not run") };
        assert_eq!(backend.as_deref(), Some(EMULATOR));
        let err = run(Some("warp-drive"), &[], 0, &[OsString::from("true")]);
        assert!(format!("{err:#}").contains("warp-drive"), "{err:#}");
    }

    #[test]
    fn the_cli_parses_run_with_hyphen_arguments() {
        let cli = Cli::try_parse_from(["arrakis", "run", "--", "ls", "-l", "/"]).unwrap();
        let Cmd::Run { command, backend, .. } = cli.cmd else { panic!("not run") };
        assert_eq!(command, vec!["ls", "-l", "/"]);
        assert!(backend.is_none());
        let cli = Cli::try_parse_from(["arrakis", "run", "redis-server", "--port", "7000"]).unwrap();
        let Cmd::Run { command, .. } = cli.cmd else { panic!("not run") };
        assert_eq!(command, vec!["redis-server", "--port", "7000"]);
    }
}
