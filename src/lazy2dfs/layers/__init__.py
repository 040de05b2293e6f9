"""Lazily served layers: what the snapshotter's remote-snapshot protocol asks for.

A Prepare that names an eStargz or zstd:chunked layer comes here (``EstargzLayers``): the
layer is located (``locator``), its footer and TOC are fetched and verified, its tree is added
to the FUSE mount and a ``remote.LayerReader`` serves its bytes. This package joins the
snapshotter, the FUSE mount and the read path, which know nothing of each other.
"""
