"""The Grafana dashboard against a real Prometheus: Debian's Prometheus
server scrapes a real scopegate in fleet mode (a real etcd) while it
decides, denies and changes keys; every query of every panel, evaluated
through Prometheus's HTTP API, returns series. The chart ships the same
file as a ConfigMap for Grafana's dashboard sidecar."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import grpc
import pytest
import yaml
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from conftest import BIN, ROOT, Scopegate

DASHBOARD = ROOT / "helm" / "scopegate" / "dashboards" / "scopegate.json"
PROMETHEUS = shutil.which("prometheus")
ETCD = shutil.which("etcd")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, probe, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if probe():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


@pytest.fixture(scope="module")
def etcd():
    assert ETCD, "etcd (Debian's etcd-server; scripts/test.sh installs it)"
    data = tempfile.mkdtemp(prefix="etcd-")
    client, peer = free_port(), free_port()
    proc = subprocess.Popen([ETCD, "--data-dir", data, "--name", "dash",
                             "--listen-client-urls", f"http://127.0.0.1:{client}",
                             "--advertise-client-urls", f"http://127.0.0.1:{client}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"dash=http://127.0.0.1:{peer}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("etcd", lambda: urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1).status == 200)
    yield f"http://127.0.0.1:{client}"
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def server(etcd):
    server = Scopegate("--metrics-listen", "127.0.0.1:0", "--store", "etcd", "--etcd-endpoints", etcd)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def prometheus(server):
    assert PROMETHEUS, "prometheus (Debian's package; scripts/test.sh installs it)"
    work = tempfile.mkdtemp(prefix="prometheus-")
    config = os.path.join(work, "prometheus.yml")
    with open(config, "w") as out:
        yaml.safe_dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                        "scrape_configs": [{"job_name": "scopegate",
                                            "static_configs": [{"targets": [server.metrics_addr]}]}]}, out)
    port = free_port()
    proc = subprocess.Popen([PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={work}/data",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "log"), "w"))
    base = f"http://127.0.0.1:{port}"
    wait_for("prometheus", lambda: urllib.request.urlopen(f"{base}/-/ready", timeout=1).status == 200)
    yield base
    proc.kill()
    proc.wait()


def query(base, expr):
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    answer = json.load(urllib.request.urlopen(url, timeout=5))
    assert answer["status"] == "success", (expr, answer)
    return answer["data"]["result"]


def panel_queries():
    dashboard = json.loads(DASHBOARD.read_text())
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel["targets"]]


def load(server):
    """Decisions (allowed and denied, Check and ext_authz) and key changes."""
    keys = [server.create_key("mail.send") for _ in range(3)]
    for key in keys:
        for scope in ("mail.send", "stats.read"):
            subprocess.run([BIN, "check", "--server", f"http://{server.addr}", "--scope", scope],
                           env=dict(os.environ, SCOPEGATE_CHECK_TOKEN=key["token"]), capture_output=True)
    subprocess.run([BIN, "check", "--server", f"http://{server.addr}", "--scope", "mail.send"],
                   env=dict(os.environ, SCOPEGATE_CHECK_TOKEN="SG.nope"), capture_output=True)
    channel = grpc.insecure_channel(server.addr)
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    for key in keys:
        request = external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(http=attribute_context_pb2.AttributeContext.HttpRequest(
                method="POST", path="/v3/mail/send", headers={"authorization": f"Bearer {key['token']}"}))))
        stub.Check(request, timeout=5)
    channel.close()
    server.cli("keys", "delete", keys[0]["key"]["key_id"])


def test_every_panel_query_returns_series_from_a_real_prometheus(server, prometheus):
    for _ in range(3):
        load(server)
        time.sleep(1)
    queries = panel_queries()
    assert len(queries) >= 12, queries
    missing = []
    deadline = time.time() + 30
    while time.time() < deadline:
        missing = [(title, expr) for title, expr in queries
                   if not query(prometheus, expr.replace("$__rate_interval", "30s"))]
        if not missing:
            break
        load(server)
        time.sleep(1)
    assert not missing, missing


def test_the_dashboard_is_grafanas_shape_and_the_chart_ships_it():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 39 and dashboard["uid"] == "scopegate"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        assert {"h", "w", "x", "y"} <= panel["gridPos"].keys()
    rendered = subprocess.run([os.environ.get("HELM", "helm"), "template", "t", str(ROOT / "helm" / "scopegate"),
                               "--set", "grafanaDashboard.enabled=true"], capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    (configmap,) = [doc for doc in yaml.safe_load_all(rendered.stdout)
                    if doc and doc["kind"] == "ConfigMap" and doc["metadata"]["name"].endswith("-dashboard")]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(configmap["data"]["scopegate.json"]) == dashboard
