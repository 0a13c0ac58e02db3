"""The kustomize manifests under k8s/: every tree renders and validates, the validator rejects broken manifests,
and the rendered overlays hold the promises the README makes (GPUs, RBAC, quota, sweep, monitoring)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from tests.k8s_validate import (
    Problem,
    Rendered,
    SchemaStore,
    ToolMissingError,
    check_tree,
    find_kustomizations,
    render,
    validate_objects,
    validate_tree,
)

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
SCHEMAS = K8S / "schemas"
OVERLAYS = ("standalone", "multi-user", "local")
GKE_OVERLAYS = ("standalone", "multi-user")  # the GKE settings (components/gke)
# Where the KFP runs (and so their service account) live.
RUN_NAMESPACE = {"standalone": "kubeflow", "multi-user": "mammoflow", "local": "mammoflow"}
HAS_KUBECTL = shutil.which("kubectl") is not None
needs_kubectl = pytest.mark.skipif(not HAS_KUBECTL, reason="kubectl not on PATH (it renders the kustomize trees); "
                                                           "install kubectl >= 1.27 to run this test")


# ----------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def overlays() -> dict[str, list[dict[str, Any]]]:
    if not HAS_KUBECTL:
        pytest.skip("kubectl not on PATH (it renders the kustomize trees); install kubectl >= 1.27 to run this test")
    return {name: [r.obj for r in render(K8S / "overlays" / name)] for name in OVERLAYS}


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def cluster_specs(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The standing RayCluster's spec and the sweep RayJob's own cluster spec."""
    return {"RayCluster": one(objects, "RayCluster")["spec"],
            "RayJob": one(objects, "RayJob")["spec"]["rayClusterSpec"]}


def group(spec: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((g for g in spec.get("workerGroupSpecs", []) if g["groupName"] == name), None)


def pod_templates(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for kind, spec in cluster_specs(objects).items():
        out.append((f"{kind} head", spec["headGroupSpec"]["template"]))
        out += [(f"{kind} {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
    out.append(("RayJob submitter", one(objects, "RayJob")["spec"]["submitterPodTemplate"]))
    return out


_SUFFIX = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"), "": Decimal(1), "k": Decimal(10) ** 3,
           "M": Decimal(10) ** 6, "G": Decimal(10) ** 9, "T": Decimal(10) ** 12, "Ki": Decimal(2) ** 10,
           "Mi": Decimal(2) ** 20, "Gi": Decimal(2) ** 30, "Ti": Decimal(2) ** 40}


def quantity(value: str | int | float) -> Decimal:
    number, suffix = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value)).groups()
    return Decimal(number) * _SUFFIX[suffix]


def write(folder: Path, name: str, docs: list[dict[str, Any]] | str) -> Path:
    path = folder / name
    path.write_text(docs if isinstance(docs, str) else yaml.safe_dump_all(docs, sort_keys=False))
    return path


def kustomization(folder: Path, *files: str) -> Path:
    write(folder, "kustomization.yaml", yaml.safe_dump({"resources": list(files)}))
    return folder


DEPLOYMENT = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "namespace": "mammoflow"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
             "template": {"metadata": {"labels": {"app": "web"}},
                          "spec": {"containers": [{"name": "web", "image": "nginx:1.27.3"}]}}},
}
RAYCLUSTER = {
    "apiVersion": "ray.io/v1", "kind": "RayCluster", "metadata": {"name": "rc", "namespace": "mammoflow"},
    "spec": {
        "rayVersion": "2.60.0",
        "headGroupSpec": {"rayStartParams": {}, "template": {"spec": {"containers": [
            {"name": "ray-head", "image": "mammoflow/mammoflow:0.1.0"}]}}},
        "workerGroupSpecs": [{"groupName": "cpu", "minReplicas": 0, "maxReplicas": 2, "rayStartParams": {},
                              "template": {"spec": {"containers": [
                                  {"name": "ray-worker", "image": "mammoflow/mammoflow:0.1.0"}]}}}],
    },
}


def broken(doc: dict[str, Any], dotted: str, value: Any = None, delete: bool = False) -> dict[str, Any]:
    """A deep copy of ``doc`` with one field changed (or deleted)."""
    doc = json.loads(json.dumps(doc))
    *parents, last = [int(p) if p.isdigit() else p for p in dotted.split(".")]
    node = doc
    for part in parents:
        node = node[part]
    if delete:
        del node[last]
    else:
        node[last] = value
    return doc


