"""The Helm chart: lint and render for the default values and three values
files, validate every manifest against the Kubernetes schema, parse the Envoy
bootstrap it carries, and check what matters on the rendered objects."""
import os
import pathlib
import subprocess

import kubernetes_validate
import pytest
import yaml
from google.protobuf import json_format
from envoy.config.bootstrap.v3 import bootstrap_pb2
# Types referenced through `@type` must be registered before parsing.
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2  # noqa: F401
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "scopegate"
HELM = os.environ.get("HELM", "helm")
KUBERNETES_VERSION = "1.33.0"
VALUES = [None, "ci/sidecar-values.yaml", "ci/demo-pvc-values.yaml", "ci/demo-uds-values.yaml", "ci/demo-fleet-values.yaml"]


def helm(*args):
    result = subprocess.run([HELM, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(values):
    args = ["template", "t", str(CHART)] + (["-f", str(CHART / values)] if values else [])
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def by_kind(docs, kind):
    return [doc for doc in docs if doc["kind"] == kind]


def container(deployment, name):
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


@pytest.mark.parametrize("values", VALUES)
def test_lint_render_and_validate(values):
    helm("lint", str(CHART), *(["-f", str(CHART / values)] if values else []))
    docs = render(values)
    assert docs
    for doc in docs:
        if doc["kind"] == "ServiceMonitor":
            continue  # a CRD: not in the Kubernetes schema
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_bad_values_fail_at_install_time():
    result = subprocess.run([HELM, "template", "t", str(CHART), "--set", "transport=pigeon"],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "transport" in result.stderr


@pytest.mark.parametrize("values", [None, "ci/demo-pvc-values.yaml", "ci/demo-uds-values.yaml"])
def test_the_demo_pod_is_wired_safely(values):
    docs = render(values)
    (deployment,) = by_kind(docs, "Deployment")
    (configmap,) = by_kind(docs, "ConfigMap")
    pod = deployment["spec"]["template"]
    scopegate = container(deployment, "scopegate")
    args = scopegate["args"]

    # Authorize/ext_authz on loopback only (no token-validity oracle for the
    # cluster); probes and metrics on the pod network.
    grpc_port = next(p["containerPort"] for p in scopegate["ports"] if p["name"] == "grpc")
    assert f"--listen=127.0.0.1:{grpc_port}" in args
    assert not any("0.0.0.0" in a for a in args if not a.startswith("--metrics-listen="))
    assert any(a.startswith("--manage-listen=127.0.0.1:") for a in args)
    assert scopegate["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    for probe in ("readinessProbe", "startupProbe"):
        assert scopegate[probe]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    metrics_port = next(p["containerPort"] for p in scopegate["ports"] if p["name"] == "metrics")
    assert f"--metrics-listen=0.0.0.0:{metrics_port}" in args

    # Non-root, read-only root filesystem, no capabilities, for every container.
    for c in pod["spec"]["containers"]:
        context = c["securityContext"]
        assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert context["seccompProfile"]["type"] == "RuntimeDefault"

    # The admin token comes from a Secret.
    assert "--admin-token-file=/etc/scopegate/admin/token" in args
    admin = next(v for v in pod["spec"]["volumes"] if v["name"] == "scopegate-admin")
    assert admin["secret"]["secretName"]
    assert admin["secret"]["defaultMode"] == 0o400  # scopegate refuses a world-readable token
    assert by_kind(docs, "Secret")[0]["metadata"]["name"] == admin["secret"]["secretName"]

    # A bounded runtime: a sidecar must not start one thread per node CPU.
    env = {e["name"]: e["value"] for e in scopegate.get("env", [])}
    assert env["SCOPEGATE_WORKER_THREADS"] == "2"
    assert env["SCOPEGATE_SLED_CACHE_MIB"] == "16"

    # A config change rolls the pods.
    assert len(pod["metadata"]["annotations"]["checksum/config"]) == 64

    # The Envoy bootstrap parses, fails closed, and reaches scopegate where it listens.
    bootstrap = json_format.ParseDict(yaml.safe_load(configmap["data"]["envoy.yaml"]), bootstrap_pb2.Bootstrap())
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    address = clusters["scopegate"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    uds = next((a.split("=", 1)[1] for a in args if a.startswith("--uds=")), None)
    if uds:
        assert address.pipe.path == uds
        socket_dir = uds.rsplit("/", 1)[0]
        for name in ("envoy", "scopegate"):
            mounts = {m["mountPath"] for m in container(deployment, name)["volumeMounts"]}
            assert socket_dir in mounts, f"{name} does not mount {socket_dir}"
    else:
        assert address.socket_address.port_value == grpc_port

    persistence = next(v for v in pod["spec"]["volumes"] if v["name"] == "scopegate-data")
    if values == "ci/demo-pvc-values.yaml":
        assert persistence["persistentVolumeClaim"]["claimName"] == by_kind(docs, "PersistentVolumeClaim")[0]["metadata"]["name"]
        assert "routes.toml" in configmap["data"]
        assert "--routes=/etc/scopegate/config/routes.toml" in args
    else:
        assert "emptyDir" in persistence


def test_chart_envoy_config_is_the_example_config():
    """The chart's Envoy bootstrap and examples/envoy.yaml are one config."""
    docs = render("ci/demo-pvc-values.yaml")  # transport: tcp, default ports
    (configmap,) = by_kind(docs, "ConfigMap")
    chart = json_format.ParseDict(yaml.safe_load(configmap["data"]["envoy.yaml"]), bootstrap_pb2.Bootstrap())
    example = json_format.ParseDict(
        yaml.safe_load(open(ROOT / "examples" / "envoy.yaml")), bootstrap_pb2.Bootstrap())
    assert chart == example


def test_service_monitor_scrapes_the_metrics_port():
    docs = render("ci/demo-uds-values.yaml")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    (service,) = by_kind(docs, "Service")
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_sidecar_mode_renders_only_what_a_team_includes():
    docs = render("ci/sidecar-values.yaml")
    assert {doc["kind"] for doc in docs} == {"ConfigMap"}
    # The snippet itself renders through the demo, whose container it is.


def test_fleet_mode_shares_keys_through_etcd_across_replicas():
    docs = render("ci/demo-fleet-values.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    scopegate = container(deployment, "scopegate")
    args = scopegate["args"]
    assert "--store=etcd" in args
    assert "--etcd-endpoints=https://etcd-0.etcd:2379,https://etcd-1.etcd:2379,https://etcd-2.etcd:2379" in args
    assert "--etcd-prefix=/scopegate/v1/" in args
    assert "--etcd-ca-file=/etc/scopegate/etcd-tls/ca.crt" in args
    assert "--etcd-password-file=/etc/scopegate/etcd-auth/password" in args
    assert "--etcd-user=$(SCOPEGATE_ETCD_USER_NAME)" in args
    assert "--max-staleness-secs=60" in args
    env = {e["name"]: e for e in scopegate["env"]}
    assert env["SCOPEGATE_ETCD_USER_NAME"]["valueFrom"]["secretKeyRef"] == {"name": "scopegate-etcd-auth", "key": "user"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["scopegate-etcd-tls"]["secret"]["secretName"] == "scopegate-etcd-tls"
    assert volumes["scopegate-etcd-auth"]["secret"]["defaultMode"] == 0o400
    mounts = {m["name"]: m for m in scopegate["volumeMounts"]}
    assert mounts["scopegate-etcd-tls"]["readOnly"] and mounts["scopegate-etcd-auth"]["readOnly"]
    # Standalone renders none of it.
    (standalone,) = by_kind(render(None), "Deployment")
    assert not any(a.startswith("--store") for a in container(standalone, "scopegate")["args"])
