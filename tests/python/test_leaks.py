"""When a key leaks: GitHub's secret scanning partner contract, signed the
way GitHub signs (ECDSA P-256 / SHA-256, keys published as PEM in its JSON),
with Python's `cryptography`; `scopegate keys report-leak`; and the token
pattern `scopegate secret-patterns` prints, run on tokens scopegate issued
and on near misses."""
import base64
import http.client
import json
import os
import re
import signal
import subprocess
import time

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from conftest import BIN, Scopegate


def key_pair():
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, pem


def published(*keys):
    """GitHub's file, as api.github.com/meta/public_keys/secret_scanning serves it."""
    return json.dumps({"public_keys": [{"key_identifier": identifier, "key": pem, "is_current": True}
                                       for identifier, pem in keys]})


@pytest.fixture(scope="module")
def github():
    private, pem = key_pair()
    return {"id": "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a", "private": private, "pem": pem}


@pytest.fixture(scope="module")
def server(github, tmp_path_factory):
    keys = tmp_path_factory.mktemp("github") / "keys.json"
    keys.write_text(published((github["id"], github["pem"])))
    server = Scopegate("--github-scanning-keys", str(keys))
    server.keys_file = keys
    yield server
    server.stop()


def post(server, body, key_id=None, signature=None, raw=None):
    host, port = server.http_addr.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": "application/json"}
    if key_id is not None:
        headers["Github-Public-Key-Identifier"] = key_id
    if signature is not None:
        headers["Github-Public-Key-Signature"] = signature
    payload = raw if raw is not None else body
    connection.request("POST", "/secret-scanning/github", body=payload, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, (json.loads(data) if data else None)


def sign(private, body):
    return base64.b64encode(private.sign(body, ec.ECDSA(hashes.SHA256()))).decode()


def decide(server, token, scope="mail.send"):
    """`scopegate check`: exit 0 allowed, 1 denied."""
    return subprocess.run([BIN, "check", "--server", f"http://{server.addr}", "--scope", scope],
                          env=dict(os.environ, SCOPEGATE_CHECK_TOKEN=token), capture_output=True).returncode


def test_a_true_leak_disables_the_key_and_a_forged_report_changes_nothing(server, github):
    leaked = server.create_key("mail.send")
    bystander = server.create_key("mail.send")
    fake = leaked["token"][:-8] + "AAAAAAAA"
    url = "https://github.com/octo/repo/blob/abc/config.py"
    body = json.dumps([
        {"token": leaked["token"], "type": "scopegate_api_key", "url": url, "source": "content"},
        {"token": fake, "type": "scopegate_api_key", "url": url, "source": "content"},
        {"token": "SG.not-even-a-token", "type": "scopegate_api_key", "url": url, "source": "content"},
    ]).encode()

    # Forged: another key pair, a tampered body, an unknown key id, no headers.
    other, _ = key_pair()
    for key_id, signature, payload in [
        (github["id"], sign(other, body), body),
        (github["id"], sign(github["private"], body), body.replace(b"content", b"CONTENT")),
        ("not-a-published-key", sign(github["private"], body), body),
        (None, None, body),
    ]:
        status, answer = post(server, None, key_id, signature, raw=payload)
        assert status == 401, (status, answer)
    assert decide(server, leaked["token"]) == 0 and decide(server, bystander["token"]) == 0

    status, answer = post(server, None, github["id"], sign(github["private"], body), raw=body)
    assert status == 200, answer
    assert [entry["label"] for entry in answer] == ["true_positive", "false_positive", "false_positive"]
    assert [entry["token_raw"] for entry in answer] == [leaked["token"], fake, "SG.not-even-a-token"]
    # Disabled at once; marked exposed with where it was seen; audited.
    assert decide(server, leaked["token"]) == 1
    assert decide(server, bystander["token"]) == 0
    shown = server.cli("keys", "get", leaked["key"]["key_id"])
    assert shown["enabled"] is False and shown["exposed"]["url"] == url, shown
    events = server.cli("audit", "--key", leaked["key"]["key_id"])["events"]
    assert [event["action"] for event in events] == ["create", "leak"], events
    # A second report of the same token: still a true positive, nothing new to do.
    status, answer = post(server, None, github["id"], sign(github["private"], body), raw=body)
    assert answer[0]["label"] == "true_positive"
    # The token never reaches the log.
    assert leaked["token"].rsplit(".", 1)[1] not in open(server.log_path).read()


def test_bad_reports_are_refused_by_name(server, github):
    for payload in [b"{}", b"not json", json.dumps([{"type": "x"}]).encode()]:
        status, answer = post(server, None, github["id"], sign(github["private"], payload), raw=payload)
        assert status == 400, (payload, status, answer)
    too_many = json.dumps([{"token": "SG.x"}] * 1001).encode()
    status, answer = post(server, None, github["id"], sign(github["private"], too_many), raw=too_many)
    assert status == 400 and "1000" in answer["errors"][0]["message"], answer
    huge = b"[" + b" " * (1 << 20) + b"]"
    status, _ = post(server, None, github["id"], sign(github["private"], huge), raw=huge)
    assert status == 413


def test_the_keys_file_is_reloaded_on_sighup(server, github):
    private, pem = key_pair()
    body = json.dumps([{"token": "SG.none", "type": "t", "url": "u", "source": "s"}]).encode()
    status, _ = post(server, None, "next", sign(private, body), raw=body)
    assert status == 401
    server.keys_file.write_text(published((github["id"], github["pem"]), ("next", pem)))
    server.proc.send_signal(signal.SIGHUP)
    deadline = time.time() + 10
    while time.time() < deadline:
        status, answer = post(server, None, "next", sign(private, body), raw=body)
        if status == 200:
            break
        time.sleep(0.05)
    assert status == 200 and answer[0]["label"] == "false_positive", (status, answer)
    # A file that no longer parses leaves the keys in force.
    server.keys_file.write_text("{")
    server.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert post(server, None, "next", sign(private, body), raw=body)[0] == 200


def test_report_leak_from_another_scanner(server):
    leaked = server.create_key("mail.send")
    kept = server.create_key("mail.send")
    out = subprocess.run(
        [BIN, "keys", "report-leak", "--server", f"http://{server.addr}", "--data-dir", server.data, "--json",
         "--url", "https://gist.example/x", "--source", "trufflehog"],
        input=leaked["token"] + "\nSG.nothing\n", capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == {"reported": 2, "true_positives": 1, "leaked": [True, False]}
    assert decide(server, leaked["token"]) == 1 and decide(server, kept["token"]) == 0
    # An API key may not report (admin only).
    manager = server.cli("keys", "create", "--account", "acme", "--name", "m", "--grant", "api_keys=full",
                         "--scope", "mail.send")
    refused = subprocess.run(
        [BIN, "keys", "report-leak", "--server", f"http://{server.addr}"],
        input=kept["token"] + "\n", capture_output=True, text=True,
        env=dict(os.environ, SCOPEGATE_AUTH=manager["token"]))
    assert refused.returncode == 2 and "admin" in refused.stderr, refused.stderr
    assert decide(server, kept["token"]) == 0


def test_secret_patterns_find_issued_tokens_and_nothing_near(server):
    def pattern(fmt, prefix="SG"):
        return subprocess.run([BIN, "secret-patterns", "--format", fmt, "--prefix", prefix],
                              capture_output=True, text=True, check=True).stdout
    regex = pattern("regex").strip()
    gitleaks = pattern("gitleaks")
    assert f"regex = '''{regex}'''" in gitleaks, gitleaks
    assert regex in pattern("trufflehog")
    tokens = [server.create_key("mail.send")["token"] for _ in range(5)]
    for token in tokens:
        assert re.search(regex, f"api_key = \"{token}\"\n"), token
        assert re.fullmatch(regex, token), token
    token = tokens[0]
    prefix, key_id, rest = token.split(".")
    near = [
        "XG." + key_id + "." + rest,              # another prefix
        prefix + "." + key_id[:-1] + "." + rest,  # short id
        prefix + "." + key_id + "." + rest[:-1],  # short checksum
        prefix + "." + key_id + "." + rest[:-6] + "!!!!!!",
        token + "Z",                              # longer: not a token
    ]
    for miss in near:
        assert not re.fullmatch(regex, miss), miss
        assert not re.search(regex, f" {miss} "), miss
    # Another deployment's prefix.
    assert re.fullmatch(pattern("regex", "ACME").strip(), "ACME." + key_id + "." + rest)
    bad = subprocess.run([BIN, "secret-patterns", "--prefix", "a.b"], capture_output=True, text=True)
    assert bad.returncode == 2 and "prefix" in bad.stderr
