"""The SendGrid-shaped REST API through SendGrid's own client libraries (the
Python `sendgrid` package and the Node `@sendgrid/client`), raw HTTP for the
bad inputs, and every response checked against the OpenAPI document the
server serves (itself validated as OpenAPI 3.1)."""
import http.client
import json
import os
import pathlib
import re
import subprocess
import time

import jsonschema
import pytest
import python_http_client
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2
from openapi_spec_validator import validate as validate_openapi
from sendgrid import SendGridAPIClient
import grpc

from conftest import ROOT, Scopegate

SPEC = json.loads((ROOT / "src" / "http" / "openapi.json").read_text())
MANAGER_SCOPES = ["api_keys.create", "api_keys.read", "api_keys.update", "api_keys.delete",
                  "mail.send", "stats.read"]


def operation(path, method):
    """The OpenAPI operation serving `method path` (query ignored)."""
    path = path.split("?")[0]
    for template, item in SPEC["paths"].items():
        pattern = "^" + re.sub(r"\{[^}]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in item:
            return item[method.lower()]
    return None


def check_against_spec(method, path, status, headers, body):
    """The response is one the document describes, and its body fits."""
    op = operation(path, method)
    if op is None:  # an unknown path or method: SendGrid's error body
        assert status in (404, 405), (method, path, status)
        schema = {"$ref": "#/components/schemas/Errors"}
    else:
        response = op["responses"].get(str(status))
        assert response is not None, f"{method} {path} answered {status}, which the document does not list"
        if "$ref" in response:
            response = SPEC["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
        content = response.get("content")
        if content is None:
            assert body == b"", body
            return
        schema = content["application/json"]["schema"]
    assert headers.get("content-type") == "application/json", headers
    jsonschema.Draft202012Validator({**schema, "components": SPEC["components"]}).validate(json.loads(body))


class Rest:
    """Raw HTTP/1.1 to the REST listener; every answer checked against the spec."""

    def __init__(self, server):
        self.host, self.port = server.http_addr.rsplit(":", 1)

    def __call__(self, method, path, token=None, body=None, headers=None, raw=None, spec=True):
        connection = http.client.HTTPConnection(self.host, int(self.port), timeout=10)
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if payload is not None and raw is None:
            all_headers.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=payload, headers=all_headers)
        response = connection.getresponse()
        data = response.read()
        answer_headers = {k.lower(): v for k, v in response.getheaders()}
        connection.close()
        if spec:
            check_against_spec(method, path, response.status, answer_headers, data)
        return response.status, answer_headers, (json.loads(data) if data else None)


@pytest.fixture(scope="module")
def server():
    server = Scopegate("--mutations-per-account-per-sec", "1000", "--reads-per-account-per-sec", "1000")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def rest(server):
    return Rest(server)


@pytest.fixture(scope="module")
def admin(server):
    return open(os.path.join(server.data, "admin.token")).read().strip()


@pytest.fixture(scope="module")
def manager(rest, admin):
    """An API key that manages keys in account acme, made over REST by the admin."""
    status, _, body = rest("POST", "/v3/api_keys", admin, {"name": "manager", "scopes": MANAGER_SCOPES},
                           headers={"on-behalf-of": "acme"})
    assert status == 201, body
    return body


def test_the_openapi_document_is_valid_and_served(rest):
    validate_openapi(SPEC)
    status, headers, served = rest("GET", "/openapi.json")
    assert status == 200 and served == SPEC


def test_the_python_client_runs_the_whole_table(server, manager):
    sg = SendGridAPIClient(api_key=manager["api_key"], host=f"http://{server.http_addr}")
    created = sg.client.api_keys.post(request_body={"name": "py-mail", "scopes": ["mail.send"]})
    assert created.status_code == 201
    key = json.loads(created.body)
    assert key["name"] == "py-mail" and key["scopes"] == ["mail.send"] and key["api_key"].startswith("SG.")
    key_id = key["api_key_id"]

    listed = json.loads(sg.client.api_keys.get(query_params={"limit": 100}).body)
    assert {"name": "py-mail", "api_key_id": key_id} in listed["result"]

    got = sg.client.api_keys._(key_id).get()
    assert json.loads(got.body) == {"result": [{"name": "py-mail", "api_key_id": key_id, "scopes": ["mail.send"]}]}

    put = sg.client.api_keys._(key_id).put(request_body={"name": "py-stats", "scopes": ["stats.read"]})
    assert json.loads(put.body) == {"api_key_id": key_id, "name": "py-stats", "scopes": ["stats.read"]}

    patched = sg.client.api_keys._(key_id).patch(request_body={"name": "py-renamed"})
    assert json.loads(patched.body) == {"api_key_id": key_id, "name": "py-renamed"}

    scopes = json.loads(sg.client.scopes.get().body)
    assert sorted(scopes["scopes"]) == sorted(MANAGER_SCOPES)

    deleted = sg.client.api_keys._(key_id).delete()
    assert deleted.status_code == 204 and deleted.body == b""
    with pytest.raises(python_http_client.exceptions.NotFoundError) as missing:
        sg.client.api_keys._(key_id).get()
    assert missing.value.status_code == 404
    assert "not found" in json.loads(missing.value.body)["errors"][0]["message"]


def test_the_python_client_sees_the_error_paths(server, manager, admin):
    sg = SendGridAPIClient(api_key=manager["api_key"], host=f"http://{server.http_addr}")
    cases = [
        # (call, exception, status, text in the message)
        (lambda: sg.client.api_keys.post(request_body={"name": "x", "scopes": ["no.such"]}),
         python_http_client.exceptions.BadRequestsError, 400, "no.such"),
        (lambda: sg.client.api_keys.post(request_body={"name": "x", "scopes": ["billing.read", "mail.send"]}),
         python_http_client.exceptions.BadRequestsError, 400, "billing"),
        (lambda: sg.client.api_keys.post(request_body={"scopes": ["mail.send"]}),
         python_http_client.exceptions.BadRequestsError, 400, "name"),
        (lambda: sg.client.api_keys.post(request_body={"name": "x", "scopes": ["whitelabel.read"]}),
         python_http_client.exceptions.ForbiddenError, 403, "whitelabel.read"),
        (lambda: SendGridAPIClient(api_key="SG.nope.nope", host=f"http://{server.http_addr}").client.api_keys.get(),
         python_http_client.exceptions.UnauthorizedError, 401, "credentials"),
    ]
    for call, exception, status, text in cases:
        with pytest.raises(exception) as raised:
            call()
        assert raised.value.status_code == status
        error = json.loads(raised.value.body)["errors"][0]
        assert text in (error["message"] + str(error["field"])), error


def test_the_node_client_runs_the_whole_table(server, manager):
    node_modules = os.environ.get("SENDGRID_NODE")
    assert node_modules, "SENDGRID_NODE: @sendgrid/client's install dir (scripts/test.sh installs it)"
    result = subprocess.run(
        ["node", str(ROOT / "tests" / "python" / "sendgrid_node.mjs"), node_modules,
         f"http://{server.http_addr}", manager["api_key"]],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    steps = json.loads(result.stdout)
    assert steps["create"]["status"] == 201 and steps["create"]["body"]["scopes"] == ["mail.send"]
    key_id = steps["create"]["body"]["api_key_id"]
    assert {"name": "node-mail", "api_key_id": key_id} in steps["list"]["body"]["result"]
    assert steps["get"]["body"]["result"][0]["scopes"] == ["mail.send"]
    assert steps["put"]["body"] == {"api_key_id": key_id, "name": "node-stats", "scopes": ["stats.read"]}
    assert steps["patch"]["body"] == {"api_key_id": key_id, "name": "node-renamed"}
    assert steps["delete"]["status"] == 204
    assert sorted(steps["scopes"]["body"]["scopes"]) == sorted(MANAGER_SCOPES)
    assert steps["escalation"]["status"] == 403
    assert "whitelabel.read" in steps["escalation"]["body"]["errors"][0]["message"]
    assert steps["gone"]["status"] == 404


def envoy_check(server, token, method, path):
    channel = grpc.insecure_channel(server.addr)
    request = external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(http=attribute_context_pb2.AttributeContext.HttpRequest(
            method=method, path=path, headers={"authorization": f"Bearer {token}"}))))
    answer = external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
    channel.close()
    return answer.status.code


