"""Webhooks as a provider receives them: a real HTTP receiver verifying every
delivery with the `standardwebhooks` package (the specification's own
library), against the real binary — every event type once, a receiver
down for 30 s, kill -9 between commit and delivery, dead letters and
redelivery, three fleet sidecars on a real etcd sending one delivery per
event, and private targets refused."""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from conftest import BIN, Scopegate, wait_for
from selenium.webdriver.common.by import By
from test_console import browser, click_and_load, sign_in, url  # noqa: F401
from test_rest import check_against_spec

ETCD = shutil.which("etcd")


class Receiver:
    """An endpoint: verifies each delivery's signature, keeps what it took."""

    def __init__(self):
        self.lock = threading.Lock()
        self.taken = []  # (webhook-id, body) verified and answered 204
        self.refused = 0  # answered 503 while down
        self.forged = 0  # signatures that did not verify
        self.down = False
        self.delay = 0.0  # seconds before answering (a slow receiver)
        self.secrets = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                with receiver.lock:
                    if receiver.down:
                        receiver.refused += 1
                        self.send_response(503)
                        self.end_headers()
                        return
                    payload = None
                    for secret in receiver.secrets:
                        try:
                            payload = Webhook(secret).verify(body, dict(self.headers))
                            break
                        except WebhookVerificationError:
                            continue
                    if payload is None:
                        receiver.forged += 1
                        self.send_response(400)
                        self.end_headers()
                        return
                    receiver.taken.append((self.headers["webhook-id"], payload))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks"

    def events(self, kind=None):
        with self.lock:
            return [(i, p) for i, p in self.taken if kind is None or p["type"] == kind]

    def close(self):
        self.server.shutdown()



