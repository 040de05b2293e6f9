import os
from pathlib import Path

import pytest

from devstack.images import push_image
from devstack.registry import LocalRegistry
from lazy2dfs.registry_client import (
    OCI_INDEX,
    BlobNotFoundError,
    CredentialStore,
    DigestMismatchError,
    ImageIndex,
    ManifestNotFoundError,
    RangeError,
    RegistryClient,
    SyncRegistryClient,
    sha256_digest,
)
from tests.support.registry import PAYLOAD, run, sample_image

IMAGE = sample_image()


@pytest.fixture(scope="module")
def ref(registry: LocalRegistry) -> str:
    reference = f"{registry.host}/test/model:v1"
    run(lambda c: push_image(c, reference, IMAGE))
    return reference


def test_pull_verifies_everything(ref: str, tmp_path: Path) -> None:
    async def pull(client: RegistryClient) -> None:
        image = await client.get_image(ref + "--0.0.1.1")
        assert image.root.media_type == OCI_INDEX
        assert image.root.digest == IMAGE.root.digest
        assert image.descriptor.digest == IMAGE.manifest.digest
        assert isinstance(image.index, ImageIndex)
        assert image.reference.partitions and image.reference.digest == IMAGE.root.digest
        config = await client.get_blob(ref, image.manifest.config.digest)
        assert config == IMAGE.config.data
        for layer, built in zip(image.manifest.layers, IMAGE.layers, strict=True):
            target = tmp_path / layer.digest.replace(":", "-")
            assert await client.download_blob(ref, layer.digest, target) == layer.size
            assert target.read_bytes() == built.blob.data
            assert await client.stat_blob(ref, layer.digest) == layer.size
        manifest = await client.get_manifest(ref, IMAGE.manifest.digest)
        assert manifest.data == IMAGE.manifest.data

    run(pull)


def test_resolve_and_sync_facade(ref: str) -> None:
    client = SyncRegistryClient(credentials=CredentialStore())
    assert client.resolve(ref).digest == IMAGE.root.digest
    layer = IMAGE.layers[1].blob
    assert client.read_ranges(ref, layer.digest, [(0, 3), (10, 5)]) == [
        layer.data[:3],
        layer.data[10:15],
    ]


def test_range_and_multi_range_reads(ref: str, registry: LocalRegistry) -> None:
    layer = IMAGE.layers[1].blob
    size = len(layer.data)
    wanted = [(size - 100, 100), (0, 10), (5000, 70000)]

    async def read(client: RegistryClient) -> None:
        reader = client.blob_reader(ref, layer.digest, size)
        assert await reader.read_range(1000, 1) == layer.data[1000:1001]
        assert await reader.read_ranges(wanted) == [layer.data[o : o + n] for o, n in wanted]
        with pytest.raises(RangeError):
            await reader.read_range(size - 1, 2)

    run(read)
    ranged = [r for r in registry.requests() if layer.digest in r.path and r.status == 206]
    assert len(ranged) >= 2


def test_missing_things(ref: str) -> None:
    missing = sha256_digest(b"missing")

    async def pull(client: RegistryClient) -> None:
        with pytest.raises(ManifestNotFoundError):
            await client.get_manifest(ref.replace(":v1", ":nope"))
        with pytest.raises(BlobNotFoundError):
            await client.get_blob(ref, missing)
        with pytest.raises(BlobNotFoundError):
            await client.blob_reader(ref, missing).read_range(0, 1)

    run(pull)


def test_corrupted_blob_is_never_returned(registry: LocalRegistry, tmp_path: Path) -> None:
    data = b"precious weights" * 100
    digest = sha256_digest(data)
    ref = f"{registry.host}/test/corrupt:v1"
    run(lambda c: c.push_blob(ref, digest, data))
    stored = registry.blob_path(digest)
    stored.write_bytes(b"X" + stored.read_bytes()[1:])
    target = tmp_path / "blob"

    async def pull(client: RegistryClient) -> None:
        with pytest.raises(DigestMismatchError):
            await client.get_blob(ref, digest)
        with pytest.raises(DigestMismatchError):
            await client.download_blob(ref, digest, target)

    run(pull)
    assert not target.exists() and not (tmp_path / "blob.partial").exists()


def test_push_skips_mounts_and_chunks(registry: LocalRegistry, ref: str) -> None:
    layer = IMAGE.layers[1].blob
    other = f"{registry.host}/test/other:v1"
    chunked = PAYLOAD[:100_000]

    async def push(client: RegistryClient) -> None:
        assert not await client.push_blob(ref, layer.digest, layer.data)
        assert await client.push_blob(other, layer.digest, layer.data, mount_from="test/model")
        assert await client.push_blob(other, sha256_digest(chunked), chunked, chunk_size=30_000)
        assert await client.get_blob(other, sha256_digest(chunked)) == chunked
        with pytest.raises(DigestMismatchError):
            await client.push_blob(other, sha256_digest(b"a"), b"b")

    run(push)
    log = registry.requests()
    mounts = [r for r in log if "mount=" in r.path and r.status == 201]
    assert mounts and "from=test%2Fmodel" in mounts[0].path
    assert len([r for r in log if r.method == "PATCH" and "/test/other/" in r.path]) == 4


def test_push_from_file_and_plain_manifest(registry: LocalRegistry, tmp_path: Path) -> None:
    image = sample_image(in_index=False)
    ref = f"{registry.host}/test/flat:v1"
    path = tmp_path / "layer"
    path.write_bytes(PAYLOAD)

    async def push(client: RegistryClient) -> None:
        await push_image(client, ref, image)
        assert await client.push_blob(ref, sha256_digest(PAYLOAD), path)
        resolved = await client.get_image(ref)
        assert resolved.index is None and resolved.root.digest == image.manifest.digest
        assert await client.get_blob(ref, sha256_digest(PAYLOAD)) == PAYLOAD

    run(push)


def test_the_size_of_a_blob_larger_than_any_answer_read_whole(registry: LocalRegistry) -> None:
    """HEAD announces the blob's size without sending it: the bound on answers read whole
    (8 MiB) does not apply, or no stock-layout 2DFS allotment that large could be sized."""
    ref = f"{registry.host}/test/large:v1"
    data = os.urandom(9 << 20)
    digest = sha256_digest(data)
    run(lambda c: c.push_blob(ref, digest, data))
    assert run(lambda c: c.stat_blob(ref, digest)) == len(data)
