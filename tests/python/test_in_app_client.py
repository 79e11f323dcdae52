"""The README's in-app call for non-Rust services, as written there: stubs
generated from proto/scopegate/v1/authorize.proto by grpcio-tools, and
Authorize.Check over scopegate's Unix socket."""
import importlib
import subprocess
import sys

import grpc
import pytest

from conftest import ROOT, Scopegate


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out = tmp_path_factory.mktemp("stubs")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT / 'proto'}", f"--python_out={out}",
                    f"--grpc_python_out={out}", str(ROOT / "proto" / "scopegate" / "v1" / "authorize.proto")],
                   check=True)
    sys.path.insert(0, str(out))
    try:
        yield (importlib.import_module("scopegate.v1.authorize_pb2"),
               importlib.import_module("scopegate.v1.authorize_pb2_grpc"))
    finally:
        sys.path.remove(str(out))


def test_the_readme_python_call_over_the_unix_socket(generated):
    authorize_pb2, authorize_pb2_grpc = generated
    server = Scopegate("--uds", "SOCKET")
    try:
        token = server.create_key("mail.send")["token"]
        stub = authorize_pb2_grpc.AuthorizeStub(grpc.insecure_channel(f"unix:{server.uds}"))
        ask = lambda token, method, path: stub.Check(authorize_pb2.CheckRequest(  # noqa: E731
            token=token, http=authorize_pb2.HttpRequest(method=method, path=path)), timeout=5)
        answer = ask(token, "POST", "/v3/mail/send")
        assert answer.allowed and answer.account_id == "acme"
        answer = ask(token, "GET", "/v3/stats")
        assert not answer.allowed
        assert answer.decision == authorize_pb2.INSUFFICIENT_SCOPE
        assert "stats.global.read" in answer.message
        assert ask("", "POST", "/v3/mail/send").decision == authorize_pb2.MISSING_TOKEN
    finally:
        server.stop()
