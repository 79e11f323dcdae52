"""Per-key rate limits as Envoy meets them, with Envoy's own protos
(xds-protos) and grpcio: ext_authz's 429 and headers, and scopegate as the
global rate-limit service (envoy.service.ratelimit.v3) behind
examples/envoy-ratelimit.yaml, whose wiring is checked here too."""
import pathlib

import grpc
import pytest
import yaml
from google.protobuf import json_format
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2  # noqa: F401
from envoy.extensions.filters.http.ratelimit.v3 import rate_limit_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc
from envoy.service.auth.v3 import external_auth_pb2_grpc

from conftest import ROOT, Scopegate
from test_ext_authz import check, bearer, headers_of

EXAMPLE = ROOT / "examples" / "envoy-ratelimit.yaml"


@pytest.fixture(scope="module")
def rls_scopegate():
    # As the example runs it: ext_authz identifies, the rate-limit filter
    # counts, on the rate-limit service's own listener.
    server = Scopegate("--ext-authz-rate-limits=false", "--rate-limit-service-listen", "127.0.0.1:0",
                       "--rate-limit-max-hits", "10")
    yield server
    server.stop()


def limited_key(server, *limits, scope="mail.send"):
    args = ["keys", "create", "--account", "acme", "--name", "limited", "--scope", scope]
    for limit in limits:
        args += ["--limit", limit]
    return server.cli(*args)


def descriptor(**entries):
    return ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries.items()])


def should(stub, *descriptors, hits=0):
    request = rls_pb2.RateLimitRequest(domain="scopegate", descriptors=list(descriptors), hits_addend=hits)
    return stub.ShouldRateLimit(request, timeout=5)


def test_the_example_wires_ext_authz_then_ratelimit_then_router():
    bootstrap = json_format.ParseDict(yaml.safe_load(open(EXAMPLE)), bootstrap_pb2.Bootstrap())
    (listener,) = bootstrap.static_resources.listeners
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert [f.name for f in manager.http_filters] == [
        "envoy.filters.http.ext_authz", "envoy.filters.http.ratelimit", "envoy.filters.http.router"]
    rate_limit = rate_limit_pb2.RateLimit()
    manager.http_filters[1].typed_config.Unpack(rate_limit)
    assert rate_limit.rate_limit_service.grpc_service.envoy_grpc.cluster_name == "scopegate_ratelimit"
    assert rate_limit.rate_limit_service.transport_api_version == 2  # V3
    assert rate_limit.enable_x_ratelimit_headers == rate_limit_pb2.RateLimit.DRAFT_VERSION_03
    (route,) = manager.route_config.virtual_hosts[0].routes
    (limits,) = route.route.rate_limits
    keys = [(a.metadata.descriptor_key, a.metadata.metadata_key.key, a.metadata.metadata_key.path[0].key)
            for a in limits.actions]
    # The descriptor entries read exactly the metadata scopegate's ext_authz writes.
    assert keys == [("key_id", "envoy.filters.http.ext_authz", "key_id"),
                    ("scope", "envoy.filters.http.ext_authz", "scope")]
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    assert set(clusters) == {"scopegate", "scopegate_ratelimit", "app"}
    # The rate-limit service is its own listener, never the check port.
    port = lambda name: clusters[name].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value
    assert port("scopegate_ratelimit") != port("scopegate")
    assert f"--rate-limit-service-listen 127.0.0.1:{port('scopegate_ratelimit')}" in EXAMPLE.read_text()


