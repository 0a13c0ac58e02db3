"""Render the kustomize trees under ``k8s/`` and validate every object offline, without a cluster.

Built-in kinds are checked against the Kubernetes OpenAPI schemas shipped by the ``kubernetes-validate`` package,
in their strict form (an unknown field is an error, as with kubectl's server-side field validation). Custom
resources (KubeRay ``RayCluster``/``RayJob``, Prometheus Operator ``PodMonitor``/``ServiceMonitor``/
``PrometheusRule``) are checked against the JSON schemas vendored in ``k8s/schemas/``; their pod templates are
checked against the Kubernetes ``PodTemplateSpec`` schema. An object of a kind without a schema is an error.
A few rules no schema can express are checked in code: resource quantities, worker-group replica bounds, RBAC
wildcards, image tags, and the project's own rules (:mod:`tests.k8s_policy`): no placeholder left in a tree that
is not a documented example, no Ray head exposed beyond the cluster, Ray addresses fully qualified.

    python -m tests.k8s_validate k8s
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import click
import yaml
from tests import k8s_policy

from mammoflow.errors import MammoflowError

log = logging.getLogger(__name__)

# Matches the kubectl client used here (1.32, kustomize v5.5) and GKE's regular channel.
KUBERNETES_VERSION = "1.32"
KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ORIGIN_ANNOTATION = "config.kubernetes.io/origin"
# Kubernetes resource.Quantity: a signed decimal number, then a binary-SI, decimal-SI or exponent suffix.
# The shipped schemas accept any string here; the API server rejects "4GB", "1.5 Gi" or "2cores".
QUANTITY_PATTERN = r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
_KUBERNETES_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
_QUANTITY_DEF = "io.k8s.apimachinery.pkg.api.resource.Quantity"
_RBAC_ROLE_KINDS = ("Role", "ClusterRole")


class ToolMissingError(MammoflowError):
    """A program the validator needs (kubectl) is not installed."""


class KustomizeError(MammoflowError):
    """``kubectl kustomize`` refused to render a tree."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the rendered manifests: where (tree, file, object, field path) and what."""

    source: str  # the kustomization directory (or YAML file) that was checked
    file: str  # the file that defines the object, from kustomize's origin annotation ("" when unknown)
    obj: str  # "RayCluster mammoflow/mammoflow" ("" for a problem with the whole tree)
    path: str  # dotted field path, "spec.workerGroupSpecs[1].maxReplicas" ("" for the object itself)
    message: str

    def __str__(self) -> str:
        where = self.file or self.source
        parts = [where] + [p for p in (self.obj, self.path) if p]
        suffix = f" [rendering {self.source}]" if self.file and self.file != self.source else ""
        return f"{': '.join(parts)}: {self.message}{suffix}"


@dataclass(frozen=True)
class Rendered:
    """One object of a rendered tree and the file it came from."""

    obj: dict[str, Any]
    origin: str = ""


# --------------------------------------------------------------------------------------------- rendering


def find_kubectl(kubectl: str | None = None) -> str:
    """Path of the kubectl binary: the argument, else ``$KUBECTL``, else ``kubectl`` on PATH."""
    candidate = kubectl or os.environ.get("KUBECTL") or "kubectl"
    found = shutil.which(candidate)
    if found is None:
        raise ToolMissingError(
            f"kubectl not found ({candidate!r}). Fix: install kubectl >= 1.27, which bundles kustomize v5 "
            "(https://kubernetes.io/docs/tasks/tools/: apt repository pkgs.k8s.io, or the Google Cloud SDK), "
            "or point --kubectl / $KUBECTL at it")
    return found


def is_kustomization(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in KUSTOMIZATION_FILES)


def is_component(path: Path) -> bool:
    """A kustomize Component (kind: Component) renders only as part of a kustomization that includes it."""
    for name in KUSTOMIZATION_FILES:
        if (path / name).is_file():
            doc = yaml.safe_load((path / name).read_text()) or {}
            return isinstance(doc, dict) and doc.get("kind") == "Component"
    return False