# ----------------------------------------------------------------------------------------------- validator


@needs_kubectl
def test_every_tree_renders_and_validates():
    problems, counts = check_tree(K8S)
    assert problems == [], "\n".join(map(str, problems))
    rendered = {Path(k).resolve().relative_to(K8S).as_posix() for k in counts}
    assert rendered == {"base", "overlays/standalone", "overlays/multi-user", "overlays/multi-user/profile",
                        "overlays/local"}
    assert counts.pop(next(k for k in counts if k.endswith("profile"))) == 1  # the Profile alone
    assert all(n >= 10 for n in counts.values()), counts


def test_find_kustomizations_lists_base_then_overlays():
    overlays = K8S / "overlays"
    assert find_kustomizations(K8S) == [K8S / "base", overlays / "local", overlays / "multi-user",
                                        overlays / "multi-user" / "profile", overlays / "standalone"]
    assert find_kustomizations(overlays / "standalone") == [overlays / "standalone"]


@needs_kubectl
def test_rejects_deployment_with_string_replica_count(tmp_path):
    write(tmp_path, "deployment.yaml", [broken(DEPLOYMENT, "spec.replicas", "3")])
    problems = validate_tree(kustomization(tmp_path, "deployment.yaml"), schema_dir=SCHEMAS)
    assert [(p.obj, p.path) for p in problems] == [("Deployment mammoflow/web", "spec.replicas")]
    assert problems[0].file.endswith("deployment.yaml")
    assert "integer" in problems[0].message


@needs_kubectl
def test_rejects_raycluster_without_head_group(tmp_path):
    write(tmp_path, "ray.yaml", [broken(RAYCLUSTER, "spec.headGroupSpec", delete=True)])
    problems = validate_tree(kustomization(tmp_path, "ray.yaml"), schema_dir=SCHEMAS)
    assert len(problems) == 1
    assert problems[0].obj == "RayCluster mammoflow/rc" and problems[0].path == "spec"
    assert "'headGroupSpec' is a required property" in problems[0].message


def test_rejects_broken_custom_resources_without_kubectl(tmp_path):
    """Plain YAML files are validated without rendering, so this runs even where kubectl is missing."""
    docs = [
        broken(RAYCLUSTER, "spec.rayVersion", "2.60.0"),  # an unchanged (valid) copy: must not be reported
        broken(RAYCLUSTER, "spec.workerGroupSpecs.0.rayStartParams", {"num-cpus": 0}),  # must be a string
        broken(RAYCLUSTER, "spec.workerGroupSpecs.0.minReplicas", 3),  # > maxReplicas (checked in code)
        broken(RAYCLUSTER, "spec.headGroupSpec.template.spec.containers.0.resources", {"limits": {"memory": "4GB"}}),
        broken(RAYCLUSTER, "spec.workerGroupSpecs.0.maxReplica", 4),  # typo: unknown field
        broken(RAYCLUSTER, "spec.workerGroupSpecs.0.replicas", 5),  # above maxReplicas (checked in code)
    ]
    for index, doc in enumerate(docs):
        doc["metadata"]["name"] = f"rc{index}"
    problems = validate_tree(write(tmp_path, "ray.yaml", docs), schema_dir=SCHEMAS)
    found = {(p.obj.split("/")[1], p.path) for p in problems}
    assert found == {
        ("rc1", "spec.workerGroupSpecs[0].rayStartParams.num-cpus"),
        ("rc2", "spec.workerGroupSpecs[0]"),
        ("rc3", "spec.headGroupSpec.template.spec.containers[0].resources.limits.memory"),
        ("rc4", "spec.workerGroupSpecs[0]"),
        ("rc5", "spec.workerGroupSpecs[0].replicas"),
    }, "\n".join(map(str, problems))
    messages = {p.obj.split("/")[1]: p.message for p in problems}
    assert "minReplicas (3) is greater than maxReplicas (2)" in messages["rc2"]
    assert "'4GB' is not a Kubernetes quantity" in messages["rc3"]
    assert "'maxReplica' was unexpected" in messages["rc4"]
    assert "replicas (5) is outside [minReplicas, maxReplicas] = [0, 2]" in messages["rc5"]


