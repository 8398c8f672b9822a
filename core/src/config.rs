//! Configuration of the library OS, read once at start-up from `ARRAKIS_*` environment
//! variables. Bad values give an error that names the variable and the fix.

use std::path::PathBuf;

/// Which device the library OS drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Every fd stays on the kernel; the shim only observes.
    Kernel,
    /// TCP and UDP sockets (`AF_INET`, `AF_INET6`) live on the library OS's own stack, over
    /// an in-process loopback device: the process talks to its own addresses (127.0.0.1,
    /// ::1) with no kernel on the data path. Other addresses and families stay on the kernel.
    Loopback,
    /// TCP and UDP sockets live on the library OS's stack over a virtual NIC of the
    /// `arrakis` daemon's software switch: processes under the shim reach each other (as
    /// 127.0.0.1 and ::1) through shared-memory rings; ports outside the process's blocks
    /// are granted by the daemon; destinations no container serves stay on the kernel.
    Emulator,
}

impl Backend {
    /// The names `ARRAKIS_BACKEND` accepts.
    pub const NAMES: &'static [&'static str] = &["kernel", "loopback", "emulator"];

    /// Parses a backend name as given in `ARRAKIS_BACKEND` or `arrakis run --backend`.
    pub fn parse(s: &str) -> Result<Backend, ConfigError> {
        match s.trim() {
            "" | "kernel" => Ok(Backend::Kernel),
            "loopback" => Ok(Backend::Loopback),
            "emulator" => Ok(Backend::Emulator),
            other => Err(ConfigError::UnknownBackend(other.to_string())),
        }
    }
}

/// A configuration value the library OS cannot use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// `ARRAKIS_BACKEND` names no backend of this build.
    #[error(
        "ARRAKIS_BACKEND={0:?} is not a backend of this build; use one of: {names}; \
         every fd stays on the kernel path until this is fixed",
        names = Backend::NAMES.join(", ")
    )]
    UnknownBackend(String),
    /// `ARRAKIS_SPIN_US` is not a number of microseconds.
    #[error(
        "ARRAKIS_SPIN_US={0:?} is not a number of microseconds (0 to 1000000); \
         using the default, {default}",
        default = crate::net::world::DEFAULT_SPIN_US
    )]
    BadSpin(String),
    /// `ARRAKIS_SPIN_MAX_US` is not a number of microseconds.
    #[error(
        "ARRAKIS_SPIN_MAX_US={0:?} is not a number of microseconds (0 to 1000000); \
         using the default, {default}",
        default = crate::net::world::DEFAULT_SPIN_MAX_US
    )]
    BadSpinMax(String),
    /// `ARRAKIS_KEEPER_US` is not a number of microseconds.
    #[error(
        "ARRAKIS_KEEPER_US={0:?} is not a number of microseconds (0 to 1000000; 0 turns the CPU \
         keeper off); using the default, {default}",
        default = crate::keeper::DEFAULT_KEEPER_US
    )]
    BadKeeper(String),
    /// An on/off variable that is neither `0` nor `1`.
    #[error("{0}={1:?} is neither 0 nor 1; using 0")]
    BadSwitch(&'static str, String),
    /// `ARRAKIS_VOLUMES` does not parse.
    #[error("ARRAKIS_VOLUMES: {0}; no volume is mounted, every path stays on the kernel")]
    BadVolumes(String),
}

