"""The unpacked layers on local disk: one cache per blob (``layer``), all of them bounded
and shared (``store``)."""
