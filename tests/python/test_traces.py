"""OpenTelemetry traces as a collector receives them: a real OTLP/gRPC
receiver (grpcio serving opentelemetry.proto.collector.trace.v1.TraceService)
takes what scopegate exports. The messages are decoded by field number here:
the `opentelemetry-proto` package cannot share this venv with `xds-protos`,
which ships an older copy of the same modules (no `scope_spans`) over it. A span per management call (gRPC and REST) and per
sampled decision (Authorize.Check, ext_authz, forward-auth), each the child
of the caller's W3C traceparent; attributes name the key, the account, the
decision and the scope; no token or secret anywhere in what is sent."""
import http.client
import json
import os
import subprocess
import threading
import time
from concurrent import futures

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc

from conftest import Scopegate, wait_for

GRPCURL = os.environ.get("GRPCURL", "grpcurl")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def traceparent(span):
    return f"00-{TRACE}-{span}-01"


def fields(data):
    """(field number, value) of one protobuf message: ints for varints,
    bytes for length-delimited and fixed fields."""
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(data, at)
        elif wire == 2:
            size, at = varint(data, at)
            value, at = data[at:at + size], at + size
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, value


def varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, at


class Span:
    """opentelemetry.proto.trace.v1.Span: trace_id 1, span_id 2,
    parent_span_id 4, name 5, attributes 9 (KeyValue: key 1, value 2;
    AnyValue: string_value 1, int_value 3)."""

    def __init__(self, data):
        self.attributes = {}
        for number, value in fields(data):
            if number == 1:
                self.trace_id = value
            elif number == 4:
                self.parent_span_id = value
            elif number == 5:
                self.name = value.decode()
            elif number == 9:
                pair = dict(fields(value))
                any_value = dict(fields(pair.get(2, b"")))
                self.attributes[pair[1].decode()] = (
                    any_value[1].decode() if 1 in any_value else any_value.get(3))
        self.__dict__.setdefault("parent_span_id", b"")


class Collector:
    """An OTLP/gRPC endpoint keeping every export, decoded and as sent:
    ExportTraceServiceRequest.resource_spans 1 → ResourceSpans.scope_spans 2
    → ScopeSpans.spans 2."""

    def __init__(self):
        self.lock = threading.Lock()
        self.spans = []
        self.raw = b""
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        export = grpc.unary_unary_rpc_method_handler(
            self.export, request_deserializer=lambda data: data, response_serializer=lambda data: data)
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService", {"Export": export}),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def export(self, request, context):
        with self.lock:
            self.raw += request
            for number, resource in fields(request):
                for scope_number, scope in fields(resource) if number == 1 else ():
                    for span_number, span in fields(scope) if scope_number == 2 else ():
                        if span_number == 2:
                            self.spans.append(Span(span))
        return b""  # an empty ExportTraceServiceResponse

    def child_of(self, parent):
        with self.lock:
            return [s for s in self.spans if s.parent_span_id.hex() == parent]


def attributes(span):
    return span.attributes


@pytest.fixture
def collector():
    collector = Collector()
    yield collector
    collector.server.stop(0)


def serve(collector, monkeypatch, ratio):
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")
    return Scopegate("--otlp-endpoint", f"http://127.0.0.1:{collector.port}", "--trace-sample-ratio", ratio,
                     "--forward-auth-listen", "127.0.0.1:0")


def forward_auth_addr(server):
    for line in open(server.log_path):
        fields = json.loads(line).get("fields", {})
        if fields.get("message", "").startswith("forward-auth listening"):
            return fields["addr"]
    raise AssertionError("no forward-auth listener")


def grpcurl(server, method, body, headers):
    args = [GRPCURL, "-plaintext", "-d", json.dumps(body)]
    for name, value in headers.items():
        args += ["-H", f"{name}: {value}"]
    return subprocess.run([*args, server.addr, method], capture_output=True, text=True, check=True).stdout


