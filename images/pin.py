"""Pin the project's images by digest, so that what runs on a cluster is exactly what was built.

``make images`` builds and pushes the CPU and GPU images, then calls this script twice:

    python images/pin.py record images/digests.env REGISTRY/mammoflow:VERSION REGISTRY/mammoflow-gpu:VERSION
    python images/pin.py apply images/digests.env k8s/overlays/standalone k8s/overlays/multi-user

``record`` asks Docker for each pushed image's registry digest and writes ``MAMMOFLOW_IMAGE=repo@sha256:...`` and
``MAMMOFLOW_GPU_IMAGE=...`` (the variables ``mammoflow pipeline compile|submit|schedule`` read: load the file with
``set -a; . images/digests.env; set +a``). ``apply`` points the overlays' ``images:`` entries at those digests
(``newName`` + ``digest`` instead of a mutable ``newTag``). Only the standard library: it runs before any venv.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

VARIABLES = {"mammoflow/mammoflow": "MAMMOFLOW_IMAGE", "mammoflow/mammoflow-gpu": "MAMMOFLOW_GPU_IMAGE"}
PINNED = re.compile(r"(?P<repo>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})")


class PinError(Exception):
    pass


def read_digests(path: Path) -> dict[str, str]:
    """Variable -> ``repo@sha256:...`` from an env file; every variable present and pinned, or PinError."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip().strip('"')
    for variable in VARIABLES.values():
        if variable not in values:
            raise PinError(f"{path}: no {variable}=. Fix: run `make images`, which records both images")
        if not PINNED.fullmatch(values[variable]):
            raise PinError(f"{path}: {variable}={values[variable]} is not pinned by digest (repo@sha256:<64 hex>). "
                           "Fix: record the pushed images' digests with `make images`")
    return values


def record(out: Path, cpu_image: str, gpu_image: str) -> None:
    """Write the registry digests of two pushed images (``docker inspect`` RepoDigests) to ``out``."""
    lines = ["# Written by `make images` (images/pin.py): the pushed images, pinned by digest."]
    for variable, image in (("MAMMOFLOW_IMAGE", cpu_image), ("MAMMOFLOW_GPU_IMAGE", gpu_image)):
        repo = image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image
        found = subprocess.run(["docker", "inspect", "--format", "{{range .RepoDigests}}{{println .}}{{end}}", image],
                               check=True, capture_output=True, text=True).stdout.split()
        pinned = [d for d in found if d.startswith(f"{repo}@sha256:")]
        if not pinned:
            raise PinError(f"{image} has no registry digest for {repo} (was it pushed?). Fix: docker push {image}")
        lines.append(f"{variable}={pinned[0]}")
    out.write_text("\n".join(lines) + "\n")


def pin_kustomization(text: str, digests: dict[str, str]) -> str:
    """``text`` (a kustomization.yaml) with each project image entry's ``newName``/``newTag``/``digest`` replaced
    by the pinned repository and digest; comments and everything else kept as written."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    found = set()
    while i < len(lines):
        line = lines[i]
        m = re.match(r"(?P<indent>\s*)- name: (?P<name>\S+)\s*$", line)
        if m and m.group("name") in VARIABLES:
            pinned = PINNED.fullmatch(digests[VARIABLES[m.group("name")]])
            inner = " " * (len(m.group("indent")) + 2)
            out += [line, f"{inner}newName: {pinned.group('repo')}\n", f"{inner}digest: {pinned.group('digest')}\n"]
            found.add(m.group("name"))
            i += 1
            while i < len(lines) and re.match(rf"{inner}(newName|newTag|digest):", lines[i]):
                i += 1
            continue
        out.append(line)
        i += 1
    missing = set(VARIABLES) - found
    if missing:
        raise PinError(f"no images: entry for {sorted(missing)}. Fix: add `- name: mammoflow/mammoflow` (and -gpu) "
                       "under images: in the overlay's kustomization.yaml")
    return "".join(out)


def apply(digests_file: Path, overlays: list[Path]) -> None:
    digests = read_digests(digests_file)
    for overlay in overlays:
        path = overlay / "kustomization.yaml"
        path.write_text(pin_kustomization(path.read_text(), digests))
        print(f"pinned {path}")  # noqa: T201 - a command-line tool's result


def main(argv: list[str]) -> int:
    try:
        if len(argv) == 4 and argv[0] == "record":
            record(Path(argv[1]), argv[2], argv[3])
        elif len(argv) >= 2 and argv[0] == "apply":
            apply(Path(argv[1]), [Path(p) for p in argv[2:]])
        else:
            print(__doc__, file=sys.stderr)  # noqa: T201
            return 2
    except (PinError, OSError, subprocess.CalledProcessError) as exc:
        print(f"images/pin.py: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