/// The library OS's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `ARRAKIS_LOG`: a `tracing` env-filter directive (`warn`, `arrakis=debug`, ...).
    /// Default `warn`.
    pub log_filter: String,
    /// `ARRAKIS_LOG_FILE`: append log lines to this file instead of standard error.
    pub log_file: Option<PathBuf>,
    /// `ARRAKIS_BACKEND`: the device to drive. Default `kernel`.
    pub backend: Backend,
    /// `ARRAKIS_SPIN_US`: how long a blocking library-OS call busy-polls before it sleeps,
    /// in microseconds; 0 sleeps at once. Default [`crate::net::world::DEFAULT_SPIN_US`].
    pub spin_us: u32,
    /// `ARRAKIS_SPIN_MAX_US`: how long the poll of the emulator's rx ring before an
    /// `epoll_wait`, `poll` or `select` sleeps may grow when recent waits took longer than
    /// `ARRAKIS_SPIN_US` (`net::world::device_waited`); at or below `ARRAKIS_SPIN_US` it does
    /// not grow. Default [`crate::net::world::DEFAULT_SPIN_MAX_US`].
    pub spin_max_us: u32,
    /// `ARRAKIS_KEEPER_US`: how long, at most, the CPU keeper polls on the CPU of a thread
    /// that waits for a flush of a VSA (`crate::keeper`), in microseconds; 0: no keeper.
    /// Default [`crate::keeper::DEFAULT_KEEPER_US`].
    pub keeper_us: u32,
    /// `ARRAKIS_KERNEL_CLIENTS`: `1` gives every library-OS TCP socket a kernel half at
    /// `bind`/`listen`, so listeners also accept clients not under the shim
    /// (`core::net::shadow`); `0` does not. Unset: the backend's default
    /// ([`Config::kernel_clients`]).
    pub kernel_clients_set: Option<bool>,
    /// `ARRAKIS_BINDINGS`: `1` (the default) lets flows between two processes on the
    /// emulator backend ask for a secure binding (a private ring pair, so their frames bypass
    /// the switch); `0` keeps every frame on the switch.
    pub bindings: bool,
    /// `ARRAKIS_VOLUMES`: `NAME:/abs/path[:ro],...`, the mounts served by the library OS
    /// (`core::fs::mount`). Default none.
    pub volumes: Vec<crate::fs::mount::Spec>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            log_filter: "warn".into(),
            log_file: None,
            backend: Backend::Kernel,
            spin_us: crate::net::world::DEFAULT_SPIN_US,
            spin_max_us: crate::net::world::DEFAULT_SPIN_MAX_US,
            keeper_us: crate::keeper::DEFAULT_KEEPER_US,
            kernel_clients_set: None,
            bindings: true,
            volumes: Vec::new(),
        }
    }
}

impl Config {
    /// Whether library-OS TCP sockets get kernel halves: as `ARRAKIS_KERNEL_CLIENTS` says,
    /// else on with the emulator backend (its servers must also serve programs not under the
    /// shim) and off with the in-process loopback.
    pub fn kernel_clients(&self) -> bool {
        self.kernel_clients_set.unwrap_or(self.backend == Backend::Emulator)
    }

