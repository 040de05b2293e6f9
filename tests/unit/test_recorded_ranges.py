"""A lazily served layer's saved footer and TOC reopen after a restart, whichever release
saved them."""

from functools import partial

import trio

from lazy2dfs.estargz import Toc, WriterOptions, open_blob_async
from lazy2dfs.estargz.footer import FOOTER_SIZE
from lazy2dfs.layers.saved import RecordedRanges
from tests.support.estargz import make_tar, write

BLOB, RESULT = write(make_tar({"model/w.bin": bytes(range(256)) * 4096}), WriterOptions())


class Blob:
    async def read_range(self, offset: int, length: int) -> bytes:
        return BLOB[offset : offset + length]


def reopen(recorded: RecordedRanges) -> Toc:
    return trio.run(
        partial(open_blob_async, expected_toc_digest=RESULT.toc_digest),
        recorded.read_range,
        len(BLOB),
    )


def test_ranges_saved_before_the_toc_read_skipped_the_tail_still_reopen() -> None:
    recorded = RecordedRanges()
    trio.run(open_blob_async, recorded.recording(Blob()).read_range, len(BLOB))
    (toc_start, toc_length), (tail_start, _) = sorted(
        (offset, len(data)) for offset, data in recorded.ranges.items()
    )
    assert toc_start + toc_length == tail_start  # the TOC's last bytes come from the tail
    # What an older release saved: the tail, and the TOC member up to the footer.
    toc_end = len(BLOB) - FOOTER_SIZE
    old = RecordedRanges({tail_start: BLOB[tail_start:], toc_start: BLOB[toc_start:toc_end]})
    assert reopen(old) == reopen(recorded)
