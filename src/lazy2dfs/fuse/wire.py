"""The few facts of the FUSE protocol (``<linux/fuse.h>``) that the keeper and the store ring
read and write themselves; libfuse handles the rest."""

from __future__ import annotations

import struct

IN_HEADER = struct.Struct("<IIQ")  # len, opcode, unique: the start of struct fuse_in_header
OUT_HEADER = struct.Struct("<IiQ")  # len, error, unique: struct fuse_out_header
NOTIFY_STORE_OUT = struct.Struct("<QQII")  # nodeid, offset, size, padding
FUSE_FORGET = 2
FUSE_INIT = 26
FUSE_INTERRUPT = 36
FUSE_BATCH_FORGET = 42
FUSE_NOTIFY_STORE = 4  # enum fuse_notify_code, in the error field of a notification
