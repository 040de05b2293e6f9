"""The CRI calls kubelet makes to run a pod, made on containerd's socket: no kubelet, crictl
or k3s is packaged for this machine, so the tests and the demo make them themselves.

What a pod with image volumes (KEP-4639, beta and on by default since Kubernetes 1.35) costs
in CRI calls, in kubelet's order:

1. ``RuntimeService/RunPodSandbox`` (containerd pulls its sandbox image itself), then
   ``PodSandboxStatus``;
2. for each image volume, ``ImageService/ImageStatus`` and, if the image is missing (pull
   policy ``IfNotPresent``), ``PullImage`` with the pod's sandbox config; the ``image_ref`` it
   answers is what the volume's mount names;
3. for each container, the same for its image, then ``CreateContainer`` with a ``Mount`` per
   image volume (``image`` set, ``host_path`` empty, ``readonly`` true: CRI refuses anything
   else) and ``StartContainer``; ``ContainerStatus`` while it runs;
4. at deletion, ``StopContainer``, ``StopPodSandbox`` (containerd unmounts and removes the
   image volumes' snapshots here), ``RemoveContainer``, ``RemovePodSandbox``.

Pods run on the host's network (``hostNetwork: true``), which needs no CNI plugin. Container
output is in the CRI log files under the pod's log directory, as kubelet reads them.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import grpc

from devstack.images import BuiltImage, build_image
from devstack.model import runtime_tree
from lazy2dfs.api import cri_pb2, cri_pb2_grpc
from lazy2dfs.errors import UnavailableError

PULL_TIMEOUT = 300.0
CALL_TIMEOUT = 120.0
EXIT_TIMEOUT = 120.0
STOP_GRACE_SECONDS = 10
# kubelet's labels on sandboxes and containers (pkg/kubelet/types): how a pod's parts are found.
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
POD_UID = "io.kubernetes.pod.uid"
CONTAINER_NAME = "io.kubernetes.container.name"


def pause_image() -> BuiltImage:
    """A sandbox ("pause") image from the static busybox: it only has to stay up, and sleeps."""
    return build_image([runtime_tree()], config={"Entrypoint": ["/bin/sleep", "2147483647"]})


def _pod_labels(pod: Pod) -> dict[str, str]:
    return {POD_NAME: pod.name, POD_NAMESPACE: pod.namespace, POD_UID: pod.uid}


@dataclass(frozen=True)
class ImageVolume:
    """``volumes: - name: NAME  image: {reference: REFERENCE}`` of a pod spec."""

    name: str
    reference: str


@dataclass(frozen=True)
class VolumeMount:
    name: str
    mount_path: str
    sub_path: str = ""


@dataclass(frozen=True)
class Container:
    name: str
    image: str
    command: Sequence[str]
    volume_mounts: Sequence[VolumeMount] = ()


@dataclass(frozen=True)
class Pod:
    name: str
    containers: Sequence[Container]
    volumes: Sequence[ImageVolume] = ()
    namespace: str = "default"
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass
class RunningPod:
    pod: Pod
    sandbox_id: str
    sandbox_config: cri_pb2.PodSandboxConfig
    log_directory: Path
    image_refs: dict[str, str]  # volume name → the image_ref PullImage answered
    container_ids: dict[str, str] = field(default_factory=dict)  # container name → ID


class Kubelet:
    """CRI calls on ``address`` (containerd's socket), as kubelet makes them; pods' logs go
    under ``log_root`` (kubelet's /var/log/pods)."""

    def __init__(self, address: Path, log_root: Path) -> None:
        self.address = address
        self.log_root = log_root
        self._channel = grpc.insecure_channel(f"unix:{address}")
        self.runtime = cri_pb2_grpc.RuntimeServiceStub(self._channel)
        self.images = cri_pb2_grpc.ImageServiceStub(self._channel)

    def version(self) -> cri_pb2.VersionResponse:
        response: cri_pb2.VersionResponse = self.runtime.Version(
            cri_pb2.VersionRequest(version="v1"), timeout=CALL_TIMEOUT
        )
        return response

    def pull_image(self, ref: str, sandbox: cri_pb2.PodSandboxConfig | None = None) -> str:
        """PullImage; answers the image_ref (for containerd, the image ID: its config digest).
        Without ``sandbox``, as ``crictl pull`` makes it."""
        request = cri_pb2.PullImageRequest(image=cri_pb2.ImageSpec(image=ref))
        if sandbox is not None:
            request.sandbox_config.CopyFrom(sandbox)
        response: cri_pb2.PullImageResponse = self.images.PullImage(request, timeout=PULL_TIMEOUT)
        return response.image_ref

    def image_status(self, ref: str) -> cri_pb2.Image | None:
        response: cri_pb2.ImageStatusResponse = self.images.ImageStatus(
            cri_pb2.ImageStatusRequest(image=cri_pb2.ImageSpec(image=ref)), timeout=CALL_TIMEOUT
        )
        return response.image if response.HasField("image") else None

    def ensure_image(self, ref: str, sandbox: cri_pb2.PodSandboxConfig) -> str:
        """Pull policy ``IfNotPresent``: the image's ID if the runtime has it, else a pull."""
        present = self.image_status(ref)
        return present.id if present is not None else self.pull_image(ref, sandbox)

    def sandbox_config(self, pod: Pod) -> cri_pb2.PodSandboxConfig:
        """For a ``hostNetwork`` pod: the node's network, IPC per pod, PID per container, and
        no hostname (kubelet sets one only for pods with their own network namespace)."""
        host = cri_pb2.NamespaceOption(network=cri_pb2.NODE, pid=cri_pb2.CONTAINER, ipc=cri_pb2.POD)
        return cri_pb2.PodSandboxConfig(
            metadata=cri_pb2.PodSandboxMetadata(
                name=pod.name, uid=pod.uid, namespace=pod.namespace, attempt=0
            ),
            log_directory=str(self.log_root / f"{pod.namespace}_{pod.name}_{pod.uid}"),
            labels=_pod_labels(pod),
            annotations={"kubernetes.io/config.source": "api"},
            linux=cri_pb2.LinuxPodSandboxConfig(
                security_context=cri_pb2.LinuxSandboxSecurityContext(namespace_options=host)
            ),
        )

    def run_pod(self, pod: Pod) -> RunningPod:
        """Steps 1 to 3 above. On failure, what was started is stopped and removed."""
        sandbox = self.sandbox_config(pod)
        Path(sandbox.log_directory).mkdir(parents=True, exist_ok=True)
        response: cri_pb2.RunPodSandboxResponse = self.runtime.RunPodSandbox(
            cri_pb2.RunPodSandboxRequest(config=sandbox), timeout=PULL_TIMEOUT
        )
        running = RunningPod(pod, response.pod_sandbox_id, sandbox, Path(sandbox.log_directory), {})
        try:
            state = self.sandbox_status(running.sandbox_id).state
            if state != cri_pb2.SANDBOX_READY:
                raise UnavailableError(f"pod {pod.name}: sandbox not ready ({state})")
            for volume in pod.volumes:
                running.image_refs[volume.name] = self.ensure_image(volume.reference, sandbox)
            for container in pod.containers:
                image_ref = self.ensure_image(container.image, sandbox)
                running.container_ids[container.name] = self._start(running, container, image_ref)
        except BaseException as failure:
            try:
                self.remove_pod(running)
            except grpc.RpcError as cleanup:
                failure.add_note(f"removing pod {pod.name} failed too: {cleanup}")
            raise
        return running

    def _start(self, running: RunningPod, container: Container, image_ref: str) -> str:
        pod = running.pod
        mounts = [
            cri_pb2.Mount(
                container_path=mount.mount_path,
                readonly=True,
                image=cri_pb2.ImageSpec(image=running.image_refs[mount.name]),
                image_sub_path=mount.sub_path,
            )
            for mount in container.volume_mounts
        ]
        labels = {CONTAINER_NAME: container.name, **_pod_labels(pod)}
        config = cri_pb2.ContainerConfig(
            metadata=cri_pb2.ContainerMetadata(name=container.name, attempt=0),
            image=cri_pb2.ImageSpec(image=image_ref, user_specified_image=container.image),
            command=list(container.command),
            mounts=mounts,
            labels=labels,
            annotations={"io.kubernetes.container.restartCount": "0"},
            log_path=f"{container.name}/0.log",
            linux=cri_pb2.LinuxContainerConfig(
                security_context=cri_pb2.LinuxContainerSecurityContext(
                    namespace_options=running.sandbox_config.linux.security_context.namespace_options
                )
            ),
        )
        created: cri_pb2.CreateContainerResponse = self.runtime.CreateContainer(
            cri_pb2.CreateContainerRequest(
                pod_sandbox_id=running.sandbox_id,
                config=config,
                sandbox_config=running.sandbox_config,
            ),
            timeout=PULL_TIMEOUT,
        )
        self.runtime.StartContainer(
            cri_pb2.StartContainerRequest(container_id=created.container_id), timeout=CALL_TIMEOUT
        )
        return created.container_id

    def sandbox_status(self, sandbox_id: str) -> cri_pb2.PodSandboxStatus:
        response: cri_pb2.PodSandboxStatusResponse = self.runtime.PodSandboxStatus(
            cri_pb2.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id), timeout=CALL_TIMEOUT
        )
        return response.status

    def container_status(self, container_id: str) -> cri_pb2.ContainerStatus:
        response: cri_pb2.ContainerStatusResponse = self.runtime.ContainerStatus(
            cri_pb2.ContainerStatusRequest(container_id=container_id), timeout=CALL_TIMEOUT
        )
        return response.status

    def wait_exited(self, running: RunningPod, name: str) -> cri_pb2.ContainerStatus:
        """Polls ContainerStatus, as kubelet's pod workers do, until the container exited."""
        deadline = time.monotonic() + EXIT_TIMEOUT
        while True:
            status = self.container_status(running.container_ids[name])
            if status.state == cri_pb2.CONTAINER_EXITED:
                return status
            if time.monotonic() > deadline:
                raise UnavailableError(f"container {name} still running after {EXIT_TIMEOUT}s")
            time.sleep(0.1)

    def logs(self, running: RunningPod, name: str) -> str:
        """The container's output, from its CRI log file (lines ``TIME STREAM TAG TEXT``;
        tag ``P`` marks a line the runtime split, ``F`` its end)."""
        path = running.log_directory / f"{name}/0.log"
        text = []
        for line in path.read_text(errors="replace").splitlines():
            _, _, tag, content = [*line.split(" ", 3), ""][:4]
            text.append(content if tag == "P" else content + "\n")
        return "".join(text)

    def remove_pod(self, running: RunningPod) -> None:
        """Step 4: stops and removes the containers and the sandbox; each call is made even if
        an earlier one failed, and the first failure is raised at the end."""
        failures: list[grpc.RpcError] = []

        def call(method: grpc.UnaryUnaryMultiCallable, request: object) -> None:
            try:
                method(request, timeout=CALL_TIMEOUT)
            except grpc.RpcError as err:
                failures.append(err)

        ids = list(running.container_ids.values())
        for cid in ids:
            call(
                self.runtime.StopContainer,
                cri_pb2.StopContainerRequest(container_id=cid, timeout=STOP_GRACE_SECONDS),
            )
        call(
            self.runtime.StopPodSandbox,
            cri_pb2.StopPodSandboxRequest(pod_sandbox_id=running.sandbox_id),
        )
        for cid in ids:
            call(self.runtime.RemoveContainer, cri_pb2.RemoveContainerRequest(container_id=cid))
        call(
            self.runtime.RemovePodSandbox,
            cri_pb2.RemovePodSandboxRequest(pod_sandbox_id=running.sandbox_id),
        )
        if failures:
            raise failures[0]

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Kubelet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