def test_rejects_unknown_kinds_rbac_wildcards_and_unpinned_images(tmp_path):
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "too-much"},
            "rules": [{"apiGroups": ["ray.io"], "resources": ["*"], "verbs": ["get"]}]}
    service = {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "serve"}, "spec": {}}
    latest = broken(DEPLOYMENT, "spec.template.spec.containers.0.image", "nginx")
    problems = validate_tree(write(tmp_path, "mixed.yaml", [role, service, latest]), schema_dir=SCHEMAS)
    by_obj = {p.obj: p for p in problems}
    assert set(by_obj) == {"Role too-much", "RayService serve", "Deployment mammoflow/web"}
    assert by_obj["Role too-much"].path == "rules[0].resources"
    assert "no schema for RayService (ray.io/v1)" in by_obj["RayService serve"].message
    assert "'nginx' is not pinned" in by_obj["Deployment mammoflow/web"].message


def test_rejects_rayjob_breaking_kuberay_rules(tmp_path):
    job = {"apiVersion": "ray.io/v1", "kind": "RayJob", "metadata": {"name": "sweep"},
           "spec": {"suspend": True, "shutdownAfterJobFinishes": False, "submissionMode": "K8sJobMode"}}
    problems = validate_tree(write(tmp_path, "job.yaml", [job]), schema_dir=SCHEMAS)
    messages = sorted(f"{p.path}: {p.message}" for p in problems)
    assert len(messages) == 3, messages
    assert any("rayClusterSpec" in m and "clusterSelector" in m for m in messages)
    assert any("'entrypoint' is a required property" in m for m in messages)
    assert any(m.startswith("spec.shutdownAfterJobFinishes: True was expected") for m in messages)


def test_custom_resources_without_schemas_are_errors(tmp_path):
    """Without the vendored schemas a RayCluster cannot be checked, and that must not pass silently."""
    rendered = [Rendered(RAYCLUSTER, "ray.yaml"), Rendered(DEPLOYMENT, "deployment.yaml")]
    problems = validate_objects(rendered, SchemaStore(schema_dir=None), "x")
    assert [(p.file, p.obj) for p in problems] == [("ray.yaml", "RayCluster mammoflow/rc")]
    assert "no schema for RayCluster (ray.io/v1)" in problems[0].message
    problems = validate_tree(write(tmp_path, "ray.yaml", [RAYCLUSTER]), schema_dir=tmp_path)
    assert len(problems) == 1 and "no schema for RayCluster" in problems[0].message


def test_missing_kubectl_is_a_clear_error():
    with pytest.raises(ToolMissingError, match="install kubectl"):
        validate_tree(K8S, kubectl="/nonexistent/kubectl")


@needs_kubectl
def test_kustomize_failure_is_reported_not_raised(tmp_path):
    problems = validate_tree(kustomization(tmp_path, "missing.yaml"), schema_dir=SCHEMAS)
    assert len(problems) == 1 and "kubectl kustomize` failed" in problems[0].message


@needs_kubectl
def test_command_line_exit_codes(tmp_path):
    write(tmp_path, "deployment.yaml", [broken(DEPLOYMENT, "spec.replicas", "3")])
    kustomization(tmp_path, "deployment.yaml")
    command = [sys.executable, "-m", "tests.k8s_validate"]  # from the checkout: a developer tool, not installed
    good = subprocess.run([*command, str(K8S)], capture_output=True, text=True, check=False, cwd=REPO)
    assert good.returncode == 0, good.stderr
    bad = subprocess.run([*command, str(tmp_path), "--schemas", str(SCHEMAS)],
                         capture_output=True, text=True, check=False, cwd=REPO)
    assert bad.returncode == 1
    assert "deployment.yaml: Deployment mammoflow/web: spec.replicas:" in bad.stderr


def test_vendored_schemas_are_valid_and_name_their_kinds():
    kinds = set()
    for path in sorted(SCHEMAS.glob("*.json")):
        schema = json.loads(path.read_text())
        jsonschema.Draft202012Validator.check_schema(schema)
        kinds |= {(g["group"], g["version"], g["kind"]) for g in schema.get("x-kubernetes-group-version-kind", [])}
    assert kinds == {("ray.io", "v1", "RayCluster"), ("ray.io", "v1", "RayJob"),
                     ("monitoring.coreos.com", "v1", "PodMonitor"), ("monitoring.coreos.com", "v1", "ServiceMonitor"),
                     ("monitoring.coreos.com", "v1", "PrometheusRule"), ("kubeflow.org", "v1", "Profile")}


