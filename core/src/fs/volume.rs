//! [`Volume`]: the file system inside a VSA, implementing [`super::FileSystem`].
