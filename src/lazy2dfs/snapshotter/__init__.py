"""containerd's snapshot API: the snapshot store, mounts and the gRPC service."""
