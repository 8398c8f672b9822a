//! Mounts (path prefix → volume), path resolution, the library OS's cwd.