def test_one_store_for_rest_and_grpc(server, rest, manager):
    # Made over REST: ext_authz allows it at once, and the CLI (gRPC) sees it.
    status, _, key = rest("POST", "/v3/api_keys", manager["api_key"], {"name": "both", "scopes": ["mail.send"]})
    assert status == 201
    assert envoy_check(server, key["api_key"], "POST", "/v3/mail/send") == code_pb2.OK
    got = server.cli("keys", "get", key["api_key_id"])
    assert got["name"] == "both" and got["scopes"] == ["mail.send"]
    # Made over gRPC: REST sees it; deleted over REST: denied at once.
    made = server.create_key("stats.read")
    status, _, body = rest("GET", f"/v3/api_keys/{made['key']['key_id']}", manager["api_key"])
    assert status == 200 and body["result"][0]["scopes"] == ["stats.read"]
    assert rest("DELETE", f"/v3/api_keys/{key['api_key_id']}", manager["api_key"])[0] == 204
    assert envoy_check(server, key["api_key"], "POST", "/v3/mail/send") == code_pb2.UNAUTHENTICATED


def test_the_admin_holds_every_scope(rest, admin):
    status, _, body = rest("GET", "/v3/scopes", admin)
    assert status == 200 and {"billing.read", "mail.send", "api_keys.create"} <= set(body["scopes"])


