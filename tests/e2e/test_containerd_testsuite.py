"""containerd 1.6's own snapshotter conformance suite against `lazy2dfs serve`.

The Go side (tests/conformance/containerd_suite_test.go) imports `snapshots/testsuite` from
Debian's golang-github-containerd-containerd-dev and talks to a fresh daemon per test through
containerd's proxy client, as containerd does for a `[proxy_plugins]` snapshotter. This wrapper
compiles it offline (GOPATH mode, outputs in a temp dir), runs it as root under `go tool
test2json`, and requires every named upstream test to pass. Afterwards no mount may be left
under its temp root and no daemon may be left running.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack.go import GOCODE, go_env
from devstack.mounts import detach_under, mounts_under

REPO = Path(__file__).resolve().parents[2]
SUITE_DIR = REPO / "tests" / "conformance"
UPSTREAM_SUITE = GOCODE / "src/github.com/containerd/containerd/snapshots/testsuite"
PARENT_TEST = "TestLazy2dfsConformance"

# Every test of containerd 1.6's SnapshotterSuite, by the name it is asked for under and the
# name upstream gives its subtest (upstream misspells some: StatComitted, PreareViewFailingtest).
REQUIRED: dict[str, str] = {
    "Basic": "Basic",
    "StatActive": "StatActive",
    "StatCommitted": "StatComitted",
    "Transitivity": "TransitivityTest",
    "PrepareView": "PreareViewFailingtest",
    "Update": "Update",
    "Remove": "Remove",
    "Walk": "Walk",
    "LayerFileupdate": "LayerFileupdate",
    "RemoveDirectoryInLowerLayer": "RemoveDirectoryInLowerLayer",
    "Chown": "Chown",
    "DirectoryPermissionOnCommit": "DirectoryPermissionOnCommit",
    "RemoveIntermediateSnapshot": "RemoveIntermediateSnapshot",
    "DeletedFilesInChildSnapshot": "DeletedFilesInChildSnapshot",
    "MoveFileFromLowerLayer": "MoveFileFromLowerLayer",
    "ViewReadonly": "ViewReadonly",
    "StatInWalk": "StatInWalk",
    "CloseTwice": "CloseTwice",
    "RootPermission": "RootPermission",
    "128LayersMount": "128LayersMount",
}
# Upstream skips Rename unconditionally in 1.6 ("still fails on some kernels with overlay").
UPSTREAM_SKIPS = {"Rename"}

BUILD_TIMEOUT_S = 600.0
SUITE_TIMEOUT = "5m"  # the Go binary's own -test.timeout: it panics with stacks when exceeded
RUN_TIMEOUT_S = 420.0  # our backstop above it
DEPS_HINT = "run `make deps` (installs golang-go and golang-github-containerd-containerd-dev)"


@dataclass
class GoSuite:
    """The compiled suite, or why there is none (reported by the test as its failure)."""

    go: str = ""
    binary: Path = Path()
    env: dict[str, str] = field(default_factory=dict)
    error: str = ""


def _build(out: Path) -> GoSuite:
    go = shutil.which("go")
    if go is None:
        return GoSuite(error=f"`go` is not installed: {DEPS_HINT}")
    if not UPSTREAM_SUITE.is_dir():
        return GoSuite(error=f"{UPSTREAM_SUITE} is missing: {DEPS_HINT}")
    gopath = out / "gopath"
    gopath.mkdir()
    env = go_env(gopath)
    binary = out / "conformance.test"
    try:
        built = subprocess.run(
            [go, "test", "-c", "-o", str(binary), "."],
            cwd=SUITE_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return GoSuite(error=f"`go test -c` took over {BUILD_TIMEOUT_S:.0f}s")
    if built.returncode != 0 or not binary.is_file():
        return GoSuite(
            error=f"`go test -c` in {SUITE_DIR} failed ({built.returncode}); if a package is "
            f"missing, {DEPS_HINT}\n{built.stdout}{built.stderr}"
        )
    return GoSuite(go=go, binary=binary, env=env)


@pytest.fixture(scope="session")
def go_suite(tmp_path_factory: pytest.TempPathFactory) -> GoSuite:
    """Compiled once per session, into pytest's temp dir (GOCACHE under /tmp)."""
    return _build(tmp_path_factory.mktemp("containerd-conformance"))


def _lazy2dfs_bin() -> Path:
    configured = os.environ.get("CONFORMANCE_LAZY2DFS_BIN")
    if configured:
        return Path(configured)
    beside = Path(sys.executable).parent / "lazy2dfs"
    if beside.exists():
        return beside
    found = shutil.which("lazy2dfs")
    if found is None:
        pytest.fail(
            f"no lazy2dfs executable (set CONFORMANCE_LAZY2DFS_BIN or {DEPS_HINT})", pytrace=False
        )
    return Path(found)


# --- what the run leaves behind -------------------------------------------------------------


