"""A page-cache store leaves out the bytes a read in flight will bring, and nothing else."""

from lazy2dfs.fuse.reads_in_flight import ReadsInFlight

MIB = 1 << 20


def test_with_no_read_in_flight_the_whole_range_is_stored() -> None:
    reads = ReadsInFlight()
    assert reads.outside(5, 0, 4 * MIB) == [(0, 4 * MIB)]


def test_reads_in_flight_are_cut_out_of_the_range() -> None:
    reads = ReadsInFlight()
    reads.begin(5, 1 * MIB, 2 * MIB)
    reads.begin(5, 3 * MIB, 5 * MIB)  # past the range's end
    assert reads.outside(5, 0, 4 * MIB) == [(0, 1 * MIB), (2 * MIB, 3 * MIB)]


def test_overlapping_reads_and_a_range_inside_one_read() -> None:
    reads = ReadsInFlight()
    reads.begin(5, 0, 2 * MIB)
    reads.begin(5, 1 * MIB, 3 * MIB)
    assert reads.outside(5, 0, 4 * MIB) == [(3 * MIB, 4 * MIB)]
    assert reads.outside(5, MIB // 2, 2 * MIB) == []


def test_reads_of_other_files_and_ended_reads_cut_nothing() -> None:
    reads = ReadsInFlight()
    reads.begin(6, 0, 4 * MIB)
    ended = reads.begin(5, 0, 4 * MIB)
    reads.end(5, ended)
    reads.end(5, ended)  # twice: a no-op
    assert reads.outside(5, 0, 4 * MIB) == [(0, 4 * MIB)]
