"""The read path: a file range of a layer → chunks → disk cache or range requests →
decompress → verify. No FUSE and no snapshotter types: FUSE asks by file key."""
