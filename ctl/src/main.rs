//! `arrakis`: the command-line front end of Arrakis for Linux.
//!
//! This subcommand is the launcher, `arrakis run [--] CMD ARGS...`, which puts the
//! shim into `LD_PRELOAD` and execs the command. Later issues add the control daemon, the
//! software switch and the admin commands here.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};
use arrakis_core::config::Backend;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "arrakis", version, about = "Arrakis for Linux: a library OS for unmodified programs")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a program under the shim (LD_PRELOAD=libarrakis.so).
    Run {
        /// Device the library OS drives (this build: kernel, every fd on the kernel path).
        #[arg(long, value_name = "NAME")]
        backend: Option<String>,
        /// Program and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Run { backend, command } => run(backend.as_deref(), &command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("arrakis: {e:#}");
            // 127, as a shell reports a command it could not run.
            ExitCode::from(127)
        }
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

fn run(backend: Option<&str>, command: &[OsString]) -> Result<()> {
    let Some((prog, args)) = command.split_first() else { bail!("arrakis run needs a command") };
    let shim = find_shim()?;
    let mut cmd = Command::new(prog);
    cmd.args(args);
    if let Some(b) = backend {
        Backend::parse(b)?;
        cmd.env("ARRAKIS_BACKEND", b);
    }
    cmd.env("LD_PRELOAD", preload_value(&shim, std::env::var_os("LD_PRELOAD").as_deref()));
    let err = cmd.exec();
    bail!("cannot run {}: {err}", Path::new(prog).display())
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
    fn the_cli_parses_run_with_hyphen_arguments() {
        let cli = Cli::try_parse_from(["arrakis", "run", "--", "ls", "-l", "/"]).unwrap();
        let Cmd::Run { command, backend } = cli.cmd;
        assert_eq!(command, vec!["ls", "-l", "/"]);
        assert!(backend.is_none());
        let cli = Cli::try_parse_from(["arrakis", "run", "redis-server", "--port", "7000"]).unwrap();
        let Cmd::Run { command, .. } = cli.cmd;
        assert_eq!(command, vec!["redis-server", "--port", "7000"]);
    }
}