def rest(server, method, path, body=None, token=None, account="acme"):
    host, port = server.http_addr.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    token = token or open(os.path.join(server.data, "admin.token")).read().strip()
    headers = {"Authorization": f"Bearer {token}"}
    if account:
        headers["on-behalf-of"] = account
    if body is not None:
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    # Every answer is one the OpenAPI document describes.
    check_against_spec(method, path, response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    return response.status, (json.loads(data) if data else None)


def endpoint(server, receiver, account="acme", **fields):
    status, hook = rest(server, "POST", "/v3/webhooks", {"url": receiver.url, **fields}, account=account)
    assert status == 201, hook
    assert hook["secret"].startswith("whsec_")
    receiver.secrets.append(hook["secret"])
    return hook


def check(server, token, scope="mail.send"):
    """`scopegate check`: exit 0 allowed, 1 denied."""
    return subprocess.run([BIN, "check", "--server", f"http://{server.addr}", "--scope", scope],
                          env=dict(os.environ, SCOPEGATE_CHECK_TOKEN=token), capture_output=True).returncode


def run(server, *args, stdin=None):
    return subprocess.run([BIN, *args, "--server", f"http://{server.addr}", "--data-dir", server.data, "--json"],
                          check=True, capture_output=True, text=True, input=stdin).stdout


@pytest.fixture
def receiver():
    receiver = Receiver()
    yield receiver
    receiver.close()


def test_every_event_type_arrives_once_signed_and_without_secrets(receiver):
    server = Scopegate("--webhook-allow-private", "--webhook-expiring-before", "1h")
    try:
        hook = endpoint(server, receiver)
        key = json.loads(run(server, "keys", "create", "--account", "acme", "--name", "py",
                             "--scope", "mail.send", "--credits", "100"))
        kid = key["key"]["key_id"]
        run(server, "keys", "update", kid, "--name", "renamed")
        rotated = json.loads(run(server, "keys", "rotate", kid))
        run(server, "keys", "update", kid, "--disable")
        run(server, "keys", "update", kid, "--enable")
        run(server, "keys", "credits", kid, "--set", "1")
        assert check(server, rotated["token"]) == 0
        for _ in range(3):
            assert check(server, rotated["token"]) == 1  # out of credits: one event
        limited = json.loads(run(server, "keys", "create", "--account", "acme", "--name", "l",
                                 "--scope", "mail.send", "--limit", "default=1/minute"))
        assert check(server, limited["token"]) == 0
        for _ in range(3):
            assert check(server, limited["token"]) == 1  # rate limited: one event
        expiring = json.loads(run(server, "keys", "create", "--account", "acme", "--name", "e",
                                  "--scope", "mail.send", "--expires-in-secs", "12"))
        leaked = server.create_key("mail.send")
        run(server, "keys", "report-leak", "--url", "https://github.com/o/r/blob/main/x", stdin=leaked["token"] + "\n")
        run(server, "keys", "delete", kid)
        role = json.loads(run(server, "roles", "create", "--account", "acme", "--name", "r", "--scope", "stats.read"))
        run(server, "roles", "update", role["role_id"], "--scope", "mail.send")
        run(server, "roles", "delete", role["role_id"])
        wanted = {"key.created": 4, "key.updated": 1, "key.rotated": 1, "key.disabled": 1, "key.enabled": 1,
                  "key.deleted": 1, "key.expiring": 1, "key.expired": 1, "key.leaked": 1,
                  "key.rate_limited": 1, "key.credits_updated": 1, "key.credits_exhausted": 1,
                  "role.created": 1, "role.updated": 1, "role.deleted": 1}
        try:
            wait_for("every event type", lambda: all(len(receiver.events(t)) >= n for t, n in wanted.items()), 40)
        except AssertionError:
            log = [line for line in open(server.log_path) if "WARN" in line or "ERROR" in line]
            raise AssertionError(({t: len(receiver.events(t)) for t in wanted}, log[-5:]))
        time.sleep(1.5)  # anything repeated would have come by now
        counts = {t: len(receiver.events(t)) for t in wanted}
        assert counts == wanted
        ids = [i for i, _ in receiver.events()]
        assert len(ids) == len(set(ids)) and receiver.forged == 0
        # Payloads: ids, names, the actor, before/after; never a secret.
        bodies = json.dumps([p for _, p in receiver.events()])
        for token in (key["token"], rotated["token"], limited["token"], expiring["token"], leaked["token"]):
            assert token not in bodies and token.split(".")[-1] not in bodies
        assert hook["secret"] not in bodies
        updated = receiver.events("key.updated")[0][1]["data"]
        assert updated["key_id"] == kid and updated["actor"] == "admin"
        assert updated["before"]["name"] == "py" and updated["after"]["name"] == "renamed"
        exhausted = receiver.events("key.credits_exhausted")[0][1]["data"]
        assert exhausted["key_id"] == kid and exhausted["actor"] == "scopegate"
        leak = receiver.events("key.leaked")[0][1]["data"]
        assert leak["after"]["exposed_url"] == "https://github.com/o/r/blob/main/x"
        assert receiver.events("key.expired")[0][1]["data"]["key_id"] == expiring["key"]["key_id"]
        # One key's events come in the order they happened.
        mine = [p["type"] for _, p in receiver.events() if p["data"].get("key_id") == kid]
        assert mine == ["key.created", "key.updated", "key.rotated", "key.disabled", "key.enabled",
                        "key.credits_updated", "key.credits_exhausted", "key.deleted"]
    finally:
        server.stop()


def test_a_receiver_down_30s_and_a_kill_9_lose_nothing_and_repeat_nothing(receiver):
    server = Scopegate("--webhook-allow-private", "--webhook-max-backoff", "2s")
    endpoint(server, receiver)
    receiver.down = True
    went_down = time.time()
    keys = [server.create_key("mail.send") for _ in range(10)]
    for key in keys:
        run(server, "keys", "update", key["key"]["key_id"], "--name", "second")
    wait_for("attempts refused while down", lambda: receiver.refused >= 10)
    # kill -9 between commit and delivery: the outbox is on disk.
    server.kill()
    server.start()
    restarted = server
    try:
        more = [restarted.create_key("mail.send") for _ in range(5)]
        time.sleep(max(0, 30 - (time.time() - went_down)))
        receiver.down = False
        wait_for("every event after the outage", lambda: len(receiver.events()) >= 25, 30)
        time.sleep(3)  # retries that should not happen would come by now
        ids = [i for i, _ in receiver.events()]
        assert len(ids) == 25 and len(set(ids)) == 25, ids
        for key in keys:
            mine = [p["type"] for _, p in receiver.events() if p["data"].get("key_id") == key["key"]["key_id"]]
            assert mine == ["key.created", "key.updated"], mine
        assert {p["data"]["key_id"] for _, p in receiver.events("key.created")} >= {k["key"]["key_id"] for k in more}
    finally:
        restarted.stop()


def test_dead_letters_are_listed_and_redelivered_once(receiver):
    server = Scopegate("--webhook-allow-private", "--webhook-retry-for", "3s", "--webhook-max-backoff", "1s",
                       "--webhook-timeout", "2s")
    try:
        hook = endpoint(server, receiver, event_types=["key.created"])
        receiver.down = True
        key = server.create_key("mail.send")
        server.cli("keys", "delete", key["key"]["key_id"])  # not a type the endpoint wants
        dead = lambda: json.loads(run(server, "webhooks", "dead-letters", hook["id"]))["dead_letters"]
        wait_for("a dead letter", lambda: len(dead()) == 1, 20)
        letter = dead()[0]
        assert letter["type"] == "key.created" and letter["attempts"] >= 2
        assert "503" in letter["last_error"] and letter["payload"]["data"]["key_id"] == key["key"]["key_id"]
        status, listed = rest(server, "GET", f"/v3/webhooks/{hook['id']}/dead_letters")
        assert status == 200 and listed["result"][0]["event_id"] == letter["event_id"]
        receiver.down = False
        time.sleep(1)
        assert receiver.events() == []  # a dead letter is not retried on its own
        assert json.loads(run(server, "webhooks", "redeliver", hook["id"]))["redelivered"] == 1
        wait_for("the redelivery", lambda: len(receiver.events()) == 1)
        assert receiver.events()[0][0] == letter["event_id"]  # the same webhook-id
        assert dead() == []
        status, body = rest(server, "POST", f"/v3/webhooks/{hook['id']}/dead_letters/redeliver",
                            {"event_id": letter["event_id"]})
        assert status == 404, body
    finally:
        server.stop()


def test_the_console_makes_an_endpoint_and_redelivers_its_dead_letters(receiver, browser):  # noqa: F811
    server = Scopegate("--webhook-allow-private", "--webhook-retry-for", "2s", "--webhook-max-backoff", "1s")
    try:
        sign_in(browser, server, open(os.path.join(server.data, "admin.token")).read().strip())
        browser.get(url(server, "/console/webhooks?account=acme"))
        browser.find_element(By.ID, "url").send_keys(receiver.url)
        browser.find_element(By.CSS_SELECTOR, "input[name=event][value='key.created']").click()
        click_and_load(browser, browser.find_element(By.CSS_SELECTOR, "form.key button[type=submit]"))
        secret = browser.find_element(By.ID, "webhook-secret").text
        assert secret.startswith("whsec_"), browser.page_source
        receiver.secrets.append(secret)
        link = browser.find_element(By.CSS_SELECTOR, "#webhooks tbody a")
        assert link.text == receiver.url
        receiver.down = True
        key = server.create_key("mail.send")
        click_and_load(browser, link)
        assert secret not in browser.page_source  # shown once
        deadline = time.time() + 20
        while not browser.find_elements(By.CSS_SELECTOR, "#dead-letters button"):
            assert time.time() < deadline, browser.page_source
            time.sleep(0.5)
            browser.refresh()
        row = browser.find_element(By.CSS_SELECTOR, "#dead-letters tbody tr")
        event_id = row.find_element(By.TAG_NAME, "code").text
        assert "key.created" in row.text and "503" in row.text
        receiver.down = False
        click_and_load(browser, row.find_element(By.TAG_NAME, "button"))
        assert "None." in browser.find_element(By.ID, "dead-letters").text
        wait_for("the redelivery", lambda: len(receiver.events()) == 1)
        delivered_id, payload = receiver.events()[0]
        assert delivered_id == event_id and payload["data"]["key_id"] == key["key"]["key_id"]
    finally:
        server.stop()


def test_endpoints_are_the_accounts_own_private_targets_refused_secrets_shown_once(receiver):
    server = Scopegate()
    try:
        for url in [receiver.url, "http://169.254.169.254/latest/meta-data", "http://localhost:9/",
                    "http://[::1]/", "http://10.0.0.1/"]:
            status, body = rest(server, "POST", "/v3/webhooks", {"url": url})
            assert status == 400, (url, body)
            assert body["errors"][0]["field"] == "url" and "--webhook-allow-private" in body["errors"][0]["message"]
        for bad, field in [({"url": "ftp://example.com/"}, "url"), ({"url": "https://example.com/", "event_types": ["key.nope"]}, "event_types"),
                           ({"url": "https://example.com/", "colour": "red"}, "colour")]:
            status, body = rest(server, "POST", "/v3/webhooks", bad)
            assert status == 400 and body["errors"][0]["field"] == field, body
        status, made = rest(server, "POST", "/v3/webhooks", {"url": "https://hooks.example.com/a"})
        assert status == 201 and made["secret"].startswith("whsec_")
        status, shown = rest(server, "GET", f"/v3/webhooks/{made['id']}")
        assert status == 200 and "secret" not in shown
        status, rotated = rest(server, "POST", f"/v3/webhooks/{made['id']}/secret")
        assert status == 200 and rotated["secret"] != made["secret"]
        status, listed = rest(server, "GET", "/v3/webhooks")
        assert status == 200 and [h["id"] for h in listed["result"]] == [made["id"]]
        assert made["secret"] not in json.dumps(listed) and rotated["secret"] not in json.dumps(listed)
        # An API key with api_keys.update manages its own account's; another's is not found.
        manager = server.create_key("api_keys.update", account="acme")
        other = server.create_key("api_keys.update", account="globex")
        reader = server.create_key("api_keys.read", account="acme")
        status, _ = rest(server, "GET", f"/v3/webhooks/{made['id']}", token=manager["token"], account=None)
        assert status == 200
        for method, path in [("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/secret"), ("GET", "/dead_letters")]:
            status, _ = rest(server, method, f"/v3/webhooks/{made['id']}{path}", {"enabled": False} if method == "PATCH" else None,
                             token=other["token"], account=None)
            assert status == 404, (method, path)
        status, body = rest(server, "POST", "/v3/webhooks", {"url": "https://e.example.com/"}, token=reader["token"], account=None)
        assert status == 403, body
        status, body = rest(server, "GET", "/v3/webhooks", token=other["token"], account=None)
        assert status == 200 and body["result"] == []
        for n in range(9):
            assert rest(server, "POST", "/v3/webhooks", {"url": f"https://hooks.example.com/{n}"})[0] == 201
        status, body = rest(server, "POST", "/v3/webhooks", {"url": "https://hooks.example.com/11"})
        assert status == 403 and "maximum of 10" in body["errors"][0]["message"], body
        status, _ = rest(server, "DELETE", f"/v3/webhooks/{made['id']}")
        assert status == 204
        assert rest(server, "GET", f"/v3/webhooks/{made['id']}")[0] == 404
        # The CLI speaks the same calls over gRPC.
        made = json.loads(run(server, "webhooks", "create", "--account", "globex", "--url", "https://hooks.example.com/g",
                              "--event", "key.leaked"))
        assert made["secret"].startswith("whsec_") and made["event_types"] == ["key.leaked"]
        got = json.loads(run(server, "webhooks", "get", made["webhook_id"]))
        assert "secret" not in got and got["account_id"] == "globex"
    finally:
        server.stop()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def etcd():
    assert ETCD, "etcd (Debian's etcd-server; scripts/test.sh installs it)"
    data = tempfile.mkdtemp(prefix="etcd-")
    client, peer = free_port(), free_port()
    proc = subprocess.Popen([ETCD, "--data-dir", data, "--name", "hooks",
                             "--listen-client-urls", f"http://127.0.0.1:{client}",
                             "--advertise-client-urls", f"http://127.0.0.1:{client}",
                             "--listen-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
                             "--initial-cluster", f"hooks=http://127.0.0.1:{peer}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def healthy():
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1).status == 200
        except OSError:
            return False
    wait_for("etcd", healthy)
    yield f"http://127.0.0.1:{client}"
    proc.kill()
    proc.wait()


def test_three_fleet_sidecars_send_one_delivery_per_event(receiver, etcd):
    fleet = [Scopegate("--webhook-allow-private", "--store", "etcd", "--etcd-endpoints", etcd) for _ in range(3)]
    try:
        endpoint(fleet[0], receiver)
        receiver.delay = 0.3  # rounds overlap: two deliverers would both send
        keys = []
        for n in range(30):
            keys.append(fleet[n % 3].create_key("mail.send"))
        for n, key in enumerate(keys):
            run(fleet[(n + 1) % 3], "keys", "update", key["key"]["key_id"], "--name", "again")
        wait_for("60 events", lambda: len(receiver.events()) >= 60, 30)
        time.sleep(2)
        ids = [i for i, _ in receiver.events()]
        assert len(ids) == 60 and len(set(ids)) == 60
        for key in keys:
            mine = [p["type"] for _, p in receiver.events() if p["data"].get("key_id") == key["key"]["key_id"]]
            assert mine == ["key.created", "key.updated"], mine
        # The sidecar delivering dies: another takes the lease and goes on.
        delivering = [s for s in fleet if "took the webhook delivery lease" in open(s.log_path).read()]
        assert len(delivering) == 1
        delivering[0].kill()
        alive = [s for s in fleet if s is not delivering[0]]
        late = alive[0].create_key("mail.send")
        wait_for("an event after the deliverer died", lambda: any(
            p["data"].get("key_id") == late["key"]["key_id"] for _, p in receiver.events()), 30)
        fleet = alive
    finally:
        for server in fleet:
            if server.proc.poll() is None:
                server.stop()