def test_scopes_left_out_mean_the_callers_own_without_billing(rest, admin, manager):
    status, _, body = rest("POST", "/v3/api_keys", manager["api_key"], {"name": "all-mine"})
    assert status == 201 and sorted(body["scopes"]) == sorted(MANAGER_SCOPES)
    status, _, body = rest("POST", "/v3/api_keys", admin, {"name": "admin-all"}, headers={"on-behalf-of": "acme"})
    assert status == 201 and body["scopes"] and not any(s.startswith("billing.") for s in body["scopes"])


def test_accounts_stay_apart(rest, admin, manager):
    status, _, other = rest("POST", "/v3/api_keys", admin, {"name": "other", "scopes": ["mail.send"]},
                           headers={"on-behalf-of": "globex"})
    assert status == 201
    # Another account's key is not found, to a key and to the admin on behalf of acme.
    assert rest("GET", f"/v3/api_keys/{other['api_key_id']}", manager["api_key"])[0] == 404
    assert rest("DELETE", f"/v3/api_keys/{other['api_key_id']}", admin, headers={"on-behalf-of": "acme"})[0] == 404
    assert rest("GET", f"/v3/api_keys/{other['api_key_id']}", admin, headers={"on-behalf-of": "globex"})[0] == 200
    _, _, listed = rest("GET", "/v3/api_keys?limit=1000", manager["api_key"])
    assert other["api_key_id"] not in {k["api_key_id"] for k in listed["result"]}
    # An API key may not speak for an account.
    status, _, body = rest("GET", "/v3/api_keys", manager["api_key"], headers={"on-behalf-of": "globex"})
    assert status == 403 and body["errors"][0]["field"] == "on-behalf-of"
    # The admin must name the account to create.
    status, _, body = rest("POST", "/v3/api_keys", admin, {"name": "x", "scopes": ["mail.send"]})
    assert status == 400 and body["errors"][0]["field"] == "on-behalf-of"


def test_lifecycle_extensions(server, rest, manager):
    status, _, key = rest("POST", "/v3/api_keys", manager["api_key"],
                          {"name": "life", "scopes": ["mail.send"], "metadata": {"team": "mail"},
                           "allowed_cidrs": ["127.0.0.0/8"], "request_id": "7d0f1f4e-3c1a-4e55-bf0e-3b5a0c7d9e11"})
    assert status == 201
    # The same request id: the same key and token, not a second key.
    again = rest("POST", "/v3/api_keys", manager["api_key"],
                 {"name": "life", "scopes": ["mail.send"], "metadata": {"team": "mail"},
                  "allowed_cidrs": ["127.0.0.0/8"], "request_id": "7d0f1f4e-3c1a-4e55-bf0e-3b5a0c7d9e11"})
    assert again[2] == key
    key_id = key["api_key_id"]
    assert rest("POST", f"/v3/api_keys/{key_id}/disable", manager["api_key"])[2]["enabled"] is False
    assert rest("POST", f"/v3/api_keys/{key_id}/enable", manager["api_key"])[2]["enabled"] is True
    status, _, rotated = rest("POST", f"/v3/api_keys/{key_id}/rotate", manager["api_key"], {"overlap_seconds": 0})
    assert status == 200 and rotated["api_key_id"] == key_id and rotated["api_key"] != key["api_key"]
    details = server.cli("keys", "get", key_id)
    assert details["metadata"] == {"team": "mail"} and details["allowed_cidrs"] == ["127.0.0.0/8"]


