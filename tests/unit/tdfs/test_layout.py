import hashlib
import json
import tarfile
from pathlib import Path

from lazy2dfs.registry_client import OCI_INDEX, parse_reference, sha256_digest
from lazy2dfs.tdfs.layout import write_oci_layout


def test_layout_tar_holds_every_blob_under_its_digest(tmp_path: Path) -> None:
    on_disk = tmp_path / "blob"
    on_disk.write_bytes(b"layer bytes")
    index = b'{"schemaVersion":2,"manifests":[]}'
    blobs: dict[str, bytes | Path] = {
        sha256_digest(b"config"): b"config",
        sha256_digest(b"layer bytes"): on_disk,
    }
    out = tmp_path / "image.tar"
    reference = parse_reference("127.0.0.1:5000/models/m:v1")
    write_oci_layout(out, reference, index, blobs)
    write_oci_layout(tmp_path / "again.tar", reference, index, blobs)
    assert out.read_bytes() == (tmp_path / "again.tar").read_bytes()
    assert not (tmp_path / "image.tar.partial").exists()

    with tarfile.open(out) as archive:
        files = {
            m.name: archive.extractfile(m).read()  # type: ignore[union-attr]
            for m in archive.getmembers()
            if m.isfile()
        }
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    top = json.loads(files["index.json"])
    (entry,) = top["manifests"]
    assert entry["mediaType"] == OCI_INDEX and entry["size"] == len(index)
    assert entry["annotations"] == {
        "io.containerd.image.name": "127.0.0.1:5000/models/m:v1",
        "org.opencontainers.image.ref.name": "v1",
    }
    blob_files = {name: data for name, data in files.items() if name.startswith("blobs/")}
    assert len(blob_files) == 3
    for name, data in blob_files.items():
        assert name == "blobs/sha256/" + hashlib.sha256(data).hexdigest()
    assert files["blobs/sha256/" + entry["digest"][7:]] == index
