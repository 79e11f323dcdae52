"""ext_authz as Istio's proxy calls it: CheckRequests shaped as istio-proxy
builds them for a CUSTOM AuthorizationPolicy (a SPIFFE source principal,
x-forwarded-client-cert, x-request-id, x-envoy-* headers, :authority, a path
with a query, an empty metadata_context), and the route's scope named by the
proxy in `context_extensions` (Envoy's per-route `check_settings`), checked
against the answer of scopegate's own routes file."""
import json

import grpc
import pytest
from envoy.config.core.v3 import address_pb2, base_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from google.rpc import code_pb2

Ctx = attribute_context_pb2.AttributeContext

SOURCE = "spiffe://cluster.local/ns/shop/sa/frontend"
DESTINATION = "spiffe://cluster.local/ns/mail/sa/mail-api"


@pytest.fixture(scope="module")
def stub(scopegate):
    channel = grpc.insecure_channel(scopegate.addr)
    yield external_auth_pb2_grpc.AuthorizationStub(channel)
    channel.close()


def istio_request(method, path, token=None, extensions=None):
    """A CheckRequest as istio-proxy sends it from a sidecar's inbound listener."""
    headers = {
        ":authority": "mail-api.mail.svc.cluster.local:8080",
        ":method": method,
        ":path": path,
        ":scheme": "http",
        "accept": "*/*",
        "user-agent": "curl/8.5.0",
        "x-forwarded-proto": "http",
        "x-request-id": "7d0f1f4e-3c1a-9e55-bf0e-3b5a0c7d9e11",
        "x-envoy-attempt-count": "1",
        "x-envoy-internal": "true",
        "x-forwarded-client-cert": f"By={DESTINATION};Hash=4b1c0f6e0d5a;Subject=\"\";URI={SOURCE}",
        "x-b3-traceid": "80f198ee56343ba864fe8b2a57d3eff7",
        "x-b3-spanid": "e457b5a2e4d86bd1",
        "x-b3-sampled": "0",
    }
    if token is not None:
        headers["authorization"] = f"Bearer {token}"
    socket = lambda ip, port: address_pb2.Address(  # noqa: E731
        socket_address=address_pb2.SocketAddress(address=ip, port_value=port))
    return external_auth_pb2.CheckRequest(attributes=Ctx(
        source=Ctx.Peer(address=socket("10.244.1.17", 48312), principal=SOURCE),
        destination=Ctx.Peer(address=socket("10.244.2.9", 8080), principal=DESTINATION),
        request=Ctx.Request(http=Ctx.HttpRequest(
            id="13417950232546201386", method=method, path=path,
            host="mail-api.mail.svc.cluster.local:8080", scheme="http", protocol="HTTP/1.1",
            headers=headers,
        )),
        context_extensions=extensions or {},
        metadata_context=base_pb2.Metadata(),
    ))


def answer(response):
    """(grpc code, http status or None, JSON error message or None, headers added)."""
    kind = response.WhichOneof("http_response")
    if kind == "denied_response":
        denied = response.denied_response
        return response.status.code, denied.status.code, json.loads(denied.body)["errors"][0]["message"], {}
    added = {o.header.key: o.header.value for o in response.ok_response.headers}
    return response.status.code, None, None, added


def test_allowed_denied_missing_and_unknown_route_as_istio_sends_them(scopegate, stub):
    sender = scopegate.create_key("mail.send")
    reader = scopegate.create_key("stats.read")

    code, status, _, added = answer(stub.Check(istio_request("POST", "/v3/mail/send?dry=1", sender["token"]), timeout=5))
    assert (code, status) == (code_pb2.OK, None)
    assert added["x-scopegate-key-id"] == sender["key"]["key_id"]

    code, status, message, _ = answer(stub.Check(istio_request("POST", "/v3/mail/send", reader["token"]), timeout=5))
    assert (code, status) == (code_pb2.PERMISSION_DENIED, 403)
    assert "mail.send" in message

    code, status, _, _ = answer(stub.Check(istio_request("POST", "/v3/mail/send"), timeout=5))
    assert (code, status) == (code_pb2.UNAUTHENTICATED, 401)

    code, status, _, _ = answer(stub.Check(istio_request("GET", "/no/such/route", sender["token"]), timeout=5))
    assert (code, status) == (code_pb2.PERMISSION_DENIED, 403)


@pytest.mark.parametrize("method,path,scope", [
    ("POST", "/v3/mail/send", "mail.send"),
    ("GET", "/v3/stats", "stats.global.read"),
    ("GET", "/v3/devices/stats", "stats.read"),
    ("GET", "/v3/api_keys", "api_keys.read"),
    ("DELETE", "/v3/api_keys/abc", "api_keys.delete"),
])
def test_a_scope_from_the_proxy_agrees_with_the_routes_file(scopegate, stub, method, path, scope):
    """The same request, routed by scopegate's routes file or by the scope the
    proxy names: the same answer for a key with the scope and one without."""
    holder = scopegate.create_key(scope)
    other = scopegate.create_key("billing.read")
    for key in (holder, other):
        by_file = answer(stub.Check(istio_request(method, path, key["token"]), timeout=5))
        by_proxy = answer(stub.Check(istio_request(method, "/anything/the/proxy/routes", key["token"],
                                                   {"scope": scope}), timeout=5))
        assert by_file[:3] == by_proxy[:3], (key["key"]["scopes"], by_file, by_proxy)
    assert answer(stub.Check(istio_request(method, path, holder["token"], {"scope": scope}), timeout=5))[0] == code_pb2.OK
    assert answer(stub.Check(istio_request(method, path, other["token"], {"scope": scope}), timeout=5))[0] \
        == code_pb2.PERMISSION_DENIED


def test_a_proxy_scope_wins_over_the_routes_file_and_an_unknown_one_fails_closed(scopegate, stub):
    sender = scopegate.create_key("mail.send")
    # The routes file says mail.send for this path; the proxy says stats.read.
    code, status, message, _ = answer(stub.Check(
        istio_request("POST", "/v3/mail/send", sender["token"], {"scope": "stats.read"}), timeout=5))
    assert (code, status) == (code_pb2.PERMISSION_DENIED, 403)
    assert "stats.read" in message
    # A scope the catalog does not know is a proxy misconfiguration: denied as
    # no route, and logged for the operator (not told to the client).
    code, status, message, _ = answer(stub.Check(
        istio_request("POST", "/v3/mail/send", sender["token"], {"scope": "mail.sendd"}), timeout=5))
    assert (code, status) == (code_pb2.PERMISSION_DENIED, 403)
    assert "no route" in message
    assert "mail.sendd" in open(scopegate.log_path).read()
    # Other extensions are ignored; an unusable path is refused whoever routes.
    assert answer(stub.Check(istio_request("POST", "/v3/mail/send", sender["token"], {"team": "x"}),
                             timeout=5))[0] == code_pb2.OK
    code, status, _, _ = answer(stub.Check(
        istio_request("POST", "/v3/mail%2Fsend", sender["token"], {"scope": "mail.send"}), timeout=5))
    assert (code, status) == (code_pb2.INVALID_ARGUMENT, 400)
