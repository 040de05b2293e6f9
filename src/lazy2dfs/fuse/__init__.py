"""The pyfuse3 filesystem: every remote layer is a read-only directory tree of one mount."""
