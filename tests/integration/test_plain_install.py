"""`pip install` of the package without extras, as a user does it, into a fresh virtualenv:
every module imports, nothing but the product is installed, and the command runs.

The tests' own environment has the dev extras (numpy, bcrypt, …), so only a separate install
shows a module that needs one of them."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL_TIMEOUT = 300.0
RUN_TIMEOUT = 60.0

# Run by the fresh virtualenv's interpreter: every module of the installed package, and the
# top-level names the distribution installs.
INSPECT = """
import importlib, importlib.metadata, json, pkgutil
import lazy2dfs

failed = {}
modules = ["lazy2dfs", *(m.name for m in pkgutil.walk_packages(lazy2dfs.__path__, "lazy2dfs."))]
for name in modules:
    if name.endswith(".__main__"):  # importing it runs the command: run below instead
        continue
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed[name] = repr(exc)
files = importlib.metadata.files("lazy2dfs") or []
print(json.dumps({
    "location": lazy2dfs.__file__,
    "modules": modules,
    "failed": failed,
    "top_level": sorted({f.parts[0] for f in files if f.parts[0] != ".."}),
}))
"""


def run(argv: list[str | Path], cwd: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # No PYTHONPATH or VIRTUAL_ENV of the test run: the checkout must not leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}:\n{done.stdout}{done.stderr}"
    return done


def source_modules(src: Path) -> list[str]:
    """Every module of the package in the checkout, by its dotted name."""
    names = []
    for path in (src / "lazy2dfs").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def test_a_plain_install_imports_every_module_and_runs(tmp_path: Path) -> None:
    # What a source distribution holds, copied: the build writes nothing into the checkout.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__")
    shutil.copytree(REPO / "src", source / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    venv = tmp_path / "venv"
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "venv", venv], tmp_path, RUN_TIMEOUT)
    run([python, "-m", "pip", "install", "--quiet", source], tmp_path, INSTALL_TIMEOUT)

    report = json.loads(run([python, "-c", INSPECT], tmp_path, RUN_TIMEOUT).stdout)
    assert report["location"].startswith(str(venv))
    assert sorted(report["modules"]) == source_modules(REPO / "src")
    assert report["failed"] == {}
    assert [name for name in report["top_level"] if not name.endswith(".dist-info")] == ["lazy2dfs"]
    commands: list[list[str | Path]] = [[venv / "bin" / "lazy2dfs"], [python, "-m", "lazy2dfs"]]
    for command in commands:
        assert run([*command, "--help"], tmp_path, RUN_TIMEOUT).stdout.startswith("usage: lazy2dfs")
