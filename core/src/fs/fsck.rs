//! Checking (and repairing) a volume image: what `arrakis fsck` runs.
