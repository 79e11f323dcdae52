"""Key lifecycle through independent clients: the scopegate CLI to create,
rotate and disable keys, and grpcio with Envoy's own protos for ext_authz
(expiry, disabled keys, IP allowlists from the source address, metadata,
rotation overlap)."""
import time

import grpc
import pytest
from envoy.config.core.v3 import address_pb2
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from conftest import Scopegate


@pytest.fixture(scope="module")
def server():
    server = Scopegate()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.addr)
    yield external_auth_pb2_grpc.AuthorizationStub(channel)
    channel.close()


def check(stub, token, source=None):
    attributes = attribute_context_pb2.AttributeContext(
        request=attribute_context_pb2.AttributeContext.Request(
            http=attribute_context_pb2.AttributeContext.HttpRequest(
                method="POST", path="/v3/mail/send", headers={"authorization": f"Bearer {token}"},
            )
        )
    )
    if source:
        attributes.source.address.CopyFrom(
            address_pb2.Address(socket_address=address_pb2.SocketAddress(address=source, port_value=4321))
        )
    response = stub.Check(external_auth_pb2.CheckRequest(attributes=attributes), timeout=5)
    decision = response.dynamic_metadata.fields["decision"].string_value
    status = 200 if response.WhichOneof("http_response") == "ok_response" else response.denied_response.status.code
    return decision, status, response


def test_expiry_disable_and_metadata(server, stub):
    created = server.cli("keys", "create", "--account", "acme", "--name", "short", "--scope", "mail.send",
                         "--expires-in-secs", "2", "--meta", "plan=pro")
    token, key_id = created["token"], created["key"]["key_id"]
    decision, status, response = check(stub, token)
    assert (decision, status) == ("ALLOWED", 200)
    assert response.dynamic_metadata.fields["key_metadata"].struct_value.fields["plan"].string_value == "pro"
    server.cli("keys", "update", key_id, "--disable")
    assert check(stub, token)[:2] == ("DISABLED", 401)
    server.cli("keys", "update", key_id, "--enable")
    assert check(stub, token)[:2] == ("ALLOWED", 200)
    time.sleep(2.2)
    assert check(stub, token)[:2] == ("EXPIRED", 401)


def test_ip_allowlist_uses_the_source_address(server, stub):
    token = server.cli("keys", "create", "--account", "acme", "--name", "office", "--scope", "mail.send",
                       "--cidr", "198.51.100.0/24", "--cidr", "2001:db8::/32")["token"]
    assert check(stub, token, "198.51.100.20")[:2] == ("ALLOWED", 200)
    assert check(stub, token, "2001:db8::5")[:2] == ("ALLOWED", 200)
    assert check(stub, token, "203.0.113.9")[:2] == ("IP_NOT_ALLOWED", 403)
    assert check(stub, token)[:2] == ("IP_NOT_ALLOWED", 403)


def test_rotation_overlap(server, stub):
    created = server.create_key("mail.send")
    old, key_id = created["token"], created["key"]["key_id"]
    rotated = server.cli("keys", "rotate", key_id, "--overlap-secs", "2")
    new = rotated["token"]
    assert rotated["key"]["previous_secret_expire_time"]
    assert check(stub, old)[:2] == ("ALLOWED", 200)
    assert check(stub, new)[:2] == ("ALLOWED", 200)
    time.sleep(2.2)
    assert check(stub, old)[:2] == ("UNKNOWN_KEY", 401)
    assert check(stub, new)[:2] == ("ALLOWED", 200)
    events = server.cli("audit", "--key", key_id)["events"]
    assert [event["action"] for event in events] == ["create", "rotate"]
