//! The on-disk format: superblocks, checkpoint, journal area, data blocks; encoding and checked decoding of every structure.
