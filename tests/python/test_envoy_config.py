"""examples/envoy.yaml is a valid Envoy bootstrap (parsed into Envoy's own
Bootstrap message) and is wired the recommended way."""
import pathlib

import yaml
from google.protobuf import json_format
from envoy.config.bootstrap.v3 import bootstrap_pb2
# Types referenced through `@type` must be registered before parsing.
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2  # noqa: F401
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_bootstrap(path):
    return json_format.ParseDict(yaml.safe_load(open(path)), bootstrap_pb2.Bootstrap())


def test_example_envoy_config_is_a_fail_closed_ext_authz_setup():
    bootstrap = load_bootstrap(ROOT / "examples" / "envoy.yaml")
    (listener,) = bootstrap.static_resources.listeners
    manager = http_connection_manager_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    assert manager.normalize_path.value and manager.merge_slashes
    # An encoded slash is refused by Envoy too, not forwarded for scopegate
    # and the upstream to read differently.
    assert (manager.path_with_escaped_slashes_action
            == http_connection_manager_pb2.HttpConnectionManager.REJECT_REQUEST)
    filters = [f.name for f in manager.http_filters]
    assert filters == ["envoy.filters.http.ext_authz", "envoy.filters.http.router"]
    ext_authz = ext_authz_pb2.ExtAuthz()
    manager.http_filters[0].typed_config.Unpack(ext_authz)
    assert ext_authz.failure_mode_allow is False
    # An unreachable scopegate is a 503, never a pass.
    assert ext_authz.status_on_error.code == 503
    assert ext_authz.transport_api_version == 2  # V3
    assert ext_authz.grpc_service.envoy_grpc.cluster_name == "scopegate"
    assert 0 < ext_authz.grpc_service.timeout.ToMilliseconds() <= 1000
    # Only the headers scopegate reads are sent, and every one of them is.
    patterns = ext_authz.allowed_headers.patterns
    def sent(header):
        return any(p.exact == header or (p.prefix and header.startswith(p.prefix)) for p in patterns)
    for header in ["authorization", "x-api-key", "x-http-method-override", "x-http-method",
                   "x-method-override", "x-scopegate-key-id", "x-scopegate-anything"]:
        assert sent(header), header
    for header in ["cookie", "user-agent", "x-forwarded-for", "content-type"]:
        assert not sent(header), header
    clusters = {c.name: c for c in bootstrap.static_resources.clusters}
    options = http_protocol_options_pb2.HttpProtocolOptions()
    clusters["scopegate"].typed_extension_protocol_options[
        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(options)
    assert options.explicit_http_config.HasField("http2_protocol_options")
    address = clusters["scopegate"].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert address.socket_address.address == "127.0.0.1"


def test_a_broken_config_is_rejected():
    import pytest
    broken = yaml.safe_load(open(ROOT / "examples" / "envoy.yaml"))
    broken["static_resources"]["clusters"][0]["connect_timeout"] = "soon"
    with pytest.raises(json_format.ParseError):
        json_format.ParseDict(broken, bootstrap_pb2.Bootstrap())
