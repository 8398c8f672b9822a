//! Descriptor-level objects: open files and directories on a volume, their offsets and flags.