def find_kustomizations(root: Path) -> list[Path]:
    """The trees to render under ``root``: ``root`` itself if it is one, else ``base/`` and every kustomization
    below ``overlays/`` (an overlay's own sub-trees too, such as the multi-user Profile), components excluded."""
    if is_kustomization(root):
        return [root]
    found = [root / "base"] if is_kustomization(root / "base") else []
    overlays = root / "overlays"
    if overlays.is_dir():
        found += sorted({f.parent for name in KUSTOMIZATION_FILES for f in overlays.rglob(name)
                         if is_kustomization(f.parent) and not is_component(f.parent)})
    return found


def render(kustomization: Path, kubectl: str | None = None, timeout: float = 120.0) -> list[Rendered]:
    """Objects of ``kubectl kustomize <kustomization>``, each with the file that defines it.

    The tree is rendered through a throw-away kustomization that adds kustomize's origin annotations (so that
    every problem can name its file); the annotation is removed again, so the objects are exactly what
    ``kubectl apply -k`` would send.
    """
    binary = find_kubectl(kubectl)
    target = kustomization.resolve()
    with tempfile.TemporaryDirectory(prefix="mammoflow-kustomize-") as tmp:
        wrapper = Path(tmp).resolve()
        # kustomize refuses absolute resource paths; a relative one may leave the wrapper's root.
        relative = os.path.relpath(target, wrapper)
        (wrapper / "kustomization.yaml").write_text(yaml.safe_dump({
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [relative],
            "buildMetadata": ["originAnnotations"],
        }))
        result = subprocess.run([binary, "kustomize", str(wrapper)], capture_output=True, text=True,
                                timeout=timeout, check=False)
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip()
            raise KustomizeError(f"{kustomization}: `kubectl kustomize` failed: {detail}")
        docs = list(_load_documents(result.stdout, str(kustomization)))
        return [_strip_origin(doc, wrapper) for doc in docs]


def _load_documents(text: str, where: str) -> Iterator[Any]:
    try:
        for doc in yaml.safe_load_all(text):
            if doc is not None:
                yield doc
    except yaml.YAMLError as exc:
        raise KustomizeError(f"{where}: not valid YAML ({exc})") from None


def _strip_origin(doc: Any, wrapper: Path) -> Rendered:
    meta = doc.get("metadata") if isinstance(doc, dict) else None
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if not isinstance(annotations, dict) or ORIGIN_ANNOTATION not in annotations:
        return Rendered(doc)
    info = yaml.safe_load(annotations.pop(ORIGIN_ANNOTATION)) or {}
    if not annotations:
        del meta["annotations"]
    # Objects from files carry `path`; generated ones carry the kustomization that generated them.
    relative = info.get("path") or info.get("configuredIn") or ""
    return Rendered(doc, _display(Path(os.path.normpath(wrapper / relative))) if relative else "")