BAD = [
    # (method, path, body bytes, content type, status, field)
    ("POST", "/v3/api_keys", b"{not json", "application/json", 400, None),
    ("POST", "/v3/api_keys", b'{"name": 5}', "application/json", 400, None),
    ("POST", "/v3/api_keys", b'{"name": "x", "scopes": "mail.send"}', "application/json", 400, None),
    ("POST", "/v3/api_keys", b'{"name": "x", "colour": "red"}', "application/json", 400, "colour"),
    ("POST", "/v3/api_keys", b'{"name": "x", "scopes": []}', "application/json", 400, "scopes"),
    ("POST", "/v3/api_keys", b"", "application/json", 400, None),
    ("POST", "/v3/api_keys", b'{"name": "x"}', "text/plain", 415, None),
    ("POST", "/v3/api_keys", b'{"name": "' + b"x" * 70000 + b'"}', "application/json", 413, None),
    ("PATCH", "/v3/api_keys/KEY", b'{"name": "x", "scopes": ["mail.send"]}', "application/json", 400, "scopes"),
    ("GET", "/v3/api_keys/not-a-key-id", None, None, 400, "api_key_id"),
    ("GET", "/v3/api_keys/..", None, None, 400, "api_key_id"),
    ("GET", "/v3/api_keys/../scopes", None, None, 404, None),
    ("GET", "/v3/api_keys?limit=1&limit=2", None, None, 400, "limit"),
    ("GET", "/v3/api_keys?limit=0", None, None, 400, "limit"),
    ("GET", "/v3/api_keys?offset=3", None, None, 400, "offset"),
    ("GET", "/v3/api_keys?page_token=garbage", None, None, 400, "page_token"),
    ("PUT", "/v3/api_keys", b"{}", "application/json", 405, None),
    ("GET", "/v3/mail/send", None, None, 404, None),
]


def keys_as_set(server):
    """The account's keys as their changes leave them: when a key was last
    used (the caller's own, minute by minute) is not a change."""
    listed = server.cli("keys", "list", "--account", "acme", "--page-size", "1000")
    for key in listed["keys"]:
        key.pop("last_used_time", None)
    return listed


@pytest.mark.parametrize("method,path,body,content_type,status,field", BAD)
def test_bad_input_is_a_clear_4xx_and_changes_nothing(server, rest, manager, method, path, body, content_type,
                                                      status, field):
    target = server.create_key("mail.send")
    path = path.replace("KEY", target["key"]["key_id"])
    before = keys_as_set(server)
    got, headers, answer = rest(method, path, manager["api_key"], raw=body,
                                headers={"Content-Type": content_type} if content_type else None)
    assert got == status, answer
    assert answer["errors"][0]["field"] == field, answer
    assert manager["api_key"] not in json.dumps(answer)
    assert keys_as_set(server) == before


def test_401_429_and_503_carry_their_headers(server, rest):
    status, headers, body = rest("GET", "/v3/scopes")
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    slow = Scopegate("--mutations-per-account-per-sec", "1")
    try:
        slow_rest = Rest(slow)
        key = slow.create_key("api_keys.create", "mail.send")["token"]
        statuses = [slow_rest("POST", "/v3/api_keys", key, {"name": f"k{i}", "scopes": ["mail.send"]})
                    for i in range(4)]
        limited = [s for s in statuses if s[0] == 429]
        assert limited, [s[0] for s in statuses]
        assert int(limited[0][1]["retry-after"]) >= 1
    finally:
        slow.stop()


def test_secrets_never_reach_the_log(server):
    log = pathlib.Path(server.log_path).read_text()
    admin = open(os.path.join(server.data, "admin.token")).read().strip()
    assert admin not in log
    assert not re.search(r"SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{20,}", log)


def key_operations():
    """Every operation of the document that names a key: (method, path template)."""
    return [(method.upper(), template) for template, item in SPEC["paths"].items() if "{api_key_id}" in template
            for method in item if method in ("get", "post", "put", "patch", "delete")]


def query_for(template):
    """A query string the operation needs (stats: a range)."""
    if template.endswith("/stats"):
        return "?start_date=" + time.strftime("%Y-%m-%d", time.gmtime())
    return ""


