"""A private registry, containerd and lazy2dfs daemon on loopback.

Used by `make demo`, the benchmarks and the tests, so all three run the same real parts. It
runs from a source checkout and is not installed: the product never imports it."""
