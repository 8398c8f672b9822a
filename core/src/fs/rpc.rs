//! Remote volumes: the RPC protocol, the server that exports a [`super::FileSystem`] and the client that implements one over a stream.