def body_for(method, template):
    """A body the operation accepts, so only the rule under test can refuse it."""
    if method == "PUT":
        return {"name": "changed", "scopes": ["mail.send", "stats.read"]}
    if method == "PATCH":
        return {"name": "changed"}
    if method == "POST" and template == "/v3/api_keys":
        return {"name": "made", "scopes": ["mail.send"]}
    if method == "POST" and template.endswith("/credits"):
        return {"op": "decrement", "amount": 1}
    return None


def test_an_api_key_never_acts_on_behalf_of_an_account(server, rest, manager):
    """`on-behalf-of` from an API key is refused on every operation of the
    document (403, naming the header), and nothing is changed."""
    target = server.create_key("mail.send")
    key_id, token = target["key"]["key_id"], target["token"]
    before = keys_as_set(server)
    operations = [(method.upper(), template) for template, item in SPEC["paths"].items()
                  for method in item if method in ("get", "post", "put", "patch", "delete")
                  and template not in ("/openapi.json", "/secret-scanning/github")]
    assert len(operations) >= 10, operations
    for method, template in operations:
        path = template.replace("{api_key_id}", key_id)
        status, _, body = rest(method, path, manager["api_key"], body_for(method, template),
                               headers={"on-behalf-of": "acme"})
        assert status == 403, (method, path, status, body)
        assert body["errors"][0]["field"] == "on-behalf-of", (method, path, body)
    assert keys_as_set(server) == before
    assert envoy_check(server, token, "POST", "/v3/mail/send") == code_pb2.OK


def test_no_rest_operation_escalates_or_touches_a_stronger_key(server, rest, admin):
    """A manager holding api_keys.* and mail.send: it may not give a scope it
    lacks (create, replace), and no operation on a key holding more than it
    (stats.read too) changes that key; reads are allowed."""
    status, _, lesser = rest("POST", "/v3/api_keys", admin,
                             {"name": "lesser", "scopes": ["api_keys.create", "api_keys.read", "api_keys.update",
                                                           "api_keys.delete", "mail.send"]},
                             headers={"on-behalf-of": "acme"})
    assert status == 201
    token = lesser["api_key"]
    # Escalation: a scope the caller lacks, on create and on replace of its own child.
    status, _, body = rest("POST", "/v3/api_keys", token, {"name": "x", "scopes": ["mail.send", "whitelabel.read"]})
    assert status == 403 and "whitelabel.read" in body["errors"][0]["message"], body
    status, _, child = rest("POST", "/v3/api_keys", token, {"name": "child", "scopes": ["mail.send"]})
    assert status == 201
    status, _, body = rest("PUT", f"/v3/api_keys/{child['api_key_id']}", token,
                           {"name": "child", "scopes": ["mail.send", "whitelabel.read"]})
    assert status == 403 and "whitelabel.read" in body["errors"][0]["message"], body
    assert server.cli("keys", "get", child["api_key_id"])["scopes"] == ["mail.send"]
    # A stronger key: every operation but reading is refused, nothing changes.
    stronger = server.create_key("mail.send", "stats.read")
    stronger_id = stronger["key"]["key_id"]
    before = server.cli("keys", "get", stronger_id)
    operations = key_operations()
    assert len(operations) >= 7, operations
    for method, template in operations:
        path = template.replace("{api_key_id}", stronger_id) + query_for(template)
        status, _, body = rest(method, path, token, body_for(method, template))
        if method == "GET":
            assert status == 200, (method, path, body)
        else:
            assert status == 403 and "stats.read" in body["errors"][0]["message"], (method, path, status, body)
    assert server.cli("keys", "get", stronger_id) == before
    # Not rotated, disabled or deleted: its token still passes.
    assert envoy_check(server, stronger["token"], "POST", "/v3/mail/send") == code_pb2.OK