def test_ratelimit_service_answers_from_the_keys_limits(rls_scopegate):
    created = limited_key(rls_scopegate, "default=3/minute", "send=100/minute:mail.send")
    key_id, token = created["key"]["key_id"], created["token"]
    channel = grpc.insecure_channel(rls_scopegate.addr)
    authz = external_auth_pb2_grpc.AuthorizationStub(channel)
    rls_channel = grpc.insecure_channel(rls_scopegate.rate_limits_addr)
    rls = rls_pb2_grpc.RateLimitServiceStub(rls_channel)
    # ext_authz allows (and, with --ext-authz-rate-limits=false, counts
    # nothing): its dynamic metadata is what the filter's actions read.
    metadata = {}
    for _ in range(5):
        answer = check(authz, "POST", "/v3/mail/send", bearer(token))
        assert answer.WhichOneof("http_response") == "ok_response"
        assert "x-ratelimit-limit" not in headers_of(answer.ok_response.response_headers_to_add)
        metadata = json_format.MessageToDict(answer.dynamic_metadata)
    assert metadata["key_id"] == key_id and metadata["scope"] == "mail.send"
    entries = dict(key_id=metadata["key_id"], scope=metadata["scope"])
    for left in (2, 1, 0):
        response = should(rls, descriptor(**entries))
        assert response.overall_code == rls_pb2.RateLimitResponse.OK
        (status,) = response.statuses
        # The limit closest to running out: default (3/minute), not send.
        assert status.current_limit.name == "default"
        assert status.current_limit.requests_per_unit == 3
        assert status.current_limit.unit == rls_pb2.RateLimitResponse.RateLimit.MINUTE
        assert status.limit_remaining == left
        assert 0 < status.duration_until_reset.seconds <= 60
    response = should(rls, descriptor(**entries))
    assert response.overall_code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert response.statuses[0].code == rls_pb2.RateLimitResponse.OVER_LIMIT
    assert response.statuses[0].limit_remaining == 0
    # Without the scope entry only limits on every request count; one limit
    # can be named; descriptors that are not about a key of ours are OK.
    unscoped = should(rls, descriptor(key_id=key_id, limit="send"))
    assert unscoped.overall_code == rls_pb2.RateLimitResponse.OK
    assert not unscoped.statuses[0].HasField("current_limit")
    send = should(rls, descriptor(key_id=key_id, scope="mail.send", limit="send"), hits=10)
    assert send.statuses[0].current_limit.name == "send"
    # The three counted above count here too; the refused one nowhere.
    assert send.statuses[0].limit_remaining == 100 - 3 - 10
    other = should(rls, descriptor(generic_key="checkout"), descriptor(key_id="not-a-key"))
    assert other.overall_code == rls_pb2.RateLimitResponse.OK and len(other.statuses) == 2
    with pytest.raises(grpc.RpcError) as error:
        should(rls, descriptor(key_id=key_id, scope="no.such"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    channel.close()
    rls_channel.close()


def test_the_ratelimit_service_is_never_on_the_check_port_and_caps_hits(rls_scopegate):
    """It takes no credential (whoever reaches it spends any key's limit), so
    the check port does not serve it, and one call adds at most
    --rate-limit-max-hits, refused whole (nothing counted) above it."""
    created = limited_key(rls_scopegate, "default=100/minute")
    key_id = created["key"]["key_id"]
    with grpc.insecure_channel(rls_scopegate.addr) as check_port:
        with pytest.raises(grpc.RpcError) as error:
            should(rls_pb2_grpc.RateLimitServiceStub(check_port), descriptor(key_id=key_id))
        assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(rls_scopegate.rate_limits_addr) as own:
        rls = rls_pb2_grpc.RateLimitServiceStub(own)
        for hits in (11, 1_000_000):
            with pytest.raises(grpc.RpcError) as error:
                should(rls, descriptor(key_id=key_id), hits=hits)
            assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "--rate-limit-max-hits 10" in error.value.details()
        # A descriptor's own hits_addend is capped too, and nothing above was counted.
        over = descriptor(key_id=key_id)
        over.hits_addend.value = 50
        with pytest.raises(grpc.RpcError):
            should(rls, descriptor(key_id=key_id), over)
        (status,) = should(rls, descriptor(key_id=key_id), hits=10).statuses
        assert status.limit_remaining == 100 - 10
    # Off unless configured: a server without the flag serves it nowhere.
    plain = Scopegate()
    try:
        with grpc.insecure_channel(plain.addr) as channel:
            with pytest.raises(grpc.RpcError) as error:
                should(rls_pb2_grpc.RateLimitServiceStub(channel), descriptor(key_id=key_id))
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert plain.rate_limits_addr is None
    finally:
        plain.stop()


def test_ext_authz_counts_by_default_and_answers_429(scopegate):
    token = limited_key(scopegate, "default=2/minute")["token"]
    channel = grpc.insecure_channel(scopegate.addr)
    authz = external_auth_pb2_grpc.AuthorizationStub(channel)
    for left in ("1", "0"):
        answer = check(authz, "POST", "/v3/mail/send", bearer(token))
        added = headers_of(answer.ok_response.response_headers_to_add)
        assert added["x-ratelimit-remaining"] == left
        assert added["x-ratelimit-limit"] == '2, 2;w=60;name="default"'
    answer = check(authz, "POST", "/v3/mail/send", bearer(token))
    assert answer.WhichOneof("http_response") == "denied_response"
    assert answer.denied_response.status.code == 429
    headers = headers_of(answer.denied_response.headers)
    assert 1 <= int(headers["retry-after"]) <= 60
    assert headers["x-ratelimit-remaining"] == "0"
    assert "rate limit" in answer.denied_response.body
    channel.close()


def test_the_ratelimit_service_can_live_on_the_unix_socket_only():
    """`--rate-limit-service-listen uds`: beside the decisions on the socket
    (which only the pod's proxy reaches), still not on TCP; asked for
    without a socket, the server refuses to start and says why."""
    server = Scopegate("--uds", "SOCKET", "--rate-limit-service-listen", "uds")
    try:
        key_id = limited_key(server, "default=5/minute")["key"]["key_id"]
        with grpc.insecure_channel(f"unix:{server.uds}") as socket:
            (status,) = should(rls_pb2_grpc.RateLimitServiceStub(socket), descriptor(key_id=key_id)).statuses
            assert status.current_limit.name == "default" and status.limit_remaining == 4
        with grpc.insecure_channel(server.addr) as tcp:
            with pytest.raises(grpc.RpcError) as error:
                should(rls_pb2_grpc.RateLimitServiceStub(tcp), descriptor(key_id=key_id))
            assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        server.stop()
    with pytest.raises(AssertionError) as refused:
        Scopegate("--rate-limit-service-listen", "uds")
    assert "no uds is set" in str(refused.value)