def _display(path: Path) -> str:
    """``path`` relative to the working directory when it is below it (shorter messages), else as is."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------- schemas


def _kubernetes_schema_dir(version: str) -> Path:
    """The strict schema folder of kubernetes-validate for the newest version not newer than ``version``."""
    root = Path(str(resources.files("kubernetes_validate") / "kubernetes-json-schema"))
    wanted = _version_tuple(version)
    shipped = {}
    for folder in root.glob("v*-local-strict"):
        shipped[_version_tuple(folder.name[1:].split("-")[0])] = folder
    usable = [v for v in shipped if v[:2] <= wanted[:2]]
    if not usable:
        oldest = ".".join(map(str, min(shipped)[:2])) if shipped else "none"
        raise MammoflowError(f"kubernetes-validate ships no schemas for Kubernetes {version} (oldest: {oldest}). "
                             "Fix: pass a newer --kubernetes-version")
    return shipped[max(usable)]


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def _builtin_schema_name(api_version: str, kind: str) -> str:
    # kubernetes-validate's naming: "rbac.authorization.k8s.io/v1" -> "rbac-v1", "v1" -> "v1".
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    return f"{kind.lower()}-{group_version}.json"


class SchemaStore:
    """Validators for every kind: built-in ones from kubernetes-validate, custom ones from ``schema_dir``."""

    def __init__(self, kubernetes_version: str = KUBERNETES_VERSION, schema_dir: Path | None = None):
        from referencing import Registry, Resource

        self.kubernetes_version = kubernetes_version
        self.builtin_dir = _kubernetes_schema_dir(kubernetes_version)
        self.schema_dir = schema_dir
        definitions = json.loads((self.builtin_dir / "_definitions.json").read_text())
        definitions["$defs"][_QUANTITY_DEF] = {
            "description": "a Kubernetes quantity such as 500m, 2, 1.5Gi or 1e3",
            "anyOf": [{"type": "string", "pattern": QUANTITY_PATTERN}, {"type": "number"}],
        }
        pairs = [(definitions.get("$id", _KUBERNETES_DEFINITIONS), Resource.from_contents(definitions))]
        self.custom: dict[tuple[str, str], dict[str, Any]] = {}
        for path in sorted(schema_dir.glob("*.json")) if schema_dir else []:
            try:
                doc = json.loads(path.read_text())
            except json.JSONDecodeError as exc:
                raise MammoflowError(f"{path}: not valid JSON ({exc}). Fix: correct the schema file") from None
            if "$id" not in doc:
                raise MammoflowError(f"{path}: the schema has no $id. Fix: give it a unique $id URI")
            pairs.append((doc["$id"], Resource.from_contents(doc)))
            for gvk in doc.get("x-kubernetes-group-version-kind", []):
                api_version = f"{gvk['group']}/{gvk['version']}" if gvk.get("group") else gvk["version"]
                self.custom[(api_version, gvk["kind"])] = doc
        self.registry = Registry().with_resources(pairs)
        self._validators: dict[tuple[str, str], Any] = {}

    def validator(self, api_version: str, kind: str) -> Any | None:
        """A jsonschema validator for objects of ``kind`` in ``api_version``, or None when there is no schema."""
        import jsonschema

        key = (api_version, kind)
        if key not in self._validators:
            schema = self.custom.get(key)
            if schema is None:
                path = self.builtin_dir / _builtin_schema_name(api_version, kind)
                schema = json.loads(path.read_text()) if path.is_file() else None
            self._validators[key] = None if schema is None else jsonschema.Draft202012Validator(
                schema, registry=self.registry)
        return self._validators[key]


# --------------------------------------------------------------------------------------------- checks


def _object_name(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    name = meta.get("name", "<no name>")
    namespace = meta.get("namespace")
    return f"{obj.get('kind', '<no kind>')} {namespace}/{name}" if namespace else f"{obj.get('kind')} {name}"


def _format_path(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _first_sentence(text: str) -> str:
    return text.split(". ")[0].rstrip(".")


def _message(error: Any) -> str:
    """A readable message: no dump of a whole sub-object, and the schema's reason for the rule when it has one."""
    from jsonschema.exceptions import best_match

    schema = error.schema if isinstance(error.schema, dict) else {}
    reason = _first_sentence(schema.get("description", ""))
    if error.validator in ("anyOf", "oneOf") and isinstance(error.instance, dict | list):
        return _shorten(reason or (best_match(error.context).message if error.context else "no form matches"))
    if error.validator in ("anyOf", "oneOf", "pattern") and reason:
        return _shorten(f"{error.instance!r} is not {reason}")
    message = _shorten(error.message)
    if error.validator in ("required", "const", "enum") and reason:
        message += f" ({reason})"
    return message