def test_credits_through_sendgrids_client_and_the_document(server, rest, admin, manager):
    """Credits over REST with SendGrid's Python client (its raw path builder):
    given at creation, spent by checks, changed with POST .../credits, shown
    by GET; every answer held to the OpenAPI document. A manager without
    credits may give any; the key it makes cannot give itself more."""
    sg = SendGridAPIClient(api_key=manager["api_key"], host=f"http://{server.http_addr}")
    made = sg.client.api_keys.post(request_body={
        "name": "metered", "scopes": ["mail.send", "api_keys.update"],
        "credits": {"remaining": 5, "refill": {"amount": 5, "interval": "monthly", "day_of_month": 31}}})
    assert made.status_code == 201
    key = json.loads(made.body)
    key_id = key["api_key_id"]
    assert envoy_check(server, key["api_key"], "POST", "/v3/mail/send") == code_pb2.OK
    for method, path, body in [("GET", f"/v3/api_keys/{key_id}", None),
                               ("POST", f"/v3/api_keys/{key_id}/credits", {"op": "increment", "amount": 10})]:
        status, headers, answer = rest(method, path, manager["api_key"], body)
        assert status == 200, answer
    status, _, got = rest("GET", f"/v3/api_keys/{key_id}", manager["api_key"])
    assert got["result"][0]["credits"] == {
        "remaining": 14, "refill": {"amount": 5, "interval": "monthly", "day_of_month": 31}}, got
    answer = sg.client.api_keys._(key_id).credits.post(request_body={"op": "decrement", "amount": 4})
    assert json.loads(answer.body) == {"remaining": 10}
    # The metered key itself may only take away.
    status, _, refused = rest("POST", f"/v3/api_keys/{key_id}/credits", key["api_key"], {"op": "increment", "amount": 1})
    assert status == 403 and "only take credits away" in refused["errors"][0]["message"], refused
    # Bad input: SendGrid's error body naming the field.
    for body, field in [({"op": "set", "amount": -1}, None), ({"op": "grow", "amount": 1}, "op"),
                        ({"name": "x", "credits": {"remaining": 1, "refill": {"amount": 1, "interval": "weekly"}}}, "credits.refill")]:
        path = f"/v3/api_keys/{key_id}/credits" if "op" in body else "/v3/api_keys"
        status, _, error = rest("POST", path, manager["api_key"], body)
        assert status == 400, (body, error)
        if field:
            assert error["errors"][0]["field"] == field, error


def test_roles_follow_the_document(server, rest, admin, manager):
    """Roles over REST, every answer held to the OpenAPI document: made from
    a template and from scopes, referenced by keys (by name and id), shown
    on the key, changed (PATCH, PUT) so the key's Check changes at once, a
    taken name 409, another account's role 404, deleted."""
    token = manager["api_key"]
    status, _, made = rest("POST", "/v3/roles", token, {"name": "senders", "scopes": ["mail.send"]})
    assert status == 201 and made["key_count"] == 0, made
    status, _, viewer = rest("POST", "/v3/roles", admin, {"name": "viewers", "template": "read-only"},
                             headers={"on-behalf-of": "acme"})
    assert status == 201 and "stats.read" in viewer["scopes"], viewer
    status, _, taken = rest("POST", "/v3/roles", token, {"name": "senders", "scopes": ["mail.send"]})
    assert status == 409 and "senders" in taken["errors"][0]["message"], taken
    # The manager lacks the template's other read scopes: it may not attach it.
    status, _, refused = rest("POST", "/v3/api_keys", token, {"name": "r", "roles": ["viewers"]})
    assert status == 403, refused
    status, _, key = rest("POST", "/v3/api_keys", token, {"name": "by-role", "roles": ["senders"]})
    assert status == 201 and key["scopes"] == ["mail.send"], key
    assert envoy_check(server, key["api_key"], "POST", "/v3/mail/send") == code_pb2.OK
    status, _, shown = rest("GET", f"/v3/api_keys/{key['api_key_id']}", token)
    assert shown["result"][0]["roles"][0]["role_id"] == made["role_id"], shown
    status, _, changed = rest("PATCH", f"/v3/roles/{made['role_id']}", token,
                              {"description": "who sends", "scopes": ["mail.send", "stats.read"]})
    assert status == 200 and changed["key_count"] == 1 and changed["description"] == "who sends", changed
    status, _, changed = rest("PUT", f"/v3/roles/{made['role_id']}", token, {"name": "stats", "scopes": ["stats.read"]})
    assert status == 200 and changed["name"] == "stats", changed
    assert envoy_check(server, key["api_key"], "POST", "/v3/mail/send") != code_pb2.OK
    status, _, listed = rest("GET", "/v3/roles", token)
    assert sorted(role["name"] for role in listed["result"]) == ["stats", "viewers"], listed
    status, _, other = rest("GET", f"/v3/roles/{made['role_id']}", admin, headers={"on-behalf-of": "globex"})
    assert status == 404, other
    status, _, _ = rest("DELETE", f"/v3/roles/{made['role_id']}", token)
    assert status == 204
    status, _, gone = rest("GET", f"/v3/roles/{made['role_id']}", token)
    assert status == 404, gone