def processes_mentioning(marker: str) -> list[int]:
    """Pids (other than ours) whose command line contains `marker`: the daemons this run started
    carry its unique temp root in their arguments."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            pids.append(int(entry.name))
    return pids


def clean_up(root: Path, keep_logs: bool) -> list[str]:
    """Kills daemons and detaches mounts the run left under `root`, then deletes it (all but
    the daemon logs when `keep_logs`); returns what it found."""
    problems = []
    stray = processes_mentioning(str(root))
    for pid in stray:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if stray:
        problems.append(f"processes still running after the suite (killed): {stray}")
        time.sleep(0.5)  # let the kernel tear down what they held (FUSE connections)
    left = [mount.mount_point for mount in mounts_under(root)]
    if left:
        problems.append(f"mounts left under {root} (detached now): {left}")
        failed = detach_under(root)
        if failed:
            problems.append(f"could not unmount: {failed}")
    if mounts_under(root):
        # Never delete through a mount point.
        problems.append(f"{root} kept: still has mounts")
    elif keep_logs:
        shutil.rmtree(root / "tmp", ignore_errors=True)
        problems.append(f"daemon logs kept in {root / 'logs'}")
    else:
        shutil.rmtree(root, ignore_errors=True)
    return problems


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    action: str = "run"  # run (never finished), pass, fail, skip
    output: list[str] = field(default_factory=list)
    elapsed: float = 0.0


def parse_test2json(lines: list[str]) -> tuple[dict[str, Outcome], list[str]]:
    """Subtest outcomes by short name, and output no test claims (panics, build trouble)."""
    outcomes: dict[str, Outcome] = {}
    loose: list[str] = []
    for line in lines:
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            loose.append(line)
            continue
        test = event.get("Test", "")
        action = event.get("Action", "")
        if not test.startswith(PARENT_TEST + "/"):
            if action == "output":
                loose.append(event.get("Output", "").rstrip("\n"))
            continue
        outcome = outcomes.setdefault(test.removeprefix(PARENT_TEST + "/"), Outcome())
        if action == "output":
            outcome.output.append(event.get("Output", "").rstrip("\n"))
        elif action in ("pass", "fail", "skip"):
            outcome.action = action
            outcome.elapsed = float(event.get("Elapsed", 0.0))
    return outcomes, loose


def _daemon_logs(outcome: Outcome, limit: int = 3000) -> str:
    """Tails of the daemon logs a test names, unless its own output already shows them."""
    parts = []
    shown = "\n".join(outcome.output)
    for line in outcome.output:
        marker = line.find(" log=")
        if "lazy2dfs daemon pid=" not in line or marker < 0:
            continue
        path = Path(line[marker + len(" log=") :].split('"', 1)[0].strip())
        if f"tail of {path}" in shown:
            continue
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        parts.append(f"    --- {path.name} (last {limit} chars) ---\n{text[-limit:]}")
    return "\n".join(parts)


def _describe_failure(name: str, outcome: Outcome) -> str:
    body = "\n".join(
        line
        for line in outcome.output
        if not line.startswith(("=== RUN", "=== PAUSE", "=== CONT"))
        and "lazy2dfs daemon pid=" not in line
    )
    return f"{name}: {outcome.action.upper()}\n{body[-6000:]}\n{_daemon_logs(outcome)}"


def test_containerd_snapshotter_suite(go_suite: GoSuite) -> None:
    if go_suite.error:
        pytest.fail(go_suite.error, pytrace=False)
    if os.geteuid() != 0:
        pytest.fail("the containerd snapshotter suite mounts and chowns: run it as root")
    bin_path = _lazy2dfs_bin()
    # Short, so that <root>/tmp/snapshot-suite-lazy2dfs-<n>/root/lazy2dfs.sock fits a socket.
    root = Path(tempfile.mkdtemp(prefix="l2c-", dir="/tmp"))
    problems = ["the suite did not finish"]
    try:
        problems = _run_suite(go_suite, bin_path, root)
    finally:
        problems += clean_up(root, keep_logs=bool(problems))
    if problems:
        pytest.fail(
            f"{len(problems)} problem(s) in containerd's snapshotter suite\n\n"
            + "\n\n".join(problems),
            pytrace=False,
        )


def _run_suite(go_suite: GoSuite, bin_path: Path, root: Path) -> list[str]:
    tmp = root / "tmp"
    logs = root / "logs"
    tmp.mkdir()
    logs.mkdir()
    env = dict(go_suite.env)
    env.update(
        TMPDIR=str(tmp),  # the suite's per-test dirs, hence the daemons' roots and sockets
        CONFORMANCE_LAZY2DFS_BIN=str(bin_path),
        CONFORMANCE_LOGDIR=str(logs),
    )
    cmd = [
        go_suite.go,
        "tool",
        "test2json",
        "-t",
        "-p",
        "conformance",
        str(go_suite.binary),
        "-test.v",
        "-test.count=1",
        f"-test.timeout={SUITE_TIMEOUT}",
        f"-test.run=^{PARENT_TEST}$",
    ]
    proc = subprocess.Popen(
        cmd,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, _ = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, _ = proc.communicate()

    outcomes, loose = parse_test2json(stdout.splitlines())
    summary = ", ".join(f"{n}={o.action}({o.elapsed:.1f}s)" for n, o in sorted(outcomes.items()))
    print(f"containerd snapshotter suite: {summary}")

    problems = []
    if timed_out:
        problems.append(f"the suite ran over {RUN_TIMEOUT_S:.0f}s and was killed")
    for asked, upstream in REQUIRED.items():
        outcome = outcomes.get(upstream)
        if outcome is None:
            problems.append(f"{asked} ({upstream}): did not run")
        elif outcome.action != "pass":
            label = asked if asked == upstream else f"{asked} ({upstream})"
            problems.append(_describe_failure(label, outcome))
    expected = set(REQUIRED.values()) | UPSTREAM_SKIPS
    for name, outcome in sorted(outcomes.items()):
        if name not in expected and outcome.action not in ("pass", "skip"):
            problems.append(_describe_failure(name, outcome))
    if proc.returncode != 0 and not problems:
        problems.append(f"the suite exited {proc.returncode}")
    if problems:
        tail = "\n".join(loose[-60:])
        problems.append(f"--- output outside any subtest (tail) ---\n{tail}")
    return problems