def test_calls_and_decisions_are_spans_under_the_callers_trace(collector, monkeypatch):
    server = serve(collector, monkeypatch, "1")
    try:
        key = server.create_key("mail.send", "api_keys.read")
        token = key["token"]
        admin = open(os.path.join(server.data, "admin.token")).read().strip()
        # Authorize.Check, traceparent in its gRPC metadata.
        grpcurl(server, "scopegate.v1.Authorize/Check", {"token": token, "scopes": ["mail.send"]},
                {"traceparent": traceparent("00f067aa0ba902b1")})
        # ext_authz: the traceparent Envoy passes among the request's headers.
        with grpc.insecure_channel(server.addr) as channel:
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            stub.Check(external_auth_pb2.CheckRequest(attributes=attribute_context_pb2.AttributeContext(
                request=attribute_context_pb2.AttributeContext.Request(http=attribute_context_pb2.AttributeContext.HttpRequest(
                    id="1", method="GET", path="/v3/stats", host="api.example.com", scheme="https", protocol="HTTP/1.1",
                    headers={"authorization": f"Bearer {token}", "traceparent": traceparent("00f067aa0ba902b2")})))),
                timeout=5)
        # forward-auth: the proxy's request headers.
        host, port = forward_auth_addr(server).rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        connection.request("POST", "/v3/mail/send", headers={
            "authorization": f"Bearer {token}", "traceparent": traceparent("00f067aa0ba902b3")})
        connection.getresponse().read()
        # A management call over gRPC, and one over REST.
        grpcurl(server, "scopegate.v1.ManageKey/ListScopes", {},
                {"authorization": f"Bearer {admin}", "traceparent": traceparent("00f067aa0ba902b4")})
        host, port = server.http_addr.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=5)
        connection.request("GET", "/v3/scopes", headers={
            "authorization": f"Bearer {token}", "traceparent": traceparent("00f067aa0ba902b5")})
        assert connection.getresponse().status == 200
        parents = ["00f067aa0ba902b1", "00f067aa0ba902b2", "00f067aa0ba902b3", "00f067aa0ba902b4", "00f067aa0ba902b5"]
        wait_for("a span under each caller's span", lambda: all(collector.child_of(p) for p in parents))
        key_id = key["key"]["key_id"]
        spans = {p: collector.child_of(p)[0] for p in parents}
        for parent in parents:
            assert spans[parent].trace_id.hex() == TRACE
        check = attributes(spans["00f067aa0ba902b1"])
        assert spans["00f067aa0ba902b1"].name == "Authorize.Check"
        assert check["decision"] == "ALLOWED" and check["key_id"] == key_id and check["account"] == "acme"
        ext = attributes(spans["00f067aa0ba902b2"])
        assert spans["00f067aa0ba902b2"].name == "ext_authz"
        assert ext["decision"] == "INSUFFICIENT_SCOPE" and ext["scope"] == "stats.global.read" and ext["key_id"] == key_id
        forward = attributes(spans["00f067aa0ba902b3"])
        assert forward["decision"] == "ALLOWED" and forward["scope"] == "mail.send"
        manage = attributes(spans["00f067aa0ba902b4"])
        assert manage["rpc.method"] == "scopegate.v1.ManageKey/ListScopes" and manage["rpc.grpc.status_code"] == 0
        rest = attributes(spans["00f067aa0ba902b5"])
        assert rest["http.route"] == "/v3/scopes" and rest["http.response.status_code"] == 200
        # Nothing secret in anything exported.
        with collector.lock:
            raw = collector.raw
        for secret in (token, token.split(".")[-1], admin):
            assert secret.encode() not in raw
    finally:
        server.stop()


def test_sampling_0_traces_no_decision_but_every_management_call(collector, monkeypatch):
    server = serve(collector, monkeypatch, "0")
    try:
        key = server.create_key("mail.send")
        for n in range(20):
            grpcurl(server, "scopegate.v1.Authorize/Check", {"token": key["token"], "scopes": ["mail.send"]},
                    {"traceparent": traceparent(f"00f067aa0ba90{n:03x}")})
        admin = open(os.path.join(server.data, "admin.token")).read().strip()
        grpcurl(server, "scopegate.v1.ManageKey/ListScopes", {},
                {"authorization": f"Bearer {admin}", "traceparent": traceparent("00f067aa0ba902c4")})
        wait_for("the management call's span", lambda: collector.child_of("00f067aa0ba902c4"))
        time.sleep(0.5)
        with collector.lock:
            names = [span.name for span in collector.spans]
        assert "Authorize.Check" not in names, names
    finally:
        server.stop()


def test_a_bad_endpoint_or_ratio_is_refused_at_start(tmp_path):
    for args, field in [(["--otlp-endpoint", "collector:4317"], "otlp_endpoint"),
                        (["--otlp-endpoint", "http://127.0.0.1:4317", "--trace-sample-ratio", "2"], "trace_sample_ratio"),
                        (["--trace-sample-ratio", "0.5"], "trace_sample_ratio")]:
        from conftest import BIN
        result = subprocess.run([BIN, "serve", "--data-dir", str(tmp_path / "data"), "--listen", "127.0.0.1:0", *args],
                                capture_output=True, text=True, timeout=20)
        assert result.returncode != 0 and field in result.stderr, (args, result.stderr)
