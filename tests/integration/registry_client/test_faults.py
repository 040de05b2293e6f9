"""Registry misbehaviour the real registry cannot produce, injected by ``FaultProxy``."""

import time
from pathlib import Path
from urllib.parse import quote

import pytest
import trio

from devstack.faults import FaultProxy
from devstack.images import push_image
from devstack.registry import LocalRegistry
from lazy2dfs.registry_client import (
    CredentialStore,
    RegistryClient,
    RegistryUnavailableError,
    RetryPolicy,
)
from tests.support.registry import FAST_RETRY, run, sample_image

IMAGE = sample_image()
LAYER = IMAGE.layers[1].blob
WANTED = [(0, 10), (50_000, 1000), (len(LAYER.data) - 5, 5)]
EXPECTED = [LAYER.data[o : o + n] for o, n in WANTED]


@pytest.fixture(scope="module", autouse=True)
def pushed(registry: LocalRegistry) -> None:
    run(lambda c: push_image(c, f"{registry.host}/faults/model:v1", IMAGE))


def ref(proxy: FaultProxy) -> str:
    return f"{proxy.host}/faults/model:v1"


def read(proxy: FaultProxy, retry: RetryPolicy = FAST_RETRY) -> list[bytes]:
    async def call(client: RegistryClient) -> list[bytes]:
        return await client.blob_reader(ref(proxy), LAYER.digest).read_ranges(WANTED)

    return run(call, retry)


def test_range_answered_with_whole_blob_is_verified_and_sliced(proxy: FaultProxy) -> None:
    proxy.faults.ignore_range = True
    assert read(proxy) == EXPECTED


def test_multi_range_refused_falls_back_to_single_ranges(proxy: FaultProxy) -> None:
    proxy.faults.refuse_multi_range = True

    async def call(client: RegistryClient) -> None:
        reader = client.blob_reader(ref(proxy), LAYER.digest, len(LAYER.data))
        assert await reader.read_ranges(WANTED) == EXPECTED
        assert await reader.read_ranges(WANTED[:2]) == EXPECTED[:2]

    run(call)
    ranges = [s.headers.get("Range", "") for s in proxy.faults.registry_requests(LAYER.digest)]
    assert sum("," in r for r in ranges) == 1  # refused once, then remembered
    assert sum("," not in r for r in ranges) == 5


def test_redirect_is_reused_and_resolved_again_when_expired(proxy: FaultProxy) -> None:
    proxy.faults.redirect_blobs = True

    async def call(client: RegistryClient) -> None:
        reader = client.blob_reader(ref(proxy), LAYER.digest)
        assert await reader.read_range(0, 10) == EXPECTED[0]
        assert await reader.read_range(0, 10) == EXPECTED[0]
        assert len(proxy.faults.registry_requests(LAYER.digest)) == 1
        proxy.faults.storage_tokens.clear()  # the pre-signed URL expires
        assert await reader.read_ranges(WANTED) == EXPECTED
        assert len(proxy.faults.registry_requests(LAYER.digest)) == 2
        assert await client.get_blob(ref(proxy), LAYER.digest) == LAYER.data

    run(call)
    storage = [s for s in proxy.faults.seen if s.path.startswith("/storage/")]
    assert all("Authorization" not in s.headers for s in storage)
    assert len(storage) == 5  # 2 reads, 1 expired, 1 after re-resolving, 1 whole blob


def test_429_honours_retry_after(proxy: FaultProxy) -> None:
    proxy.faults.fail_next = [429]
    proxy.faults.retry_after = "1"
    began = time.monotonic()
    assert read(proxy) == EXPECTED
    assert time.monotonic() - began >= 1.0


def test_5xx_burst_then_success_and_bounded_give_up(proxy: FaultProxy) -> None:
    proxy.faults.fail_next = [500, 502, 503]
    assert read(proxy) == EXPECTED
    proxy.faults.fail_next = [503] * 20
    with pytest.raises(RegistryUnavailableError, match="gave up after 4 attempts"):
        read(proxy)


def test_connection_resets_are_retried(proxy: FaultProxy) -> None:
    proxy.faults.reset_next = 2
    assert read(proxy) == EXPECTED


def test_bearer_tokens_per_scope_reused(proxy: FaultProxy) -> None:
    proxy.faults.require_bearer = True
    target = f"{proxy.host}/faults/copy:v1"

    async def call(client: RegistryClient) -> None:
        await push_image(client, target, IMAGE)
        image = await client.get_image(target)
        reader = client.blob_reader(target, image.manifest.layers[1].digest)
        for _ in range(3):
            assert await reader.read_ranges(WANTED) == EXPECTED

    run(call)
    scopes = proxy.faults.token_scopes
    assert ["repository:faults/copy:pull,push"] in scopes
    assert ["repository:faults/copy:pull"] in scopes
    assert len(scopes) == 2
    unauthorized = [s for s in proxy.faults.seen if "Authorization" not in s.headers]
    assert len(unauthorized) <= 3  # the first challenge (+ token requests), not one per request


def test_hosts_toml_mirror_pulls_blobs_and_origin_resolves(
    proxy: FaultProxy, registry: LocalRegistry, tmp_path: Path
) -> None:
    hosts = tmp_path / "certs.d" / registry.host
    hosts.mkdir(parents=True)
    (hosts / "hosts.toml").write_text(
        f'server = "http://{registry.host}"\n'
        f'[host."http://{proxy.host}"]\n  capabilities = ["pull"]\n'
    )

    async def main() -> list[bytes]:
        async with RegistryClient(
            hosts_dir=tmp_path / "certs.d", credentials=CredentialStore(), retry=FAST_RETRY
        ) as client:
            image = await client.get_image(f"{registry.host}/faults/model:v1")
            digest = image.manifest.layers[1].digest
            return await client.blob_reader(image.reference, digest).read_ranges(WANTED)

    assert trio.run(main) == EXPECTED
    mirrored = proxy.faults.registry_requests()
    assert mirrored and all(f"ns={quote(registry.host)}" in s.path for s in mirrored)
    assert all("/manifests/v1" not in s.path for s in mirrored)
