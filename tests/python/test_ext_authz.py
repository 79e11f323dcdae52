"""Envoy's ext_authz contract, checked with Envoy's own protos (xds-protos)
and grpcio: real CheckRequests as Envoy builds them."""
import json

import grpc
import pytest
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.service.auth.v3 import attribute_context_pb2
from google.rpc import code_pb2

ENVOY_HEADERS = {
    ":authority": "api.example.com",
    ":scheme": "https",
    "user-agent": "python-requests/2.32",
    "accept": "application/json",
    "accept-encoding": "gzip, deflate",
    "content-type": "application/json",
    "x-forwarded-proto": "https",
    "x-forwarded-for": "203.0.113.7",
    "x-request-id": "4f1c1e2a-9b7d-4c55-8a21-0d3f5b6a7c8e",
    "x-envoy-expected-rq-timeout-ms": "15000",
}


@pytest.fixture(scope="module")
def stub(scopegate):
    channel = grpc.insecure_channel(scopegate.addr)
    yield external_auth_pb2_grpc.AuthorizationStub(channel)
    channel.close()


def check(stub, method, path, headers=None):
    all_headers = dict(ENVOY_HEADERS, **{":method": method, ":path": path}, **(headers or {}))
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(
                http=attribute_context_pb2.AttributeContext.HttpRequest(
                    id="1", method=method, path=path, host="api.example.com",
                    scheme="https", protocol="HTTP/1.1", headers=all_headers,
                )
            )
        )
    )
    return stub.Check(request, timeout=5)


def bearer(token):
    return {"authorization": f"Bearer {token}"}


def headers_of(options):
    return {option.header.key: option.header.value for option in options}


def assert_denied(response, http_status, code, message_part):
    assert response.status.code == code
    assert response.WhichOneof("http_response") == "denied_response"
    denied = response.denied_response
    assert denied.status.code == http_status
    headers = headers_of(denied.headers)
    assert headers["content-type"] == "application/json"
    body = json.loads(denied.body)
    assert body["errors"][0]["field"] is None
    assert message_part in body["errors"][0]["message"]
    if http_status == 401:
        assert headers["www-authenticate"].startswith("Bearer")
    else:
        assert "www-authenticate" not in headers
    return body["errors"][0]["message"]


def test_allow_adds_identity_headers_removes_credential_and_sets_metadata(scopegate, stub):
    created = scopegate.create_key("mail.send")
    response = check(stub, "POST", "/v3/mail/send", bearer(created["token"]))
    assert response.status.code == code_pb2.OK
    assert response.WhichOneof("http_response") == "ok_response"
    ok = response.ok_response
    added = headers_of(ok.headers)
    assert added["x-scopegate-key-id"] == created["key"]["key_id"]
    assert added["x-scopegate-account-id"] == "acme"
    assert "authorization" in ok.headers_to_remove
    metadata = response.dynamic_metadata.fields
    assert metadata["decision"].string_value == "ALLOWED"
    assert metadata["scope"].string_value == "mail.send"
    assert metadata["key_id"].string_value == created["key"]["key_id"]
    assert metadata["account_id"].string_value == "acme"


def test_missing_token_is_401(stub):
    assert_denied(check(stub, "POST", "/v3/mail/send"), 401, code_pb2.UNAUTHENTICATED, "no API key")


def test_bad_token_is_401_and_never_echoed(scopegate, stub):
    created = scopegate.create_key("mail.send")
    mangled = created["token"][:-1] + ("A" if created["token"][-1] != "A" else "B")
    for token in ["garbage", mangled]:
        response = check(stub, "POST", "/v3/mail/send", bearer(token))
        message = assert_denied(response, 401, code_pb2.UNAUTHENTICATED, "malformed")
        assert token not in message and token not in response.denied_response.body


def test_unknown_and_deleted_keys_are_401(scopegate, stub):
    created = scopegate.create_key("mail.send")
    assert check(stub, "POST", "/v3/mail/send", bearer(created["token"])).status.code == code_pb2.OK
    scopegate.cli("keys", "delete", created["key"]["key_id"])
    assert_denied(check(stub, "POST", "/v3/mail/send", bearer(created["token"])),
                  401, code_pb2.UNAUTHENTICATED, "does not exist")


def test_insufficient_scope_is_403_naming_the_scope(scopegate, stub):
    created = scopegate.create_key("mail.send")
    response = check(stub, "GET", "/v3/mail/batch/abc", bearer(created["token"]))
    assert_denied(response, 403, code_pb2.PERMISSION_DENIED, "mail.batch.read")
    assert response.dynamic_metadata.fields["decision"].string_value == "INSUFFICIENT_SCOPE"


def test_no_route_is_403(scopegate, stub):
    created = scopegate.create_key("mail.send")
    response = check(stub, "GET", "/v3/not/a/route", bearer(created["token"]))
    assert_denied(response, 403, code_pb2.PERMISSION_DENIED, "no route")
    assert response.dynamic_metadata.fields["decision"].string_value == "NO_ROUTE"


def test_billing_key_cannot_use_a_non_billing_path(scopegate, stub):
    billing = scopegate.create_key("billing.read", "billing.update")
    assert check(stub, "GET", "/v3/billing", bearer(billing["token"])).status.code == code_pb2.OK
    assert_denied(check(stub, "POST", "/v3/mail/send", bearer(billing["token"])),
                  403, code_pb2.PERMISSION_DENIED, "mail.send")


def test_x_api_key_header_variant(scopegate, stub):
    created = scopegate.create_key("stats.global.read")
    response = check(stub, "GET", "/v3/stats", {"X-Api-Key": created["token"]})
    assert response.status.code == code_pb2.OK
    assert "x-api-key" in response.ok_response.headers_to_remove
    # Two credentials at once are refused rather than guessed between.
    both = check(stub, "GET", "/v3/stats", {"x-api-key": created["token"], **bearer(created["token"])})
    assert_denied(both, 401, code_pb2.UNAUTHENTICATED, "malformed")
    # Envoy joins repeated headers with ','.
    repeated = check(stub, "GET", "/v3/stats", {"x-api-key": created["token"] + "," + created["token"]})
    assert_denied(repeated, 401, code_pb2.UNAUTHENTICATED, "malformed")


def test_spoofed_identity_headers_are_overwritten(scopegate, stub):
    created = scopegate.create_key("mail.send")
    spoof = {"x-scopegate-key-id": "someone-else", "x-scopegate-account-id": "globex",
             "x-scopegate-admin": "true", **bearer(created["token"])}
    ok = check(stub, "POST", "/v3/mail/send", spoof).ok_response
    by_name = {option.header.key: option for option in ok.headers}
    assert by_name["x-scopegate-key-id"].header.value == created["key"]["key_id"]
    assert by_name["x-scopegate-account-id"].header.value == "acme"
    overwrite = by_name["x-scopegate-key-id"].append_action
    assert overwrite == by_name["x-scopegate-key-id"].OVERWRITE_IF_EXISTS_OR_ADD
    assert "x-scopegate-admin" in ok.headers_to_remove


def test_non_utf8_credential_in_header_map_is_a_clean_denial(scopegate, stub):
    from envoy.config.core.v3 import base_pb2
    request = external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(
                http=attribute_context_pb2.AttributeContext.HttpRequest(
                    method="POST", path="/v3/mail/send",
                    header_map=base_pb2.HeaderMap(headers=[
                        base_pb2.HeaderValue(key="authorization", raw_value=b"Bearer \xff\xfe"),
                    ]),
                )
            )
        )
    )
    assert_denied(stub.Check(request, timeout=5), 401, code_pb2.UNAUTHENTICATED, "malformed")
