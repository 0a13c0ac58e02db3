"""The overlays keep issue 16's promises: no placeholder outside the documented examples (and the validator
refuses one), multi-user leaves the namespace to the Profile and keeps Istio off the Ray pods, standalone puts
the runs' identity and scraping in `kubeflow`, every Ray container authenticates with the Secret's token, and no
Ray head is exposed or addressed without its namespace."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
import yaml
from tests.k8s_policy import PLACEHOLDERS, is_example, placeholders_in
from tests.k8s_validate import SchemaStore, find_kustomizations, render, validate_objects, validate_tree
from tests.test_k8s import K8S, OVERLAYS, RAYCLUSTER, SCHEMAS, broken, cluster_specs, one, write

needs_kubectl = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH (it renders the trees)")
EXAMPLES = {"base", "overlays/standalone", "overlays/multi-user", "overlays/multi-user/profile"}
TOKEN_SECRET = "mammoflow-ray-token"


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl not on PATH (it renders the kustomize trees)")
    return {name: [r.obj for r in render(K8S / "overlays" / name)] for name in (*OVERLAYS, "multi-user/profile")}


def ray_containers(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for kind, spec in cluster_specs(objects).items():
        groups = [("head", spec["headGroupSpec"])] + [(g["groupName"], g) for g in spec["workerGroupSpecs"]]
        out += [(f"{kind} {name}", c) for name, group in groups for c in group["template"]["spec"]["containers"]]
    job = one(objects, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"]
    return out + [("RayJob submitter", c) for c in job]


# ------------------------------------------------------------------------------------------------ placeholders


def test_exactly_the_documented_examples_are_marked():
    marked = {t.relative_to(K8S).as_posix() for t in find_kustomizations(K8S) if is_example(t)}
    assert marked == EXAMPLES
    assert not is_example(K8S / "overlays" / "local")


@needs_kubectl
def test_non_example_overlays_hold_no_placeholder_and_examples_do(rendered):
    for overlay, objects in rendered.items():
        found = {word for obj in objects for _, word in placeholders_in(obj)}
        if f"overlays/{overlay}" in EXAMPLES:
            assert found, f"{overlay} is marked as an example but holds no placeholder"
            assert found <= set(PLACEHOLDERS)
        else:
            assert not found, f"{overlay}: placeholders {found} left"


@needs_kubectl
def test_validator_refuses_placeholders_unless_marked_as_example(tmp_path):
    settings = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "s", "namespace": "mammoflow"},
                "data": {"MAMMOFLOW_STORAGE_ROOT": "gs://BUCKET/mammoflow", "IMAGE": "REGION-docker.pkg.dev/x"}}
    write(tmp_path, "settings.yaml", [settings])
    kustomization = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                     "resources": ["settings.yaml"]}
    write(tmp_path, "kustomization.yaml", yaml.safe_dump(kustomization))
    problems = validate_tree(tmp_path, schema_dir=SCHEMAS)
    assert {(p.path, p.message.split(" left")[0]) for p in problems} == {
        ("data.MAMMOFLOW_STORAGE_ROOT", "placeholder BUCKET"), ("data.IMAGE", "placeholder REGION")}
    # Marked as an example: accepted as it is ...
    kustomization["metadata"] = {"annotations": {"mammoflow.io/placeholders": "example"}}
    write(tmp_path, "kustomization.yaml", yaml.safe_dump(kustomization))
    assert validate_tree(tmp_path, schema_dir=SCHEMAS) == []
    # ... but a filled-in tree cannot keep the mark.
    settings["data"] = {"MAMMOFLOW_STORAGE_ROOT": "gs://acme-data/mammoflow", "NOTE": "MY_BUCKET_NAME BUCKETS"}
    write(tmp_path, "settings.yaml", [settings])
    (problem,) = validate_tree(tmp_path, schema_dir=SCHEMAS)
    assert "holds no placeholder" in problem.message and problem.file.endswith("kustomization.yaml")


# ------------------------------------------------------------------------------------------------ overlays


@needs_kubectl
def test_multi_user_leaves_the_namespace_to_the_profile(rendered):
    objects = rendered["multi-user"]
    assert not [o for o in objects if o["kind"] == "Namespace"]
    assert {o["metadata"]["namespace"] for o in objects if "namespace" in o["metadata"]} == {"mammoflow"}
    (profile,) = rendered["multi-user/profile"]
    assert profile["kind"] == "Profile" and profile["metadata"]["name"] == "mammoflow"
    assert "namespace" not in profile["metadata"]
    for overlay in ("standalone", "local"):  # the others own their namespace, with Pod Security baseline
        namespace = one(rendered[overlay], "Namespace", "mammoflow")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "baseline"


@needs_kubectl
def test_multi_user_keeps_istio_sidecars_off_every_ray_pod(rendered):
    objects = rendered["multi-user"]
    templates = [one(objects, "RayJob")["spec"]["submitterPodTemplate"]]
    for spec in cluster_specs(objects).values():
        templates += [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]
    assert len(templates) == 7
    assert all(t["metadata"]["labels"]["sidecar.istio.io/inject"] == "false" for t in templates)
    assert "sidecar.istio.io" not in json.dumps(rendered["standalone"])


@needs_kubectl
def test_standalone_runs_identity_and_scraping_live_in_kubeflow(rendered):
    objects = rendered["standalone"]
    monitor = one(objects, "PodMonitor", "mammoflow-training")
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["kubeflow"]
    for kind in ("ServiceAccount", "Role", "RoleBinding"):
        assert one(objects, kind, "mammoflow-pipeline-runner")["metadata"]["namespace"] == "kubeflow"
    # Everything else stays in mammoflow.
    others = {o["metadata"].get("namespace") for o in objects if o["metadata"]["name"] != "mammoflow-pipeline-runner"}
    assert others == {"mammoflow", None}
    assert one(rendered["multi-user"], "PodMonitor", "mammoflow-training")["spec"]["namespaceSelector"][
        "matchNames"] == ["mammoflow"]


# ------------------------------------------------------------------------------------------------ Ray


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_container_authenticates_with_the_secret_token(rendered, overlay):
    objects = rendered[overlay]
    for spec in cluster_specs(objects).values():
        assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP" and spec["headGroupSpec"]["enableIngress"] is False
    containers = ray_containers(objects)
    assert len(containers) >= 5
    for where, container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token", where
        assert env["RAY_AUTH_TOKEN"]["valueFrom"] == {"secretKeyRef": {"name": TOKEN_SECRET, "key": "auth_token"}}
    assert not [o for o in objects if o["kind"] == "Secret"], "the token is created by hand, never shipped"
    # Nothing exposed: no Ingress, no Service with a virtual IP (the multi-worker training Job's headless Service,
    # clusterIP None, only gives its pods DNS names).
    assert not [o for o in objects if o["kind"] == "Ingress"
                or (o["kind"] == "Service" and o["spec"].get("clusterIP") != "None")]


def test_validator_refuses_exposed_heads_and_short_ray_addresses(tmp_path):
    exposed = broken(RAYCLUSTER, "spec.headGroupSpec.serviceType", "LoadBalancer")
    exposed["spec"]["headGroupSpec"]["enableIngress"] = True
    short = broken(RAYCLUSTER, "metadata.name", "short")
    short["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"] = [
        {"name": "A", "value": "ray://mammoflow-head-svc:10001"},
        {"name": "B", "value": "http://mammoflow-head-svc.mammoflow:8265"},
        {"name": "C", "value": "ray://mammoflow-head-svc.mammoflow.svc.cluster.local:10001"},
        {"name": "D", "value": "http://mammoflow-head-svc.mammoflow.svc:8265"}]
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "dash", "namespace": "mammoflow"},
               "spec": {"type": "NodePort", "ports": [{"port": 8265}]}}
    problems = validate_tree(write(tmp_path, "x.yaml", [exposed, short, service]), schema_dir=SCHEMAS)
    found = {(p.obj, p.path) for p in problems}
    env = "spec.headGroupSpec.template.spec.containers[0].env"
    assert found == {("RayCluster mammoflow/rc", "spec.headGroupSpec.serviceType"),
                     ("RayCluster mammoflow/rc", "spec.headGroupSpec.enableIngress"),
                     ("RayCluster mammoflow/short", f"{env}[0].value"),
                     ("RayCluster mammoflow/short", f"{env}[1].value"),
                     ("Service mammoflow/dash", "spec.type")}, "\n".join(map(str, problems))
    assert any("mammoflow-head-svc.<namespace>.svc.cluster.local" in p.message for p in problems)


def test_profile_schema_refuses_a_namespaced_profile_without_owner():
    profile = {"apiVersion": "kubeflow.org/v1", "kind": "Profile", "metadata": {"name": "p", "namespace": "x"},
               "spec": {}}
    from tests.k8s_validate import Rendered

    problems = validate_objects([Rendered(profile, "profile.yaml")], SchemaStore(schema_dir=SCHEMAS), "x")
    assert {p.path for p in problems} == {"metadata", "spec"}, "\n".join(map(str, problems))


def test_local_pods_that_write_the_storage_root_mount_it(rendered):
    """On kind/minikube the storage root is a folder on the PVC: every Ray pod and the multi-worker training Job
    that reads it from mammoflow-settings mounts the PVC where the root lives."""
    objects = rendered["local"]
    settings = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "mammoflow-settings")
    root = settings["data"]["MAMMOFLOW_STORAGE_ROOT"]
    assert root.startswith("/"), root
    pods = [("Job mammoflow-train", one(objects, "Job")["spec"]["template"]["spec"])]
    for kind, spec in cluster_specs(objects).items():
        pods += [(f"{kind} head", spec["headGroupSpec"]["template"]["spec"])]
        pods += [(f"{kind} {g['groupName']}", g["template"]["spec"]) for g in spec["workerGroupSpecs"]]
    for name, pod in pods:
        claims = {v["name"] for v in pod.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName")
                  == "mammoflow-data"}
        for c in pod["containers"]:
            if not any(e.get("configMapRef", {}).get("name") == "mammoflow-settings" for e in c.get("envFrom", [])):
                continue
            mounts = [m["mountPath"] for m in c.get("volumeMounts", []) if m["name"] in claims]
            assert any(root == m or root.startswith(m.rstrip("/") + "/") for m in mounts), (name, c["name"], mounts)
