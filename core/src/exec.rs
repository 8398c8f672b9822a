//! What crosses `exec`. A program under the shim keeps it after `exec`, even when it passes
//! the new program an environment without `LD_PRELOAD` (as Gentoo's sandbox does): the shim
//! adds `LD_PRELOAD` and the `ARRAKIS_*` settings it started with to an environment that lacks
//! them. The shim does that work in a vfork child or after `fork` in a threaded program, so
//! these helpers never allocate.

/// The variable name of an environment entry `NAME=value` (the whole entry if it has no `=`).
pub fn var_name(entry: &[u8]) -> &[u8] {
    match entry.iter().position(|&b| b == b'=') {
        Some(i) => &entry[..i],
        None => entry,
    }
}

/// The value of an environment entry `NAME=value` (empty if it has no `=`).
pub fn var_value(entry: &[u8]) -> &[u8] {
    match entry.iter().position(|&b| b == b'=') {
        Some(i) => &entry[i + 1..],
        None => &[],
    }
}

/// True for the variables the shim carries across `exec`: `LD_PRELOAD` and `ARRAKIS_*`.
pub fn is_carried(name: &[u8]) -> bool {
    name == b"LD_PRELOAD" || name.starts_with(b"ARRAKIS_")
}

/// True if an `LD_PRELOAD` value (entries separated by spaces or colons, as ld.so reads it)
/// names the shim at `shim_path`, by full path or by file name.
pub fn preload_names_shim(value: &[u8], shim_path: &[u8]) -> bool {
    let base = shim_path.rsplit(|&b| b == b'/').next().unwrap_or(shim_path);
    value
        .split(|&b| b == b' ' || b == b':')
        .filter(|e| !e.is_empty())
        .any(|e| e == shim_path || e.rsplit(|&b| b == b'/').next() == Some(base))
}

/// True if an entry whose first bytes are `head` may be one the shim carries. `head` may be
/// cut short (at a page boundary, or a fixed prefix length) or end in the string's NUL.
pub fn may_be_carried(head: &[u8]) -> bool {
    let full = head.iter().position(|&b| b == 0).map_or(head, |e| &head[..e]);
    let cut = full.len() == head.len();
    let starts = |p: &[u8]| full.starts_with(p) || (cut && p.starts_with(full));
    starts(b"LD_PRELOAD=") || starts(b"ARRAKIS_")
}

#[cfg(test)]
mod tests {
    #[test]
    fn heads_that_may_be_carried() {
        assert!(may_be_carried(b"LD_PRELOAD=/x/li"));
        assert!(may_be_carried(b"ARRAKIS_LOG=debu"));
        assert!(may_be_carried(b"LD_PR"));
        assert!(!may_be_carried(b"LD_PR\0"));
        assert!(!may_be_carried(b"PATH=/usr/bin:/b"));
        assert!(!may_be_carried(b"LD_LIBRARY_PATH="));
        assert!(!may_be_carried(b"ARRAKIS\0"));
    }

    use super::*;

    #[test]
    fn names_and_values() {
        assert_eq!(var_name(b"A=b=c"), b"A");
        assert_eq!(var_value(b"A=b=c"), b"b=c");
        assert_eq!(var_name(b"NOVALUE"), b"NOVALUE");
        assert_eq!(var_value(b"NOVALUE"), b"");
    }

    #[test]
    fn carried_variables() {
        assert!(is_carried(b"LD_PRELOAD"));
        assert!(is_carried(b"ARRAKIS_LOG"));
        assert!(!is_carried(b"LD_PRELOADX"));
        assert!(!is_carried(b"PATH"));
    }

    #[test]
    fn preload_detection() {
        let shim = b"/opt/a/libarrakis.so";
        assert!(preload_names_shim(b"/opt/a/libarrakis.so", shim));
        assert!(preload_names_shim(b"libfoo.so:/x/libarrakis.so", shim));
        assert!(preload_names_shim(b"libfoo.so libarrakis.so", shim));
        assert!(!preload_names_shim(b"libfoo.so", shim));
        assert!(!preload_names_shim(b"/x/libarrakis.so.bak", shim));
        assert!(!preload_names_shim(b"", shim));
    }
}
