"""The Helm chart: lint and render for the default values and three values
files, validate every manifest against the Kubernetes schema, parse the Envoy
bootstrap it carries, and check what matters on the rendered objects."""
import json
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
VALUES = [None, "ci/sidecar-values.yaml", "ci/demo-pvc-values.yaml", "ci/demo-uds-values.yaml", "ci/demo-fleet-values.yaml",
          "../../examples/istio/chart-sidecar-values.yaml", "../../examples/istio/chart-service-values.yaml",
          "../../examples/envoy-gateway/chart-values.yaml", "../../examples/forward-auth/chart-values.yaml"]
# Kinds whose schema is a CRD: checked by validate_crds() instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "AuthorizationPolicy", "ServiceEntry", "SecurityPolicy", "IstioOperator"}


def helm(*args):
    result = subprocess.run([HELM, *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(values, *sets):
    args = ["template", "t", str(CHART)] + (["-f", str(CHART / values)] if values else [])
    for item in sets:
        args += ["--set", item]
    return [doc for doc in yaml.safe_load_all(helm(*args)) if doc]


def render_error(values, *sets):
    args = [HELM, "template", "t", str(CHART)] + (["-f", str(CHART / values)] if values else [])
    for item in sets:
        args += ["--set", item]
    result = subprocess.run(args, capture_output=True, text=True)
    assert result.returncode != 0, "rendered, but should have been refused"
    return result.stderr


def validate_crds(objects):
    """Each object checked against its CRD schema (tests/python/validate_crds.mjs)."""
    models = os.environ.get("K8S_MODELS")
    assert models, "K8S_MODELS: the CRD schema packages (scripts/test.sh installs them)"
    result = subprocess.run(["node", str(ROOT / "tests" / "python" / "validate_crds.mjs"), models],
                            input=json.dumps(objects), capture_output=True, text=True)
    return result.stdout.splitlines()


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
        if doc["kind"] in CRD_KINDS:
            continue  # not in the Kubernetes schema
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    istio = [doc for doc in docs if doc["apiVersion"].split("/")[0].endswith("istio.io")]
    if istio:
        assert validate_crds(istio) == [f"ok {doc['kind']} {doc['metadata']['name']}" for doc in istio]


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


def test_rate_limit_counters_in_redis_are_wired_with_the_password_from_a_secret():
    docs = render("ci/demo-fleet-values.yaml", "rateLimits.redis=redis://redis:6379/0",
                  "rateLimits.passwordSecret=redis-auth", "rateLimits.failClosed=true")
    (deployment,) = by_kind(docs, "Deployment")
    scopegate = container(deployment, "scopegate")
    args = scopegate["args"]
    assert "--rate-limit-redis=redis://redis:6379/0" in args
    assert "--rate-limit-redis-password-file=/etc/scopegate/redis-auth/password" in args
    assert "--rate-limit-fail-closed" in args
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["scopegate-redis-auth"]["secret"] == {
        "secretName": "redis-auth", "defaultMode": 0o400, "items": [{"key": "password", "path": "password"}]}
    mounts = {m["name"]: m for m in scopegate["volumeMounts"]}
    assert mounts["scopegate-redis-auth"]["readOnly"]
    # The flags the chart renders are ones the binary takes.
    from conftest import BIN
    help_text = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True).stdout
    for flag in ("--rate-limit-redis ", "--rate-limit-redis-password-file", "--rate-limit-fail-closed"):
        assert flag in help_text, flag
    # Without redis: counters in memory, nothing rendered.
    (plain,) = by_kind(render(None), "Deployment")
    assert not any(a.startswith("--rate-limit") for a in container(plain, "scopegate")["args"])


def test_usage_is_on_by_default_and_its_flags_are_ones_the_binary_takes():
    args = lambda *sets: container(by_kind(render(None, *sets), "Deployment")[0], "scopegate")["args"]
    assert not any(a.startswith("--usage") for a in args()), "the defaults need no flag"
    assert "--usage=off" in args("usage.enabled=false")
    assert "--usage-flush-secs=30" in args("usage.flushSecs=30")
    from conftest import BIN
    help_text = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True).stdout
    for flag in ("--usage <USAGE>", "--usage-flush-secs"):
        assert flag in help_text, flag


