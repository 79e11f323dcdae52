"""The alerts: Prometheus's own promtool checks the rules file and runs its
unit tests (each alert fires on its bad series, stays silent on the good);
every metric an alert reads is one scopegate exports; every alert has its
runbook section; the chart renders the same rules as a PrometheusRule whose
shape the operator's schema accepts (a schema of the fields it reads)."""
import os
import pathlib
import re
import shutil
import subprocess

import jsonschema
import pytest
import yaml

from conftest import ROOT

ALERTS = ROOT / "helm" / "scopegate" / "alerts"
PROMTOOL = shutil.which("promtool")
HELM = os.environ.get("HELM", "helm")


def promtool(*args):
    assert PROMTOOL, "promtool (Debian's prometheus package; scripts/test.sh installs it)"
    result = subprocess.run([PROMTOOL, *args], cwd=ALERTS, capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def rules():
    return yaml.safe_load((ALERTS / "scopegate.rules.yaml").read_text())["groups"][0]["rules"]


def test_promtool_checks_the_rules_and_runs_their_unit_tests():
    code, out = promtool("check", "rules", "scopegate.rules.yaml")
    assert code == 0 and "SUCCESS: 12 rules found" in out, out
    code, out = promtool("test", "rules", "scopegate.rules.test.yaml")
    assert code == 0 and "SUCCESS" in out, out
    tested = set(re.findall(r"alertname: (\w+)", (ALERTS / "scopegate.rules.test.yaml").read_text()))
    assert tested == {rule["alert"] for rule in rules()}, tested


def test_a_unit_test_fails_when_an_alert_fires_on_the_good_series(tmp_path):
    """The unit tests can fail: a threshold that also catches the good series."""
    for name in ("scopegate.rules.yaml", "scopegate.rules.test.yaml"):
        shutil.copy(ALERTS / name, tmp_path / name)
    broken = (tmp_path / "scopegate.rules.yaml").read_text().replace(
        "(scopegate_fleet_seconds_since_contact) > 15", "(scopegate_fleet_seconds_since_contact) > 0")
    (tmp_path / "scopegate.rules.yaml").write_text(broken)
    result = subprocess.run([PROMTOOL, "test", "rules", "scopegate.rules.test.yaml"], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode != 0 and 'instance="fresh"' in result.stdout + result.stderr


def test_every_metric_an_alert_reads_is_exported():
    exported = set(re.findall(r'"(scopegate_[a-z_]+)"', (ROOT / "src" / "telemetry.rs").read_text()))
    for rule in rules():
        for name in re.findall(r"\b(scopegate_[a-z_]+?)(?:_bucket)?\b[{\[)\s]", rule["expr"] + " "):
            assert name in exported, (rule["alert"], name)


def test_every_alert_has_its_runbook_section():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    for rule in rules():
        assert f"## {rule['alert']}\n" in runbook, rule["alert"]
        assert rule["annotations"]["runbook_url"].endswith("#" + rule["alert"].lower())


PROMETHEUS_RULE = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "PrometheusRule"},
        "spec": {"type": "object", "additionalProperties": False, "required": ["groups"], "properties": {
            "groups": {"type": "array", "items": {
                "type": "object", "required": ["name", "rules"], "additionalProperties": False,
                "properties": {"name": {"type": "string"}, "interval": {"type": "string"}, "rules": {
                    "type": "array", "items": {
                        "type": "object", "required": ["expr"], "additionalProperties": False,
                        "properties": {
                            "alert": {"type": "string"}, "record": {"type": "string"},
                            "expr": {"type": "string"}, "for": {"type": "string", "pattern": "^[0-9]+[smhdwy]$"},
                            "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
                        }}}}}}}},
    },
}


def test_the_chart_renders_the_rules_as_a_prometheus_rule():
    rendered = subprocess.run([HELM, "template", "t", str(ROOT / "helm" / "scopegate"),
                               "--set", "prometheusRule.enabled=true", "--set", "prometheusRule.labels.release=kps"],
                              capture_output=True, text=True)
    assert rendered.returncode == 0, rendered.stderr
    docs = [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]
    (rule,) = [doc for doc in docs if doc["kind"] == "PrometheusRule"]
    jsonschema.validate(rule, PROMETHEUS_RULE)
    assert rule["metadata"]["labels"]["release"] == "kps"
    assert rule["spec"]["groups"] == yaml.safe_load((ALERTS / "scopegate.rules.yaml").read_text())["groups"]
    off = subprocess.run([HELM, "template", "t", str(ROOT / "helm" / "scopegate")], capture_output=True, text=True)
    assert "PrometheusRule" not in off.stdout


def test_the_certificate_expiry_the_alert_reads_is_the_served_certificates(tmp_path):
    """A real certificate (Python's `cryptography`) served by a real sidecar:
    the gauge holds its notAfter, to the second."""
    import datetime
    import urllib.request

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from conftest import Scopegate

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scopegate.test")])
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    not_after = now + datetime.timedelta(days=10, hours=3)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("scopegate.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    os.chmod(key_file, 0o600)
    server = Scopegate("--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
                       "--metrics-listen", "127.0.0.1:0")
    try:
        text = urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=5).read().decode()
        value = re.search(r"^scopegate_tls_cert_expiry_timestamp_seconds (\S+)$", text, re.M)
        assert value, text
        assert float(value.group(1)) == not_after.timestamp()
    finally:
        server.stop()
