"""How the snapshotter locates the layers of a CRI pull, whose labels name only the image, the
layer and the manifest digest: the manifest and config are fetched once for the whole image
(containerd prepares its layers one after another), the later layers come back ready to open
ahead, and what was fetched for one repository never stands in for another."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator

import pytest
import trio

from devstack.images import Blob, BuiltImage, build_image, build_layer
from devstack.registry import LocalRegistry, Served
from lazy2dfs.digest import chain_ids
from lazy2dfs.estargz import TOC_DIGEST_ANNOTATION, WriterOptions
from lazy2dfs.layers.locator import Located, RegistryLocator
from lazy2dfs.registry_client import CredentialStore, RegistryClient
from lazy2dfs.snapshotter.labels import LayerRequest
from lazy2dfs.snapshotter.remote import NotLazyError
from lazy2dfs.tdfs.field import FIELD_MEDIA_TYPE

IMAGE = build_image(
    [
        build_layer({f"model/shard{i}.bin": os.urandom(50_000)}, estargz=WriterOptions())
        for i in range(3)
    ]
)
CHAINS = chain_ids([layer.diff_id for layer in IMAGE.layers])


def field_first(image: BuiltImage) -> BuiltImage:
    """``image`` with a 2DFS field descriptor listed before its layers (the config's diff IDs
    list the layers only)."""
    with_field = build_image(image.layers, extra=[Blob(FIELD_MEDIA_TYPE, b"{}")])
    document = json.loads(with_field.manifest.data)
    document["layers"].insert(0, document["layers"].pop())
    manifest = Blob(with_field.manifest.media_type, json.dumps(document).encode())
    return dataclasses.replace(with_field, manifest=manifest)


FIELD_FIRST = field_first(IMAGE)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("locator")) as running:
        running.push("models/m:v1", IMAGE)
        running.push("models/fielded:v1", FIELD_FIRST)
        yield running


def cri_request(
    registry: LocalRegistry, image: BuiltImage, position: int, repo: str
) -> LayerRequest:
    """A layer as CRI's labels name it."""
    return LayerRequest(
        chain_id=CHAINS[position],
        reference=f"{registry.host}/{repo}:v1",
        layer_digest=image.layers[position].blob.digest,
        manifest_digest=image.manifest.digest,
    )


def locate_all(requests: list[LayerRequest]) -> list[Located | NotLazyError]:
    """Each request located in turn by one locator, as the daemon's Prepares are."""

    async def main() -> list[Located | NotLazyError]:
        found: list[Located | NotLazyError] = []
        async with RegistryClient(credentials=CredentialStore()) as client:
            locator = RegistryLocator(client)
            for request in requests:
                try:
                    found.append(await locator.locate(request))
                except NotLazyError as exc:
                    found.append(exc)
        return found

    return trio.run(main)


def test_an_images_layers_cost_one_manifest_and_one_config_fetch(registry: LocalRegistry) -> None:
    served = Served(registry)
    found = locate_all([cri_request(registry, IMAGE, i, "models/m") for i in range(3)])
    documents = {IMAGE.manifest.digest, IMAGE.config.digest}
    fetched = [r.path.rsplit("/", 1)[-1] for r in served.requests() if r.method == "GET"]
    assert sorted(fetched) == sorted(documents)
    assert all(isinstance(f, Located) for f in found)


def test_the_first_layer_names_the_later_ones_with_what_vouches_for_them(
    registry: LocalRegistry,
) -> None:
    (first,) = locate_all([cri_request(registry, IMAGE, 0, "models/m")])
    assert isinstance(first, Located)
    pinned = f"{registry.host}/models/m:v1@{IMAGE.manifest.digest}"
    assert list(first.later) == [
        LayerRequest(
            chain_id=CHAINS[i],
            reference=pinned,
            layer_digest=layer.blob.digest,
            manifest_digest=IMAGE.manifest.digest,
            toc_digest=(layer.blob.annotations or {})[TOC_DIGEST_ANNOTATION],
            layer_size=len(layer.blob.data),
            diff_id=layer.diff_id,
        )
        for i, layer in enumerate(IMAGE.layers)
        if i > 0
    ]


def test_a_manifest_seen_in_one_repository_is_not_taken_for_another(
    registry: LocalRegistry,
) -> None:
    """The digest is the same; the other repository does not hold it: refused, not served
    from what the first repository gave."""
    found = locate_all(
        [cri_request(registry, IMAGE, 0, "models/m"), cri_request(registry, IMAGE, 1, "other/m")]
    )
    assert isinstance(found[0], Located)
    assert isinstance(found[1], NotLazyError) and found[1].reason == "no-manifest"


def test_a_field_descriptor_before_the_layers_shifts_no_layer_off_its_diff_id(
    registry: LocalRegistry,
) -> None:
    found = locate_all([cri_request(registry, FIELD_FIRST, i, "models/fielded") for i in range(3)])
    assert [f.diff_id if isinstance(f, Located) else f for f in found] == [
        layer.diff_id for layer in IMAGE.layers
    ]
    assert isinstance(found[0], Located)
    assert [r.layer_digest for r in found[0].later] == [
        layer.blob.digest for layer in IMAGE.layers[1:]
    ]
