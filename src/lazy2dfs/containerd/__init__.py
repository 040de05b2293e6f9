"""Client of containerd's API, for ``lazy2dfs pull``."""
