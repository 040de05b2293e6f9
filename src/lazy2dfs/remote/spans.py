"""Which range requests fetch a set of segments.

Adjacent wanted segments form one *run* (one byte range). Runs close to each other go in one
request as several ranges (``multipart/byteranges``; the registry client falls back to single
ranges where a registry refuses that): one round trip, and no byte the cache already holds is
fetched again — the bytes between two runs are often segments another reader or another blob
already brought.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lazy2dfs.estargz.layout import Segment

# Runs closer than this in the blob share a request: a second round trip costs more than the
# header of another part.
MERGE_GAP = 4 * 1024 * 1024
# Upper bound of one request's extent and of its parts, so one reader does not wait for a
# whole layer, memory stays bounded and the Range header stays short. Not much lower: each
# request costs the CNCF registry about 5 ms of CPU besides its bytes (1 GiB of blobs in 2 MiB
# ranges: 3.3 CPU-s; 4 MiB: 1.9; 16 MiB: 1.0; whole: 0.6-0.7, from its page cache). Nor
# higher: at 32 MiB a cold 1 GiB load cost it 1.20-1.57 CPU-s/GiB against 1.42-1.81, the
# model was ready no sooner and the daemon's peak RSS was 10-20 MiB higher (4 runs each).
MAX_SPAN = 16 * 1024 * 1024
MAX_RUNS = 32


@dataclass(frozen=True, slots=True)
class Run:
    """Adjacent segments: one byte range."""

    segments: tuple[Segment, ...]

    @property
    def start(self) -> int:
        return self.segments[0].start

    @property
    def end(self) -> int:
        return self.segments[-1].end

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass(frozen=True, slots=True)
class Span:
    """The runs fetched with one request."""

    runs: tuple[Run, ...]

    @property
    def start(self) -> int:
        return self.runs[0].start

    @property
    def size(self) -> int:
        """Bytes fetched (the runs, not what lies between them)."""
        return sum(run.size for run in self.runs)

    @property
    def segments(self) -> tuple[Segment, ...]:
        return tuple(s for run in self.runs for s in run.segments)


def plan_spans(
    segments: Sequence[Segment], merge_gap: int = MERGE_GAP, max_span: int = MAX_SPAN
) -> list[Span]:
    """Groups ``segments`` (any order, repeats allowed) into requests, in blob order."""
    ordered = sorted({s.index: s for s in segments}.values(), key=lambda s: s.start)
    runs: list[list[Segment]] = []
    for segment in ordered:
        if (
            runs
            and runs[-1][-1].end == segment.start
            and (segment.end - runs[-1][0].start <= max_span)
        ):
            runs[-1].append(segment)
        else:
            runs.append([segment])
    spans: list[Span] = []
    group: list[Run] = []
    for run in (Run(tuple(r)) for r in runs):
        if group and (
            run.start - group[-1].end > merge_gap
            or run.end - group[0].start > max_span
            or len(group) >= MAX_RUNS
        ):
            spans.append(Span(tuple(group)))
            group = []
        group.append(run)
    if group:
        spans.append(Span(tuple(group)))
    return spans
