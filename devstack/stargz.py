"""Upstream's stargz snapshotter (Debian's 0.12 sources), built offline and run on loopback,
for the interop test and for benchmarks that compare lazy2dfs with it.

Debian's stargz-snapshotter package ships ``ctr-remote`` only, not ``containerd-stargz-grpc``;
its library is in golang-github-containerd-stargz-snapshotter-dev, so a small daemon
(upstream's filesystem and snapshotter packages behind containerd's snapshot service, as
upstream's own main does) is compiled against it in GOPATH mode, without the network.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from types import TracebackType

from devstack.go import GOCODE, go_env
from devstack.mounts import detach_under
from devstack.process import ChildProcess
from lazy2dfs.errors import UnavailableError

STARGZ_SRC = GOCODE / "src/github.com/containerd/stargz-snapshotter"
BUILD_TIMEOUT = 600.0
START_TIMEOUT = 30.0
DEPS_HINT = "run `make deps`"

# containerd-stargz-grpc in miniature: upstream's stargz filesystem and snapshotter, served
# with containerd's snapshot service on a unix socket. Registries are reached over plain HTTP
# without credentials (the registries here are on 127.0.0.1). A layer's source comes from the
# labels CRI passes (image reference, layer digest, the image's layers), as upstream's service
# package reads them (that package needs cri-api, which Debian does not package), else from
# ctr-remote's. SIGTERM closes the snapshotter, which unmounts its layers.
STARGZ_MAIN = """\
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/contrib/snapshotservice"
	"github.com/containerd/containerd/reference"
	"github.com/containerd/containerd/remotes/docker"
	stargzfs "github.com/containerd/stargz-snapshotter/fs"
	"github.com/containerd/stargz-snapshotter/fs/config"
	"github.com/containerd/stargz-snapshotter/fs/layer"
	"github.com/containerd/stargz-snapshotter/fs/source"
	snbase "github.com/containerd/stargz-snapshotter/snapshot"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/pelletier/go-toml"
	"google.golang.org/grpc"
)

func hosts(ref reference.Spec) ([]docker.RegistryHost, error) {
	// Upstream's fetcher calls Client.Transport directly: it must not be nil.
	client := &http.Client{Transport: http.DefaultTransport, Timeout: 30 * time.Second}
	return []docker.RegistryHost{{
		Client:       client,
		Host:         ref.Hostname(),
		Scheme:       "http",
		Path:         "/v2",
		Capabilities: docker.HostCapabilityPull | docker.HostCapabilityResolve,
		Authorizer:   docker.NewDockerAuthorizer(docker.WithAuthClient(client)),
	}}, nil
}

// fromCRILabels: the image reference and layer digests CRI passes with each layer it unpacks
// (disable_snapshot_annotations = false); the layer first, then the image's others.
func fromCRILabels(hosts source.RegistryHosts) source.GetSources {
	return func(labels map[string]string) ([]source.Source, error) {
		ref, err := reference.Parse(labels["containerd.io/snapshot/cri.image-ref"])
		if err != nil {
			return nil, err
		}
		target, err := digest.Parse(labels["containerd.io/snapshot/cri.layer-digest"])
		if err != nil {
			return nil, err
		}
		layers := []ocispec.Descriptor{{Digest: target}}
		others := labels["containerd.io/snapshot/cri.image-layers"]
		for _, other := range strings.Split(others, ",") {
			if d, err := digest.Parse(other); err == nil && d != target {
				layers = append(layers, ocispec.Descriptor{Digest: d})
			}
		}
		return []source.Source{{Hosts: hosts, Name: ref, Target: layers[0],
			Manifest: ocispec.Manifest{Layers: layers}}}, nil
	}
}

// firstOf: the sources of the first way that yields them.
func firstOf(ways ...source.GetSources) source.GetSources {
	return func(labels map[string]string) ([]source.Source, error) {
		var last error
		for _, way := range ways {
			found, err := way(labels)
			if err == nil {
				return found, nil
			}
			last = err
		}
		return nil, last
	}
}

func main() {
	root := flag.String("root", "", "state directory")
	address := flag.String("address", "", "gRPC unix socket")
	configPath := flag.String("config", "", "TOML (upstream fs/config.Config)")
	flag.Parse()
	var cfg config.Config
	tree, err := toml.LoadFile(*configPath)
	if err != nil {
		log.Fatalf("config: %v", err)
	}
	if err := tree.Unmarshal(&cfg); err != nil {
		log.Fatalf("config: %v", err)
	}
	ctx := context.Background()
	fs, err := stargzfs.NewFilesystem(filepath.Join(*root, "stargz"), cfg,
		stargzfs.WithGetSources(firstOf(fromCRILabels(hosts), source.FromDefaultLabels(hosts))),
		stargzfs.WithOverlayOpaqueType(layer.OverlayOpaqueTrusted))
	if err != nil {
		log.Fatalf("filesystem: %v", err)
	}
	sn, err := snbase.NewSnapshotter(ctx, filepath.Join(*root, "snapshotter"), fs,
		snbase.AsynchronousRemove)
	if err != nil {
		log.Fatalf("snapshotter: %v", err)
	}
	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	listener, err := net.Listen("unix", *address)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	go rpc.Serve(listener)
	log.Printf("serving on %s", *address)
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	<-signals
	rpc.Stop()
	if err := sn.Close(); err != nil {
		log.Printf("close: %v", err)
	}
	log.Printf("stopped")
}
"""


def build_stargz_daemon(out: Path) -> Path:
    """Compiles the daemon above into ``out/stargz-grpc``, offline (a shared Go build cache
    makes a second build take a second)."""
    if shutil.which("go") is None:
        raise UnavailableError(f"go is missing (golang-go): {DEPS_HINT}")
    if not (STARGZ_SRC / "snapshot").is_dir():
        raise UnavailableError(
            f"{STARGZ_SRC} is missing (golang-github-containerd-stargz-snapshotter-dev): "
            + DEPS_HINT
        )
    package = out / "gopath/src/lazy2dfs-stargz"
    package.mkdir(parents=True, exist_ok=True)
    (package / "main.go").write_text(STARGZ_MAIN)
    binary = out / "stargz-grpc"
    done = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=package,
        env=go_env(out / "gopath"),
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
    )
    if done.returncode != 0:
        raise UnavailableError(f"building the stargz daemon failed:\n{done.stderr}")
    return binary


class LocalStargz:
    """The daemon ``build_stargz_daemon`` made, on ``workdir/root`` and ``workdir/stargz.sock``
    with ``config`` (upstream's TOML; empty: upstream's defaults); on exit it is stopped and
    whatever it left mounted under ``workdir`` is detached."""

    def __init__(self, binary: Path, workdir: Path, config: str = "") -> None:
        self.binary = binary
        self.workdir = workdir
        self.root = workdir / "root"
        self.address = workdir / "stargz.sock"
        self.config = config
        self.process: ChildProcess | None = None

    def __enter__(self) -> LocalStargz:
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.toml"
        config.write_text(self.config)
        argv = [str(self.binary), "--root", str(self.root), "--address", str(self.address)]
        self.process = ChildProcess(
            "stargz-grpc", [*argv, "--config", str(config)], self.workdir / "stargz.log"
        )
        try:
            self.process.wait_until(self.address.exists, START_TIMEOUT, "serving")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None
        detach_under(self.workdir)