ISTIO = ROOT / "examples" / "istio"


def duration_seconds(text):
    """An Istio (`0.25s`) or Gateway API (`250ms`) duration, in seconds."""
    if text.endswith("ms"):
        return float(text[:-2]) / 1000
    assert text.endswith("s"), text
    return float(text[:-1])


def providers(path):
    doc = yaml.safe_load(open(path))
    mesh = doc["spec"]["meshConfig"] if doc.get("kind") == "IstioOperator" else doc["meshConfig"]
    return {p["name"]: p["envoyExtAuthzGrpc"] for p in mesh["extensionProviders"]}


@pytest.mark.parametrize("path", ["istiod-values.yaml", "istiod-values-service.yaml", "istio-operator.yaml"])
def test_every_istio_provider_fails_closed_within_a_second(path):
    (provider,) = providers(ISTIO / path).values()
    # Istio's default timeout is 600 s: every example says its own.
    assert 0 < duration_seconds(provider["timeout"]) < 1
    assert provider["failOpen"] is False
    assert provider["statusOnError"] == "503"
    assert set(provider) <= {"service", "port", "timeout", "failOpen", "statusOnError",
                             "includeRequestBodyInCheck", "clearRouteCache"}


def test_the_istio_operator_fragment_validates_and_matches_the_istiod_values():
    operator = yaml.safe_load(open(ISTIO / "istio-operator.yaml"))
    assert validate_crds([operator]) == ["ok IstioOperator scopegate-provider"]
    assert providers(ISTIO / "istio-operator.yaml") == providers(ISTIO / "istiod-values.yaml")


