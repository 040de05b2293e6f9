"""Partitioned images kept for containerd and the snapshotter: by digest, bounded."""

from lazy2dfs.tdfs.computed import ComputedImages
from lazy2dfs.tdfs.partition import PartitionedImage


def image(n: int, size: int = 100) -> PartitionedImage:
    return PartitionedImage(b"m%d" % n + b" " * size, b"c%d" % n + b" " * size)


def test_manifests_and_configs_by_digest() -> None:
    kept = ComputedImages()
    one = image(1)
    kept.add(one)
    assert kept.image(one.manifest_digest) == one
    assert kept.config(one.config_digest) == one.config
    assert kept.image(one.config_digest) is None  # a config is not a manifest
    assert kept.config(one.manifest_digest) is None


def test_the_least_recently_used_go_beyond_the_bound() -> None:
    kept = ComputedImages(max_bytes=3 * 2 * 102)  # three images fit
    images = [image(n) for n in range(4)]
    for n in range(3):
        kept.add(images[n])
    assert kept.image(images[0].manifest_digest) is not None  # 0 is now the most recent
    kept.add(images[3])
    assert kept.image(images[1].manifest_digest) is None
    assert kept.config(images[1].config_digest) is None
    for n in (0, 2, 3):
        assert kept.image(images[n].manifest_digest) == images[n]
        assert kept.config(images[n].config_digest) == images[n].config


def test_one_image_larger_than_the_bound_is_still_kept_until_the_next() -> None:
    """containerd fetches a manifest right after resolving it: the newest always stays."""
    kept = ComputedImages(max_bytes=10)
    big, bigger = image(1, 1000), image(2, 2000)
    kept.add(big)
    assert kept.image(big.manifest_digest) == big
    kept.add(bigger)
    assert kept.image(big.manifest_digest) is None
    assert kept.image(bigger.manifest_digest) == bigger