def test_problem_names_file_object_and_path():
    problem = Problem("k8s/overlays/standalone", "k8s/base/raycluster.yaml", "RayCluster mammoflow/mammoflow",
                      "spec.rayVersion", "2.6 is not of type 'string'")
    assert str(problem) == ("k8s/base/raycluster.yaml: RayCluster mammoflow/mammoflow: spec.rayVersion: "
                            "2.6 is not of type 'string' [rendering k8s/overlays/standalone]")


# ----------------------------------------------------------------------------------------------- overlays


@pytest.mark.parametrize("overlay", GKE_OVERLAYS)
def test_gke_gpu_workers_request_and_tolerate_gpus(overlays, overlay):
    for kind, spec in cluster_specs(overlays[overlay]).items():
        gpu = group(spec, "gpu")
        assert gpu is not None, f"{kind}: no gpu worker group"
        pod = gpu["template"]["spec"]
        (container,) = pod["containers"]
        assert quantity(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
        assert container["image"].rsplit("/", 1)[-1].startswith("mammoflow-gpu:")
        assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
        assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"].startswith("nvidia-")
        assert 0 == gpu["minReplicas"] < gpu["maxReplicas"], "GPU workers must scale from zero"
        # Nothing else asks for a GPU, so CPU work never holds one.
        others = [spec["headGroupSpec"]] + [g for g in spec["workerGroupSpecs"] if g is not gpu]
        assert "nvidia.com/gpu" not in json.dumps(others)


def test_local_overlay_has_no_gpus_and_keeps_data_on_a_pvc(overlays):
    objects = overlays["local"]
    text = json.dumps(objects)
    assert "cloud.google.com" not in text and "iam.gke.io" not in text
    for spec in cluster_specs(objects).values():
        assert group(spec, "gpu") is None
        assert "nvidia.com/gpu" not in json.dumps(spec)
    root = one(objects, "ConfigMap", "mammoflow-settings")["data"]["MAMMOFLOW_STORAGE_ROOT"]
    claim = one(objects, "PersistentVolumeClaim")["metadata"]["name"]
    for where, template in pod_templates(objects):
        if "submitter" in where:
            continue
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        mounts = template["spec"]["containers"][0]["volumeMounts"]
        data = [m for m in mounts if volumes[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == claim]
        assert data and root.startswith(data[0]["mountPath"].rstrip("/") + "/"), where


@pytest.mark.parametrize("overlay", GKE_OVERLAYS)
def test_gke_uses_workload_identity_and_the_bucket(overlays, overlay):
    objects = overlays[overlay]
    accounts = [o for o in objects if o["kind"] == "ServiceAccount"]
    assert {(a["metadata"]["namespace"], a["metadata"]["name"]) for a in accounts} == {
        (RUN_NAMESPACE[overlay], "mammoflow-pipeline-runner"), ("mammoflow", "mammoflow-ray"),
        ("mammoflow", "mammoflow-trainer")}  # the multi-worker training Job's pods (base/train-multiworker.yaml)
    for account in accounts:
        assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com")
    root = one(objects, "ConfigMap", "mammoflow-settings")["data"]["MAMMOFLOW_STORAGE_ROOT"]
    assert root.startswith("gs://")
    # The params ConfigMap is local-config: used to fill the values in, never applied.
    assert not [o for o in objects if o["metadata"]["name"] == "mammoflow-params"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_is_namespaced_and_without_wildcards(overlays, overlay):
    objects = overlays[overlay]
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    role = one(objects, "Role", "mammoflow-pipeline-runner")
    assert role["metadata"]["namespace"] == RUN_NAMESPACE[overlay], "the Role lives where the runs execute"
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs", "resourceNames"):
            assert not any("*" in value for value in rule.get(field, [])), rule
        assert not set(rule["verbs"]) & {"delete", "deletecollection", "escalate", "bind", "impersonate"}, rule
        if "secrets" in rule["resources"] or "configmaps" in rule["resources"]:
            assert rule.get("resourceNames") and rule["verbs"] == ["get"], "only named secrets and configmaps"
    granted = {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]
               for v in rule["verbs"]}
    # KFP's launcher reads the default artifact store's credentials and its executor reports task results.
    assert {("", "secrets", "get"), ("argoproj.io", "workflowtaskresults", "create")} <= granted
    secrets = [n for rule in role["rules"] if "secrets" in rule["resources"] for n in rule["resourceNames"]]
    assert secrets == ["mlpipeline-minio-artifact"]
    # No step creates RayJobs or reads pods: a sweep step joins Ray over ray://.
    assert not {r for _, r, _ in granted} & {"rayjobs", "pods", "pods/log"}
    binding = one(objects, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["metadata"]["namespace"] == RUN_NAMESPACE[overlay]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "mammoflow-pipeline-runner",
                                    "namespace": RUN_NAMESPACE[overlay]}]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sweep_rayjob_runs_once_on_the_patched_cluster(overlays, overlay):
    objects = overlays[overlay]
    job = one(objects, "RayJob", "mammoflow-sweep")["spec"]
    spec = "demo" if overlay == "local" else "jaamour2023_divide_conquer"  # a laptop has no GPU for Jaamour's trials
    assert job["entrypoint"].startswith(f"mammoflow sweep --spec {spec} --address auto")
    assert job["shutdownAfterJobFinishes"] is True and job["ttlSecondsAfterFinished"] > 0
    assert job["suspend"] is True, "applying the manifests must not start a sweep"
    # The copy is taken after the overlay's patches: the sweep runs on exactly the cluster the overlay defines.
    assert job["rayClusterSpec"] == one(objects, "RayCluster", "mammoflow")["spec"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_submitter_expands_the_storage_root_from_the_settings(overlays, overlay):
    """KubeRay's submitter shell expands the entrypoint's $MAMMOFLOW_STORAGE_ROOT, so it must have the settings."""
    objects = overlays[overlay]
    job = one(objects, "RayJob", "mammoflow-sweep")["spec"]
    assert "$MAMMOFLOW_STORAGE_ROOT" in job["entrypoint"]
    settings = one(objects, "ConfigMap", "mammoflow-settings")["metadata"]["name"]
    (container,) = job["submitterPodTemplate"]["spec"]["containers"]
    assert {"configMapRef": {"name": settings}} in container.get("envFrom", [])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_object_store_fits_in_shared_memory(overlays, overlay):
    """Each group's object store fits its /dev/shm volume, else Ray falls back to a disk-backed store."""
    for where, template in pod_templates(overlays[overlay]):
        if "submitter" in where:
            continue
        kind, _, name = where.partition(" ")
        spec = cluster_specs(overlays[overlay])[kind]
        starts = (spec["headGroupSpec"] if name == "head" else group(spec, name))["rayStartParams"]
        volumes = {v["name"]: v for v in template["spec"]["volumes"]}
        (shm,) = [m["name"] for m in template["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/dev/shm"]
        assert volumes[shm]["emptyDir"]["medium"] == "Memory", where
        assert 0 < quantity(starts["object-store-memory"]) < quantity(volumes[shm]["emptyDir"]["sizeLimit"]), where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_versions_match_the_lock_and_the_package(overlays, overlay):
    lock = dict(line.split("==") for line in (REPO / "requirements.lock").read_text().split())
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for spec in cluster_specs(overlays[overlay]).values():
        assert spec["rayVersion"] == lock["ray"]
    images = re.findall(r'"image": "([^"]+)"', json.dumps(overlays[overlay]))
    assert images and all(image.endswith(f"/mammoflow:{version}") or image.endswith(f"/mammoflow-gpu:{version}")
                          for image in images), images


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pods_run_as_the_image_user_without_privileges(overlays, overlay):
    for where, template in pod_templates(overlays[overlay]):
        pod = template["spec"]
        security = pod["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 10001, where
        assert security["seccompProfile"]["type"] == "RuntimeDefault", where
        for container in pod["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], where
        wants_token = where.endswith("head")  # the autoscaler sidecar calls the Kubernetes API
        assert pod["automountServiceAccountToken"] is wants_token, where


def _requests(template: dict[str, Any], kind: str, resource: str) -> Decimal:
    return sum((quantity(c["resources"].get(kind, {}).get(resource, 0)) for c in template["spec"]["containers"]),
               Decimal(0))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_quota_admits_the_standing_cluster_and_one_sweep_at_full_scale(overlays, overlay):
    objects = overlays[overlay]
    hard = {k: quantity(v) for k, v in one(objects, "ResourceQuota")["spec"]["hard"].items() if "/" not in k
            or k == "requests.nvidia.com/gpu"}
    container_max = one(objects, "LimitRange")["spec"]["limits"][0]["max"]
    totals: dict[str, Decimal] = {}
    pods = 0
    for spec in cluster_specs(objects).values():
        scaled = [(1, spec["headGroupSpec"]["template"])]
        scaled += [(g["maxReplicas"], g["template"]) for g in spec["workerGroupSpecs"]]
        autoscaler = {"spec": {"containers": [{"resources": spec["autoscalerOptions"]["resources"]}]}}
        scaled.append((1, autoscaler))  # a sidecar of the head pod
        pods += 1 + sum(g["maxReplicas"] for g in spec["workerGroupSpecs"])
        for count, template in scaled:
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory", "nvidia.com/gpu"):
                    key = f"{kind}.{resource}"
                    totals[key] = totals.get(key, Decimal(0)) + count * _requests(template, kind, resource)
            for container in template["spec"]["containers"]:
                for resource, limit in container["resources"].get("limits", {}).items():
                    if resource in container_max:
                        assert quantity(limit) <= quantity(container_max[resource])
    submitter = one(objects, "RayJob")["spec"]["submitterPodTemplate"]
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            totals[f"{kind}.{resource}"] += _requests(submitter, kind, resource)
    for key in ("requests.cpu", "requests.memory", "limits.cpu", "limits.memory", "requests.nvidia.com/gpu"):
        assert totals[key] <= hard[key], f"{overlay}: {key} needs {totals[key]} at full scale, quota {hard[key]}"
    assert totals["requests.cpu"] > 0 and totals["requests.memory"] > 0
    assert pods + 1 <= hard["pods"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_monitors_scrape_ports_that_exist(overlays, overlay):
    objects = overlays[overlay]
    ray = one(objects, "PodMonitor", "mammoflow-ray")["spec"]
    (endpoint,) = ray["podMetricsEndpoints"]
    for where, template in pod_templates(objects):
        if "submitter" in where:
            continue
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert endpoint["port"] in ports, where
        starts = (cluster_specs(objects)["RayCluster"]["headGroupSpec"]["rayStartParams"] if "head" in where
                  else {"metrics-export-port": str(ports[endpoint["port"]])})
        assert starts["metrics-export-port"] == str(ports[endpoint["port"]])
        assert template["metadata"]["labels"]["app.kubernetes.io/part-of"] == ray["selector"]["matchLabels"][
            "app.kubernetes.io/part-of"]
    training = one(objects, "PodMonitor", "mammoflow-training")["spec"]["podMetricsEndpoints"][0]
    port = one(objects, "ConfigMap", "mammoflow-settings")["data"]["MAMMOFLOW_METRICS_PORT"]
    address = [r for r in training["relabelings"] if r.get("targetLabel") == "__address__"]
    assert address and address[0]["replacement"].endswith(f":{port}")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian package prometheus) not installed")
def test_alert_rules_pass_promtool(overlays, tmp_path):
    rule = one(overlays["standalone"], "PrometheusRule", "mammoflow")
    rules = write(tmp_path, "rules.yaml", yaml.safe_dump(rule["spec"]))
    result = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{sum(len(g['rules']) for g in rule['spec']['groups'])} rules found" in result.stdout


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_sweep_entrypoint_is_a_valid_command_whose_trials_fit_a_worker(overlays, overlay):
    """The entrypoint parses with the real `mammoflow sweep`, names every dataset its spec needs, writes to the
    storage root, and one trial's resources fit on one worker of the job's cluster (else the sweep waits forever)."""
    from mammoflow.commands.sweep import command
    from mammoflow.sweep.spec import load_spec

    objects = overlays[overlay]
    job = one(objects, "RayJob", "mammoflow-sweep")["spec"]
    root = one(objects, "ConfigMap", "mammoflow-settings")["data"]["MAMMOFLOW_STORAGE_ROOT"]
    words = [w.replace("$MAMMOFLOW_STORAGE_ROOT", root) for w in shlex.split(job["entrypoint"])]
    assert words[:2] == ["mammoflow", "sweep"]
    params = command.make_context("sweep", words[2:]).params
    spec = load_spec(params["spec_ref"])
    named = {d.partition("=")[0] if "=" in d else "default" for d in params["data"]}
    assert set(spec.datasets if spec.axes.get("dataset") else ["default"]) <= named
    assert all(uri.partition("=")[2 if "=" in uri else 0].startswith(root) for uri in params["data"])
    assert params["out_uri"].startswith(root) and params["address"] == "auto"
    fits = []
    for worker in job["rayClusterSpec"]["workerGroupSpecs"]:
        limits = worker["template"]["spec"]["containers"][0]["resources"]["limits"]
        cpus = quantity(worker["rayStartParams"].get("num-cpus", limits["cpu"]))
        gpus = quantity(limits.get("nvidia.com/gpu", 0))
        fits.append(cpus >= Decimal(str(spec.resources["cpu"])) and gpus >= Decimal(str(spec.resources["gpu"])))
    assert any(fits), f"{overlay}: no worker group can run a {spec.resources} trial"


# ----------------------------------------------------------------------------------------------- multi-worker training
def _train_job(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The multi-worker training Job, its pod's container and its headless Service (base/train-multiworker.yaml)."""
    job = one(objects, "Job", "mammoflow-train")
    return job, job["spec"]["template"]["spec"]["containers"][0], one(objects, "Service", "mammoflow-train")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_multiworker_job_builds_each_pods_tf_config_from_its_index(overlays, overlay):
    """An Indexed Job whose pods find each other through the headless Service: the TF_CONFIG that
    mammoflow.training.distribute builds from each pod's index names every pod's DNS name, worker 0 is the chief."""
    from mammoflow.training import distribute

    job, container, service = _train_job(overlays[overlay])
    spec, pod = job["spec"], job["spec"]["template"]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    workers = int(env[distribute.WORKERS_ENV])
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"] == workers >= 2
    assert spec["suspend"] is True  # applying never starts a training
    assert pod["spec"]["restartPolicy"] == "OnFailure" and spec["backoffLimit"] >= 1  # failed workers come back
    # Headless, selecting exactly these pods, on the port the workers listen on.
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert pod["spec"]["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    (container_port,) = container["ports"]
    assert port["targetPort"] == container_port["name"]
    pod_dns = [f"{job['metadata']['name']}-{i}.{service['metadata']['name']}:{container_port['containerPort']}"
               for i in range(workers)]  # an Indexed Job's pod hostname is <job>-<index>
    for index in range(workers):
        pod_env = dict(env, **{distribute.INDEX_ENV: str(index)})  # set by Kubernetes in each pod
        cluster = distribute.resolve_cluster(pod_env)
        assert list(cluster.jobs["worker"]) == pod_dns and cluster.task_index == index
        assert cluster.is_chief is (index == 0)
        assert json.loads(pod_env[distribute.TF_CONFIG_ENV])["task"] == {"type": "worker", "index": index}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_multiworker_job_runs_a_valid_train_command_under_the_storage_root(overlays, overlay):
    from mammoflow.commands.train import command, parse_overrides
    from mammoflow.training.config import load_train_config

    objects = overlays[overlay]
    job, container, _ = _train_job(objects)
    root = one(objects, "ConfigMap", "mammoflow-settings")["data"]["MAMMOFLOW_STORAGE_ROOT"]
    assert {"configMapRef": {"name": "mammoflow-settings"}} in container["envFrom"]  # $(MAMMOFLOW_STORAGE_ROOT)
    words = [w.replace("$(MAMMOFLOW_STORAGE_ROOT)", root) for w in container["args"]]
    assert words[0] == "train"
    params = command.make_context("train", words[1:]).params
    config = load_train_config(params["config_ref"], parse_overrides(params["overrides"]))
    assert config.distribute == "multiworker"
    assert params["data_uri"].startswith(root) and params["out_uri"].startswith(root)
    pod = job["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["automountServiceAccountToken"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    one(objects, "ServiceAccount", pod["serviceAccountName"])
    container_max = one(objects, "LimitRange")["spec"]["limits"][0]["max"]
    hard = one(objects, "ResourceQuota")["spec"]["hard"]
    for resource, limit in container["resources"]["limits"].items():
        assert quantity(limit) <= quantity(container_max[resource])
        assert job["spec"]["parallelism"] * quantity(limit) <= quantity(hard[f"limits.{resource}"])
