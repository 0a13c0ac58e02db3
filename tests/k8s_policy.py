"""Project rules of the k8s validator that no schema expresses: placeholders left in a tree, Ray heads exposed
beyond the cluster, Ray addresses that only resolve inside one namespace. Used by :mod:`tests.k8s_validate`.

Placeholders: the example overlays write ``PROJECT_ID``, ``REGION``, ``BUCKET``, ``REPO_URL`` and ``OWNER_EMAIL``
(k8s/README.md, "Placeholders") where a deployment's own values go. A rendered tree that still holds one fails,
unless its kustomization.yaml marks it as a documented example (annotation ``mammoflow.io/placeholders: example``);
a tree so marked must hold a placeholder, so a filled-in copy cannot keep the mark by mistake.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import yaml

PLACEHOLDERS = ("PROJECT_ID", "REGION", "BUCKET", "REPO_URL", "OWNER_EMAIL")
EXAMPLE_ANNOTATION = "mammoflow.io/placeholders"
EXAMPLE_VALUE = "example"
# A whole word: BUCKET in gs://BUCKET/x or REGION in REGION-docker.pkg.dev, not MY_BUCKET_NAME or BUCKETS.
PLACEHOLDER_PATTERN = re.compile(r"(?<![A-Za-z0-9_])(" + "|".join(PLACEHOLDERS) + r")(?![A-Za-z0-9_])")
# A Ray head Service named in an address: ray://<name>-head-svc[.<namespace>...]:10001 or http://...:8265.
RAY_ADDRESS_PATTERN = re.compile(r"\b(?:ray|https?)://([A-Za-z0-9.-]*-head-svc(?:\.[A-Za-z0-9.-]+)?)(?::\d+)?")
EXPOSED_SERVICE_TYPES = ("LoadBalancer", "NodePort")


def _strings(node: Any, path: list[Any]) -> Iterator[tuple[list[Any], str]]:
    """Every string (map keys included) in an object, with its field path."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(key, str):
                yield [*path, key], key
            yield from _strings(value, [*path, key])
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _strings(item, [*path, index])
    elif isinstance(node, str):
        yield path, node


def placeholders_in(obj: Any) -> Iterator[tuple[list[Any], str]]:
    """(field path, placeholder) for every placeholder word in the object's strings."""
    for path, text in _strings(obj, []):
        for match in PLACEHOLDER_PATTERN.finditer(text):
            yield path, match.group(1)


def is_example(kustomization_dir: Path) -> bool:
    """True when the tree's kustomization.yaml carries ``mammoflow.io/placeholders: example``."""
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        path = kustomization_dir / name
        if path.is_file():
            doc = yaml.safe_load(path.read_text()) or {}
            annotations = ((doc.get("metadata") or {}).get("annotations") or {}) if isinstance(doc, dict) else {}
            return annotations.get(EXAMPLE_ANNOTATION) == EXAMPLE_VALUE
    return False


def placeholder_findings(objects: Iterable[dict[str, Any]], example: bool) -> Iterator[tuple[int, list[Any], str]]:
    """(object index, field path, message) for placeholders a tree must not hold, or for an example without any.
    The object index is -1 for a finding about the whole tree."""
    found = [(index, path, word) for index, obj in enumerate(objects) for path, word in placeholders_in(obj)]
    if example:
        if not found:
            yield -1, [], (f"marked {EXAMPLE_ANNOTATION}: {EXAMPLE_VALUE} but holds no placeholder. Fix: remove the "
                           "annotation from its kustomization.yaml (the values are filled in)")
        return
    for index, path, word in found:
        yield index, path, (f"placeholder {word} left in a tree that is not a documented example. Fix: put your "
                            f"value in the overlay's params.yaml or images (k8s/README.md, \"Placeholders\")")


def exposure_problems(obj: dict[str, Any]) -> Iterator[tuple[list[Any], str]]:
    """A Ray head (dashboard, Jobs API, client, GCS) or any Service reachable from outside the cluster."""
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    kind = obj.get("kind")
    clusters = []
    if kind == "RayCluster":
        clusters.append((["spec"], spec))
    elif kind == "RayJob" and isinstance(spec.get("rayClusterSpec"), dict):
        clusters.append((["spec", "rayClusterSpec"], spec["rayClusterSpec"]))
    for prefix, cluster in clusters:
        head = cluster.get("headGroupSpec") if isinstance(cluster.get("headGroupSpec"), dict) else {}
        if head.get("serviceType") in EXPOSED_SERVICE_TYPES:
            yield [*prefix, "headGroupSpec", "serviceType"], (
                f"{head['serviceType']} exposes the Ray head (Jobs API, client, GCS) beyond the cluster. Fix: "
                "ClusterIP, and kubectl port-forward to reach the dashboard")
        if head.get("enableIngress") is True:
            yield [*prefix, "headGroupSpec", "enableIngress"], (
                "an Ingress exposes the Ray dashboard and its Jobs API beyond the cluster. Fix: false")
    if kind == "Service" and spec.get("type") in EXPOSED_SERVICE_TYPES:
        yield ["spec", "type"], f"a {spec['type']} Service is reachable from outside the cluster. Fix: ClusterIP"
    if kind == "Ingress":
        yield [], "an Ingress exposes the namespace beyond the cluster. Fix: remove it; use kubectl port-forward"


def ray_address_problems(obj: dict[str, Any]) -> Iterator[tuple[list[Any], str]]:
    """A Ray head address that is not fully qualified resolves only from the head's own namespace."""
    for path, text in _strings(obj, []):
        for match in RAY_ADDRESS_PATTERN.finditer(text):
            host = match.group(1)
            parts = host.split(".")
            if len(parts) < 3 or parts[2] != "svc":  # <service>.<namespace>.svc[.<cluster domain>]
                yield path, (f"Ray address {match.group(0)!r} resolves only inside the head's namespace. Fix: "
                             f"{host.split('.')[0]}.<namespace>.svc.cluster.local")