    /// Reads the configuration through `get` (normally `std::env::var`). Returns the
    /// configuration with defaults in place of bad values, and the errors found, so that a
    /// program under the shim still runs — on the kernel path — with a clear log line.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> (Config, Vec<ConfigError>) {
        let mut cfg = Config::default();
        let mut errors = Vec::new();
        if let Some(f) = get("ARRAKIS_LOG").filter(|s| !s.trim().is_empty()) {
            cfg.log_filter = f;
        }
        cfg.log_file = get("ARRAKIS_LOG_FILE").filter(|s| !s.is_empty()).map(PathBuf::from);
        if let Some(b) = get("ARRAKIS_BACKEND") {
            match Backend::parse(&b) {
                Ok(b) => cfg.backend = b,
                Err(e) => errors.push(e),
            }
        }
        match get("ARRAKIS_KERNEL_CLIENTS").as_deref().map(str::trim) {
            None | Some("") => {}
            Some("0") => cfg.kernel_clients_set = Some(false),
            Some("1") => cfg.kernel_clients_set = Some(true),
            Some(v) => errors.push(ConfigError::BadSwitch("ARRAKIS_KERNEL_CLIENTS", v.to_string())),
        }
        match get("ARRAKIS_BINDINGS").as_deref().map(str::trim) {
            None | Some("") | Some("1") => {}
            Some("0") => cfg.bindings = false,
            Some(v) => errors.push(ConfigError::BadSwitch("ARRAKIS_BINDINGS", v.to_string())),
        }
        if let Some(v) = get("ARRAKIS_VOLUMES") {
            match crate::fs::mount::parse_volumes(&v) {
                Ok(specs) => cfg.volumes = specs,
                Err(e) => errors.push(ConfigError::BadVolumes(e)),
            }
        }
        if let Some(v) = get("ARRAKIS_SPIN_US") {
            match v.trim().parse::<u32>() {
                Ok(us) if us <= 1_000_000 => cfg.spin_us = us,
                _ => errors.push(ConfigError::BadSpin(v)),
            }
        }
        if let Some(v) = get("ARRAKIS_SPIN_MAX_US") {
            match v.trim().parse::<u32>() {
                Ok(us) if us <= 1_000_000 => cfg.spin_max_us = us,
                _ => errors.push(ConfigError::BadSpinMax(v)),
            }
        }
        if let Some(v) = get("ARRAKIS_KEEPER_US") {
            match v.trim().parse::<u32>() {
                Ok(us) if us <= 1_000_000 => cfg.keeper_us = us,
                _ => errors.push(ConfigError::BadKeeper(v)),
            }
        }
        (cfg, errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn defaults() {
        let (cfg, errs) = Config::from_env(env(&[]));
        assert_eq!(cfg, Config::default());
        assert!(errs.is_empty());
    }

    #[test]
    fn reads_every_variable() {
        let (cfg, errs) = Config::from_env(env(&[
            ("ARRAKIS_LOG", "arrakis=debug"),
            ("ARRAKIS_LOG_FILE", "/tmp/x.log"),
            ("ARRAKIS_BACKEND", "kernel"),
            ("ARRAKIS_SPIN_US", "0"),
            ("ARRAKIS_SPIN_MAX_US", "200"),
            ("ARRAKIS_KEEPER_US", "0"),
        ]));
        assert!(errs.is_empty());
        assert_eq!(cfg.spin_us, 0);
        assert_eq!(cfg.spin_max_us, 200);
        assert_eq!(cfg.keeper_us, 0);
        assert_eq!(cfg.log_filter, "arrakis=debug");
        assert_eq!(cfg.log_file, Some(PathBuf::from("/tmp/x.log")));
        assert_eq!(cfg.backend, Backend::Kernel);
    }

    #[test]
    fn emulator_backend_turns_kernel_clients_on_unless_told_otherwise() {
        let (cfg, errs) = Config::from_env(env(&[("ARRAKIS_BACKEND", "emulator")]));
        assert!(errs.is_empty());
        assert_eq!(cfg.backend, Backend::Emulator);
        assert!(cfg.kernel_clients());
        let (cfg, _) =
            Config::from_env(env(&[("ARRAKIS_BACKEND", "emulator"), ("ARRAKIS_KERNEL_CLIENTS", "0")]));
        assert!(!cfg.kernel_clients());
        let (cfg, _) = Config::from_env(env(&[("ARRAKIS_BACKEND", "loopback")]));
        assert!(!cfg.kernel_clients());
        let (cfg, _) =
            Config::from_env(env(&[("ARRAKIS_BACKEND", "loopback"), ("ARRAKIS_KERNEL_CLIENTS", "1")]));
        assert!(cfg.kernel_clients());
        assert!(Backend::NAMES.contains(&"emulator"));
    }

    #[test]
    fn bad_backend_is_named_and_falls_back() {
        let (cfg, errs) = Config::from_env(env(&[("ARRAKIS_BACKEND", "warp-drive")]));
        assert_eq!(cfg.backend, Backend::Kernel);
        assert_eq!(errs, vec![ConfigError::UnknownBackend("warp-drive".into())]);
        let msg = errs[0].to_string();
        assert!(msg.contains("ARRAKIS_BACKEND") && msg.contains("kernel"), "{msg}");
    }

    #[test]
    fn bad_spin_is_named_and_falls_back() {
        for bad in ["-1", "fast", "1000001"] {
            let (cfg, errs) = Config::from_env(env(&[("ARRAKIS_SPIN_US", bad)]));
            assert_eq!(cfg.spin_us, crate::net::world::DEFAULT_SPIN_US);
            assert_eq!(errs, vec![ConfigError::BadSpin(bad.into())]);
            assert!(errs[0].to_string().contains("ARRAKIS_SPIN_US"));
            let (cfg, errs) = Config::from_env(env(&[("ARRAKIS_SPIN_MAX_US", bad)]));
            assert_eq!(cfg.spin_max_us, crate::net::world::DEFAULT_SPIN_MAX_US);
            assert_eq!(errs, vec![ConfigError::BadSpinMax(bad.into())]);
            assert!(errs[0].to_string().contains("ARRAKIS_SPIN_MAX_US"));
            let (cfg, errs) = Config::from_env(env(&[("ARRAKIS_KEEPER_US", bad)]));
            assert_eq!(cfg.keeper_us, crate::keeper::DEFAULT_KEEPER_US);
            assert_eq!(errs, vec![ConfigError::BadKeeper(bad.into())]);
            assert!(errs[0].to_string().contains("ARRAKIS_KEEPER_US"));
        }
    }
}
