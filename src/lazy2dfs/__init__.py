"""lazy2dfs: a containerd remote snapshotter that lazily loads ML model weights in 2DFS images."""

__version__ = "0.1.0"