def _shorten(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _schema_problems(obj: dict[str, Any], store: SchemaStore) -> Iterator[tuple[str, str]]:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        yield "", "apiVersion and kind must both be set (strings)"
        return
    validator = store.validator(api_version, kind)
    if validator is None:
        where = store.schema_dir or "k8s/schemas"
        yield "", (f"no schema for {kind} ({api_version}): not a Kubernetes {store.kubernetes_version} kind and "
                   f"not vendored in {where}. Fix: correct apiVersion/kind, or vendor a schema for it")
        return
    errors = sorted(validator.iter_errors(obj), key=lambda e: [str(p) for p in e.absolute_path])
    paths = [tuple(e.absolute_path) for e in errors]
    for error, path in zip(errors, paths, strict=True):
        # A field that fails inside an allOf also counts as "unevaluated" one level up: report only the field.
        if error.validator == "unevaluatedProperties" and any(
                len(other) > len(path) and other[: len(path)] == path for other in paths):
            continue
        yield _format_path(path), _message(error)


def _ray_cluster_specs(obj: dict[str, Any]) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
    if obj.get("kind") == "RayCluster":
        yield ["spec"], spec
    elif obj.get("kind") == "RayJob" and isinstance(spec.get("rayClusterSpec"), dict):
        yield ["spec", "rayClusterSpec"], spec["rayClusterSpec"]


def _ray_problems(obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """KubeRay's own checks of worker groups: unique names, minReplicas <= replicas <= maxReplicas."""
    for prefix, spec in _ray_cluster_specs(obj):
        groups = spec.get("workerGroupSpecs")
        if not isinstance(groups, list):
            continue
        seen: set[str] = set()
        for index, group in enumerate(groups):
            if not isinstance(group, dict):
                continue
            where = _format_path([*prefix, "workerGroupSpecs", index])
            name = group.get("groupName")
            if name in seen:
                yield f"{where}.groupName", f"duplicate worker group name {name!r}"
            seen.add(name)
            low, high, replicas = group.get("minReplicas", 0), group.get("maxReplicas"), group.get("replicas")
            if not all(isinstance(v, int) for v in (low, high) if v is not None):
                continue  # a type error the schema reports
            if high is not None and low > high:
                yield where, f"minReplicas ({low}) is greater than maxReplicas ({high})"
            elif isinstance(replicas, int) and not (low <= replicas <= (high if high is not None else replicas)):
                yield f"{where}.replicas", f"replicas ({replicas}) is outside [minReplicas, maxReplicas] = [{low}, {high}]"


def _rbac_problems(obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Least privilege: a wildcard in a rule grants every present and future verb, resource or API group."""
    if obj.get("kind") not in _RBAC_ROLE_KINDS or not isinstance(obj.get("rules"), list):
        return
    for index, rule in enumerate(obj["rules"]):
        if not isinstance(rule, dict):
            continue
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            values = rule.get(field) or []
            if isinstance(values, list) and any(isinstance(v, str) and "*" in v for v in values):
                yield f"rules[{index}].{field}", "wildcard '*' in an RBAC rule. Fix: list exactly what is needed"


def _containers(node: Any, path: list[Any]) -> Iterator[tuple[list[Any], dict[str, Any]]]:
    """Every container (and init container) anywhere in an object, with its path, including CRD templates."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers", "ephemeralContainers") and isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, dict):
                        yield [*path, key, index], item
            else:
                yield from _containers(value, [*path, key])
    elif isinstance(node, list):
        for index, item in enumerate(node):
            yield from _containers(item, [*path, index])


def _image_problems(obj: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Images must name a version: no tag (an implicit :latest) or :latest makes a run unrepeatable."""
    for path, container in _containers(obj, []):
        image = container.get("image")
        if not isinstance(image, str) or not image:
            continue  # the schema (or the operator, which fills it in) has the say
        name, _, digest = image.partition("@")
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        if not digest and tag in ("", "latest"):
            yield _format_path([*path, "image"]), f"image {image!r} is not pinned. Fix: give a version tag or digest"


def validate_objects(rendered: Iterable[Rendered], store: SchemaStore, source: str) -> list[Problem]:
    """Every problem of every object: schema errors first, then the checks written in code."""
    problems: list[Problem] = []
    for item in rendered:
        obj = item.obj
        if not isinstance(obj, dict):
            problems.append(Problem(source, item.origin, "", "", f"not a Kubernetes object: {_shorten(repr(obj))}"))
            continue
        name = _object_name(obj)
        found = list(_schema_problems(obj, store))
        found += list(_ray_problems(obj)) + list(_rbac_problems(obj)) + list(_image_problems(obj))
        found += [(_format_path(path), message) for path, message in
                  [*k8s_policy.exposure_problems(obj), *k8s_policy.ray_address_problems(obj)]]
        problems += [Problem(source, item.origin, name, path, message) for path, message in found]
    return problems


def placeholder_problems(rendered: list[Rendered], kustomization: Path, source: str) -> list[Problem]:
    """Placeholders left in a rendered tree that is not marked as a documented example (see tests.k8s_policy)."""
    objects = [item.obj for item in rendered]
    problems = []
    for index, path, message in k8s_policy.placeholder_findings(objects, k8s_policy.is_example(kustomization)):
        if index < 0:
            problems.append(Problem(source, _display(kustomization / "kustomization.yaml"), "", "", message))
        else:
            item = rendered[index]
            problems.append(Problem(source, item.origin, _object_name(item.obj), _format_path(path), message))
    return problems


def load_file(path: Path) -> list[Rendered]:
    """Objects of a plain YAML file (no kustomize), for checking a single manifest."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise KustomizeError(f"{path}: cannot read ({exc.strerror})") from None
    return [Rendered(doc, _display(path)) for doc in _load_documents(text, str(path))]


def validate_tree(path: Path | str, schema_dir: Path | str | None = None,
                  kubernetes_version: str = KUBERNETES_VERSION, kubectl: str | None = None) -> list[Problem]:
    """Render and validate ``path``: a kustomization, a folder of them (``base/``, ``overlays/*/``) or a YAML file.

    ``schema_dir`` holds the vendored custom-resource schemas; by default the first ``schemas/`` folder found
    in ``path`` or above it. Returns every problem found (empty: all valid). Raises ToolMissingError when
    kubectl is needed but missing.
    """
    return check_tree(path, schema_dir, kubernetes_version, kubectl)[0]


def check_tree(path: Path | str, schema_dir: Path | str | None = None,
               kubernetes_version: str = KUBERNETES_VERSION,
               kubectl: str | None = None) -> tuple[list[Problem], dict[str, int]]:
    """``validate_tree`` that also returns how many objects each tree rendered to."""
    root = Path(path)
    if not root.exists():
        return [Problem(str(root), "", "", "", "does not exist. Fix: give the k8s/ folder, a kustomization or a YAML file")], {}
    schemas = Path(schema_dir) if schema_dir is not None else default_schema_dir(root)
    store = SchemaStore(kubernetes_version, schemas)
    if root.is_file():
        targets, file_mode = [root], True
    else:
        targets, file_mode = find_kustomizations(root), False
    if not targets:
        return [Problem(str(root), "", "", "", "no kustomization.yaml here, nor in base/ or overlays/*/")], {}
    problems: list[Problem] = []
    counts: dict[str, int] = {}
    for target in targets:
        source = _display(target)
        try:
            rendered = load_file(target) if file_mode else render(target, kubectl)
        except KustomizeError as exc:
            problems.append(Problem(source, "", "", "", str(exc)))
            continue
        counts[source] = len(rendered)
        log.info("%s: %d objects", source, len(rendered))
        problems += validate_objects(rendered, store, source)
        if not file_mode:
            problems += placeholder_problems(rendered, target, source)
    return problems, counts


def default_schema_dir(path: Path) -> Path | None:
    """The first ``schemas/`` folder holding JSON schemas in ``path`` or one of its parents."""
    start = path.resolve() if path.is_dir() else path.resolve().parent
    for folder in (start, *start.parents):
        candidate = folder / "schemas"
        if candidate.is_dir() and any(candidate.glob("*.json")):
            return candidate
    return None


@click.command("validate-k8s")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--schemas", "schema_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of vendored custom-resource schemas (default: the nearest schemas/ folder).")
@click.option("--kubernetes-version", default=KUBERNETES_VERSION, show_default=True,
              help="Kubernetes version whose schemas built-in kinds are checked against.")
@click.option("--kubectl", default=None, help="kubectl binary (default: $KUBECTL, then kubectl on PATH).")
def main(paths: tuple[Path, ...], schema_dir: Path | None, kubernetes_version: str, kubectl: str | None) -> None:
    """Render kustomize trees (default: k8s) and validate every object against its schema; exit 1 on problems."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    problems: list[Problem] = []
    counts: dict[str, int] = {}
    try:
        for path in paths or (Path("k8s"),):
            found, rendered = check_tree(path, schema_dir, kubernetes_version, kubectl)
            problems += found
            counts.update(rendered)
    except MammoflowError as exc:  # kubectl missing, no schemas for that Kubernetes version, bad schema file
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for problem in problems:
        click.echo(str(problem), err=True)
    summary = ", ".join(f"{source} ({n} objects)" for source, n in counts.items())
    if problems:
        click.echo(f"{len(problems)} problem(s) in {summary or 'nothing rendered'}", err=True)
        sys.exit(1)
    click.echo(f"valid against Kubernetes {kubernetes_version} and the vendored schemas: {summary}")


if __name__ == "__main__":
    main()
