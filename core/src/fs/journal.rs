//! The write-ahead journal: records, commit, replay at mount.
