"""grpcio over scopegate's Unix socket with default options: grpc-core
(>= 1.57) sends the %-encoded socket path as :authority, which hyper's h2
refuses unless scopegate's Unix-socket fix rewrites it (src/uds/)."""
import grpc
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from conftest import Scopegate


def test_grpcio_default_options_over_the_socket():
    server = Scopegate("--uds", "SOCKET")
    try:
        socket = server.uds
        created = server.create_key("mail.send")
        channel = grpc.insecure_channel(f"unix:{socket}")
        health = channel.unary_unary("/grpc.health.v1.Health/Check")
        # Several calls on one channel: the rewrite keeps HPACK in step.
        assert [health(b"", timeout=5) for _ in range(3)] == [b"\x08\x01"] * 3
        stub = external_auth_pb2_grpc.AuthorizationStub(channel)
        for token, expected in [(created["token"], "ALLOWED"), ("SG.nope.nope", "MALFORMED_TOKEN")]:
            request = external_auth_pb2.CheckRequest(
                attributes=attribute_context_pb2.AttributeContext(
                    request=attribute_context_pb2.AttributeContext.Request(
                        http=attribute_context_pb2.AttributeContext.HttpRequest(
                            method="POST", path="/v3/mail/send",
                            headers={"authorization": f"Bearer {token}"},
                        )
                    )
                )
            )
            response = stub.Check(request, timeout=5)
            assert response.dynamic_metadata.fields["decision"].string_value == expected
        channel.close()
    finally:
        server.stop()
