"""The Ray NetworkPolicies, evaluated: which pod (labels, namespace) may open which port of which Ray pod, by the
NetworkPolicy rules of the Kubernetes API (a pod selected by an Ingress policy accepts only what some rule of some
policy selecting it allows; peers in one `from` entry with both selectors must match both)."""

from __future__ import annotations

import shutil
from typing import Any

import pytest
from tests.k8s_validate import render
from tests.test_k8s import K8S, OVERLAYS, RUN_NAMESPACE, cluster_specs, one

RAY_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001, "metrics": 8080, "raylet_agent": 52365,
             "worker_low": 10002, "worker_high": 19999, "object_manager": 8076}
PROJECT = {"app.kubernetes.io/part-of": "mammoflow"}

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not on PATH (it renders the trees)")


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: [r.obj for r in render(K8S / "overlays" / name)] for name in OVERLAYS}


def matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label selector semantics (an empty selector matches everything)."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def peer_admits(peer: dict[str, Any], policy_ns: str, src_ns: str, src_labels: dict[str, str]) -> bool:
    if "ipBlock" in peer:
        return False  # no ipBlock is used: pods are addressed by labels only
    ns_labels = {"kubernetes.io/metadata.name": src_ns}
    if "namespaceSelector" in peer:
        if not matches(peer["namespaceSelector"], ns_labels):
            return False
    elif src_ns != policy_ns:  # a podSelector alone means the policy's own namespace
        return False
    return matches(peer.get("podSelector"), src_labels)


def allowed(policies: list[dict[str, Any]], dst_ns: str, dst_labels: dict[str, str], port: int,
            src_ns: str, src_labels: dict[str, str]) -> bool | None:
    """True/False when an Ingress policy selects the destination; None when none does (not isolated)."""
    selecting = [p for p in policies if p["metadata"]["namespace"] == dst_ns
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and matches(p["spec"]["podSelector"], dst_labels)]
    if not selecting:
        return None
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            peers = rule.get("from")
            if peers is None or any(peer_admits(peer, dst_ns, src_ns, src_labels) for peer in peers):
                return True
    return False


def ray_pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    """(where, labels) of every Ray pod template the overlay creates (standing cluster and the sweep's)."""
    out = []
    for kind, spec in cluster_specs(objects).items():
        out.append((f"{kind} head", spec["headGroupSpec"]["template"]["metadata"]["labels"]))
        out += [(f"{kind} {g['groupName']}", g["template"]["metadata"]["labels"]) for g in spec["workerGroupSpecs"]]
    return out


def policies(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_ray_pod_is_isolated_on_every_ray_port(rendered, overlay):
    objects = rendered[overlay]
    outsider = ("default", {"app": "anything"})
    for where, labels in ray_pods(objects):
        for name, port in RAY_PORTS.items():
            verdict = allowed(policies(objects), "mammoflow", labels, port, *outsider)
            assert verdict is False, f"{overlay}: {where} port {port} ({name}) is open to any pod"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_pods_reach_each_other_on_every_port(rendered, overlay):
    objects = rendered[overlay]
    pods = ray_pods(objects)
    for where, labels in pods:
        for _, source in pods:
            for port in RAY_PORTS.values():
                assert allowed(policies(objects), "mammoflow", labels, port, "mammoflow", source), (where, port)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_project_steps_reach_only_the_heads_client_and_jobs_ports(rendered, overlay):
    objects = rendered[overlay]
    steps_ns = RUN_NAMESPACE[overlay]
    sweep_step = {**PROJECT, "app.kubernetes.io/component": "sweep"}
    other_step = {**PROJECT, "app.kubernetes.io/component": "preprocess"}
    for where, labels in ray_pods(objects):
        is_head = where.endswith("head")
        for port in RAY_PORTS.values():
            verdict = allowed(policies(objects), "mammoflow", labels, port, steps_ns, sweep_step)
            assert verdict is (is_head and port in (10001, 8265)), (overlay, where, port)
            assert not allowed(policies(objects), "mammoflow", labels, port, steps_ns, other_step)
            # The same labels from a namespace the project does not run in are refused.
            assert not allowed(policies(objects), "mammoflow", labels, port, "team-b", sweep_step)
    if overlay == "standalone":  # standalone KFP runs steps in kubeflow, and only there
        head = ray_pods(objects)[0][1]
        assert allowed(policies(objects), "mammoflow", head, 10001, "kubeflow", sweep_step)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_submitter_prometheus_and_operator_get_one_port_each(rendered, overlay):
    objects = rendered[overlay]
    submitter = one(objects, "RayJob")["spec"]["submitterPodTemplate"]["metadata"]["labels"]
    prometheus = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
    operator = ("kuberay-system", {"app.kubernetes.io/name": "kuberay-operator"})
    for where, labels in ray_pods(objects):
        head = where.endswith("head")
        for port in RAY_PORTS.values():
            checks = {"submitter": (("mammoflow", submitter), head and port == 8265),
                      "prometheus": (prometheus, port == 8080),
                      "operator": (operator, head and port == 8265)}
            for who, ((ns, src), expected) in checks.items():
                assert allowed(policies(objects), "mammoflow", labels, port, ns, src) is expected, (who, where, port)
        # A pod merely named like Prometheus in another namespace is not Prometheus.
        assert not allowed(policies(objects), "mammoflow", labels, 8080, "default", prometheus[1])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_from_selectors_only_select_project_pods_or_named_system_namespaces(rendered, overlay):
    """No rule admits all pods, all namespaces or an IP range: each peer names the project's label or a fixed
    system namespace (monitoring, kuberay-system), and same-namespace peers are project pods."""
    for policy in policies(rendered[overlay]):
        for rule in policy["spec"]["ingress"]:
            assert rule.get("from"), f"{policy['metadata']['name']}: a rule without `from` admits every source"
            for peer in rule["from"]:
                assert "ipBlock" not in peer
                namespaces = (peer.get("namespaceSelector") or {}).get("matchLabels", {})
                if "namespaceSelector" in peer:
                    assert set(namespaces) == {"kubernetes.io/metadata.name"}, peer
                    system = namespaces["kubernetes.io/metadata.name"] in ("monitoring", "kuberay-system")
                    assert system or matches(peer["podSelector"], {}) is False, peer
                if not ("namespaceSelector" in peer and system):
                    assert not matches(peer["podSelector"], {}), "an empty podSelector selects every pod"
                    assert not matches(peer["podSelector"], {"app.kubernetes.io/part-of": "other"}), peer


def test_the_evaluator_knows_isolation_semantics():
    """The helpers above, on a hand-written policy: guards against an evaluator that allows or refuses all."""
    policy = {"metadata": {"namespace": "a"}, "spec": {
        "podSelector": {"matchLabels": {"role": "db"}}, "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "b"}},
                               "podSelector": {"matchLabels": {"role": "web"}}}], "ports": [{"port": 5432}]}]}}
    assert allowed([policy], "a", {"role": "db"}, 5432, "b", {"role": "web"}) is True
    assert allowed([policy], "a", {"role": "db"}, 5433, "b", {"role": "web"}) is False
    assert allowed([policy], "a", {"role": "db"}, 5432, "a", {"role": "web"}) is False
    assert allowed([policy], "a", {"role": "cache"}, 5432, "c", {}) is None