def test_istio_sidecar_mode_wires_the_provider_to_scopegate_in_the_pod():
    docs = render("../../examples/istio/chart-sidecar-values.yaml")
    (entry,) = by_kind(docs, "ServiceEntry")
    (policy,) = by_kind(docs, "AuthorizationPolicy")
    (deployment,) = by_kind(docs, "Deployment")
    (service,) = by_kind(docs, "Service")
    (name, provider), = providers(ISTIO / "istiod-values.yaml").items()
    scopegate = container(deployment, "scopegate")
    grpc_port = next(p["containerPort"] for p in scopegate["ports"] if p["name"] == "grpc")

    # The provider's host resolves to scopegate on loopback, on its gRPC port.
    assert entry["spec"]["hosts"] == [provider["service"]]
    assert entry["spec"]["resolution"] == "STATIC"
    assert entry["spec"]["endpoints"] == [{"address": "127.0.0.1"}]
    assert entry["spec"]["ports"] == [{"number": provider["port"], "name": "grpc", "protocol": "GRPC"}]
    assert provider["port"] == grpc_port
    assert f"--listen=127.0.0.1:{grpc_port}" in scopegate["args"]

    # CUSTOM on the app pods, through the provider, health and metrics left out.
    assert policy["spec"]["action"] == "CUSTOM"
    assert policy["spec"]["provider"] == {"name": name}
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert "targetRefs" not in policy["spec"]
    (rule,) = policy["spec"]["rules"]
    assert {"/healthz", "/readyz", "/metrics"} <= set(rule["to"][0]["operation"]["notPaths"])

    # istio-proxy replaces the demo's Envoy, and reaches the app on the pod address.
    pod = deployment["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["app", "scopegate"]
    assert not any(v["name"] == "envoy-config" for v in pod["spec"]["volumes"])
    assert "-listen=0.0.0.0:3000" in container(deployment, "app")["args"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert any(p["name"] == "http" for p in container(deployment, "app")["ports"])
    excluded = pod["metadata"]["annotations"]["traffic.sidecar.istio.io/excludeInboundPorts"].split(",")
    assert {str(p["containerPort"]) for p in scopegate["ports"]} <= set(excluded)

    # Paths can be narrowed.
    (narrow,) = by_kind(render("../../examples/istio/chart-sidecar-values.yaml", "istio.paths={/v3/*}"),
                        "AuthorizationPolicy")
    assert narrow["spec"]["rules"][0]["to"][0]["operation"]["paths"] == ["/v3/*"]


def test_service_mode_is_one_authorizer_for_many_workloads():
    docs = render("../../examples/istio/chart-service-values.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    (service,) = by_kind(docs, "Service")
    (budget,) = by_kind(docs, "PodDisruptionBudget")
    (network,) = by_kind(docs, "NetworkPolicy")
    (policy,) = by_kind(docs, "AuthorizationPolicy")
    assert not by_kind(docs, "ServiceEntry")
    assert deployment["spec"]["replicas"] >= 2
    pod = deployment["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == ["scopegate"]
    scopegate = container(deployment, "scopegate")
    args = scopegate["args"]
    grpc_port = next(p["containerPort"] for p in scopegate["ports"] if p["name"] == "grpc")
    assert f"--listen=0.0.0.0:{grpc_port}" in args
    assert any(a.startswith("--manage-listen=127.0.0.1:") for a in args)
    assert "--store=etcd" in args
    assert not any(a.startswith("--uds") for a in args)
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert probe in scopegate
    context = scopegate["securityContext"]
    assert context["runAsNonRoot"] and context["readOnlyRootFilesystem"]

    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["appProtocol"] == "grpc" and grpc["targetPort"] == "grpc"
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["minAvailable"] == 1

    # Only the listed proxies reach the check port.
    (check_rule, metrics_rule) = network["spec"]["ingress"]
    assert check_rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
    assert check_rule["from"][0]["podSelector"]["matchLabels"] == {"gateway.networking.k8s.io/gateway-name": "waypoint"}
    assert "from" not in metrics_rule

    # The CUSTOM policy targets the waypoint; the provider names the Service.
    assert policy["spec"]["targetRefs"] == [{"kind": "Gateway", "group": "gateway.networking.k8s.io", "name": "waypoint"}]
    assert "selector" not in policy["spec"]
    (provider,) = providers(ISTIO / "istiod-values-service.yaml").values()
    release_docs = [doc for doc in yaml.safe_load_all(helm(
        "template", "scopegate", str(CHART), "-n", "scopegate", "-f",
        str(ROOT / "examples" / "istio" / "chart-service-values.yaml"))) if doc]
    (release_service,) = by_kind(release_docs, "Service")
    name = release_service["metadata"]["name"]
    assert provider["service"] == f"{name}.scopegate.svc.cluster.local"
    assert provider["port"] == grpc["port"]


def test_envoy_gateway_calls_the_service_and_fails_closed():
    docs = render("../../examples/envoy-gateway/chart-values.yaml")
    (policy,) = by_kind(docs, "SecurityPolicy")
    (service,) = by_kind(docs, "Service")
    assert policy["apiVersion"] == "gateway.envoyproxy.io/v1alpha1"
    ext_auth = policy["spec"]["extAuth"]
    (backend,) = ext_auth["grpc"]["backendRefs"]
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert backend == {"name": service["metadata"]["name"], "port": grpc["port"]}
    assert ext_auth["failOpen"] is False
    assert 0 < duration_seconds(ext_auth["timeout"]) < 1
    # targetRefs are Gateway API LocalPolicyTargetReferences.
    for ref in policy["spec"]["targetRefs"]:
        assert set(ref) == {"group", "kind", "name"} and ref["group"] == "gateway.networking.k8s.io"
        assert ref["kind"] in {"Gateway", "HTTPRoute", "GRPCRoute"}


@pytest.mark.parametrize("sets,reason", [
    (["mode=service"], "fleet.enabled=true"),
    (["mode=service", "fleet.enabled=true", "fleet.endpoints={http://etcd:2379}", "persistence.type=pvc"], "emptyDir"),
    (["mode=service", "fleet.enabled=true", "fleet.endpoints={http://etcd:2379}", "istio.enabled=true"], "istio.targetRefs"),
    (["istio.enabled=true", "istio.targetRefs[0].kind=Gateway", "istio.targetRefs[0].name=w"], "mode=service"),
    (["envoyGateway.enabled=true"], "mode=service"),
    (["mode=pigeon"], "mode"),
])
def test_wiring_that_cannot_work_is_refused_with_a_reason(sets, reason):
    assert reason in render_error(None, *sets)


SERVICE = ["mode=service", "fleet.enabled=true", "fleet.endpoints={http://etcd:2379}"]


@pytest.mark.parametrize("sets,reason", [
    # The default NetworkPolicy with no peers would let every pod in.
    (SERVICE, "an empty list would let every pod in"),
    # No policy, no TLS, no mesh: bearer tokens in plaintext to the cluster.
    (SERVICE + ["service.networkPolicy.enabled=false"], "service.tls.secretName"),
])
def test_service_mode_never_opens_the_check_port_to_the_cluster(sets, reason):
    assert reason in render_error(None, *sets)


def test_service_mode_with_tls_or_a_mesh_instead_of_a_policy():
    tls = render(None, *SERVICE, "service.networkPolicy.enabled=false", "service.tls.secretName=scopegate-tls")
    (deployment,) = by_kind(tls, "Deployment")
    args = container(deployment, "scopegate")["args"]
    assert "--tls-cert-file=/etc/scopegate/tls/tls.crt" in args and "--tls-key-file=/etc/scopegate/tls/tls.key" in args
    mounts = {m["name"]: m for m in container(deployment, "scopegate")["volumeMounts"]}
    assert mounts["scopegate-tls"]["mountPath"] == "/etc/scopegate/tls" and mounts["scopegate-tls"]["readOnly"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["scopegate-tls"]["secret"]["secretName"] == "scopegate-tls"
    assert not by_kind(tls, "NetworkPolicy")
    mesh = render(None, *SERVICE, "service.networkPolicy.enabled=false", "service.meshMtls=true")
    assert not by_kind(mesh, "NetworkPolicy")
    assert not any(a.startswith("--tls") for a in container(by_kind(mesh, "Deployment")[0], "scopegate")["args"])
    # With peers, the policy names exactly them, never an empty (allow-all) rule.
    peer = "service.networkPolicy.from[0].podSelector.matchLabels.app=gateway"
    (policy,) = by_kind(render(None, *SERVICE, peer), "NetworkPolicy")
    check_rule = policy["spec"]["ingress"][0]
    assert check_rule["from"] == [{"podSelector": {"matchLabels": {"app": "gateway"}}}]


FORWARD_AUTH = ROOT / "examples" / "forward-auth"
# What scopegate sets on an allowed request (ProxyConfig's defaults).
IDENTITY_HEADERS = ["x-scopegate-key-id", "x-scopegate-account-id"]


def test_forward_auth_in_service_mode_is_a_port_behind_the_policy():
    docs = render("../../examples/forward-auth/chart-values.yaml")
    (deployment,) = by_kind(docs, "Deployment")
    (service,) = by_kind(docs, "Service")
    (network,) = by_kind(docs, "NetworkPolicy")
    scopegate = container(deployment, "scopegate")
    port = next(p["containerPort"] for p in scopegate["ports"] if p["name"] == "forward-auth")
    assert f"--forward-auth-listen=0.0.0.0:{port}" in scopegate["args"]
    assert "--forward-auth-trusted-proxies=10.0.0.0/8" in scopegate["args"]
    door = next(p for p in service["spec"]["ports"] if p["name"] == "forward-auth")
    assert door["targetPort"] == "forward-auth"
    # The same peers as the check port, and no one else.
    (check_rule, metrics_rule) = network["spec"]["ingress"]
    assert {"port": "forward-auth", "protocol": "TCP"} in check_rule["ports"]
    assert check_rule["from"]
    assert {"port": "forward-auth", "protocol": "TCP"} not in metrics_rule["ports"]
    # Sidecar mode: loopback, for the proxy in the pod; off by default.
    (sidecar,) = by_kind(render(None, "forwardAuth.enabled=true"), "Deployment")
    assert f"--forward-auth-listen=127.0.0.1:{port}" in container(sidecar, "scopegate")["args"]
    (default,) = by_kind(render(None), "Deployment")
    assert not any(a.startswith("--forward-auth") for a in container(default, "scopegate")["args"])


def test_ingress_nginx_and_traefik_examples_call_the_door_and_copy_the_identity():
    (ingress,) = yaml.safe_load_all((FORWARD_AUTH / "ingress-nginx.yaml").read_text())
    kubernetes_validate.validate(ingress, KUBERNETES_VERSION, strict=True)
    annotations = ingress["metadata"]["annotations"]
    values = yaml.safe_load((FORWARD_AUTH / "chart-values.yaml").read_text())
    port = values["forwardAuth"]["port"]
    assert annotations["nginx.ingress.kubernetes.io/auth-url"].endswith(f":{port}/")
    copied = annotations["nginx.ingress.kubernetes.io/auth-response-headers"].lower().split(",")
    assert copied == IDENTITY_HEADERS
    # No registry package ships Traefik's CRD schema: its fields, asserted.
    (middleware,) = yaml.safe_load_all((FORWARD_AUTH / "traefik.yaml").read_text())
    assert middleware["apiVersion"] == "traefik.io/v1alpha1" and middleware["kind"] == "Middleware"
    forward = middleware["spec"]["forwardAuth"]
    assert set(forward) <= {"address", "trustForwardHeader", "authResponseHeaders"}
    assert forward["address"].endswith(f":{port}/")
    assert forward["trustForwardHeader"] is False
    assert [h.lower() for h in forward["authResponseHeaders"]] == IDENTITY_HEADERS


def test_gateway_api_external_auth_and_envoy_http_mode_use_the_path_prefix():
    (route,) = yaml.safe_load_all((FORWARD_AUTH / "httproute.yaml").read_text())
    (rule,) = route["spec"]["rules"]
    (external,) = [f["externalAuth"] for f in rule["filters"] if f["type"] == "ExternalAuth"]
    # The registry package ships the standard channel, whose filter types
    # leave out the experimental ExternalAuth: the route is checked without
    # that filter, the filter's config against its own schema.
    standard = json.loads(json.dumps(route))
    standard["spec"]["rules"][0]["filters"] = [f for f in rule["filters"] if f["type"] != "ExternalAuth"]
    part = {"apiVersion": route["apiVersion"], "kind": "HTTPExternalAuthFilter",
            "metadata": {"name": "scopegate"}, "part": external}
    assert validate_crds([standard, part]) == ["ok HTTPRoute api", "ok HTTPExternalAuthFilter scopegate"]
    assert external["protocol"] == "HTTP"
    assert external["http"]["path"] == "/check"
    assert external["http"]["allowedResponseHeaders"] == IDENTITY_HEADERS
    # Envoy's own schema (xds-protos) for the HTTP-mode ext_authz filter.
    fragment = yaml.safe_load((FORWARD_AUTH / "envoy-http.yaml").read_text())
    config = ext_authz_pb2.ExtAuthz()
    typed = dict(fragment["typed_config"])
    typed.pop("@type")
    json_format.ParseDict(typed, config)
    assert not config.failure_mode_allow
    assert config.http_service.path_prefix == "/check"
    upstream = [p.exact for p in config.http_service.authorization_response.allowed_upstream_headers.patterns]
    assert upstream == IDENTITY_HEADERS
