"""Server CPU per call for clients of scopegate's Unix socket whose
`:authority` the fix in src/uds/ decodes and rewrites, header block by
header block: grpcio (grpc-core, which sends header strings raw) and grpcurl
(grpc-go, which Huffman-codes them).

    python bench/uds_clients.py BIN [BIN...]   # e.g. a build before a change, then after

For each binary, alternating, ROUNDS times: a grpcio channel making CALLS
ext_authz Checks with a deadline; CONNECTIONS fresh grpcio channels making
one call each; GRPCURL_RUNS grpcurl health checks (one connection each, with
its reflection calls). Prints the server's CPU time (utime + stime from
/proc) per call or per run, median of the rounds, as JSON lines. Run with
the test venv's python (grpcio, xds-protos) and GRPCURL set."""
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "python"))
import grpc  # noqa: E402
import conftest  # noqa: E402
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc  # noqa: E402

CALLS = int(os.environ.get("CALLS", "3000"))
CONNECTIONS = int(os.environ.get("CONNECTIONS", "300"))
GRPCURL = os.environ.get("GRPCURL", "grpcurl")
GRPCURL_RUNS = int(os.environ.get("GRPCURL_RUNS", "100"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def check_request(token):
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(
                http=attribute_context_pb2.AttributeContext.HttpRequest(
                    method="POST", path="/v3/mail/send", headers={"authorization": f"Bearer {token}"},
                )
            )
        )
    )


def measure(server, request):
    pid = server.proc.pid
    channel = grpc.insecure_channel(f"unix:{server.uds}")
    stub = external_auth_pb2_grpc.AuthorizationStub(channel)
    for _ in range(200):
        stub.Check(request, timeout=5)
    before = cpu_seconds(pid)
    for _ in range(CALLS):
        stub.Check(request, timeout=5)
    warm = (cpu_seconds(pid) - before) / CALLS
    channel.close()
    before = cpu_seconds(pid)
    for _ in range(CONNECTIONS):
        channel = grpc.insecure_channel(f"unix:{server.uds}")
        external_auth_pb2_grpc.AuthorizationStub(channel).Check(request, timeout=5)
        channel.close()
    cold = (cpu_seconds(pid) - before) / CONNECTIONS
    before = cpu_seconds(pid)
    for _ in range(GRPCURL_RUNS):
        subprocess.run([GRPCURL, "-plaintext", "-unix", server.uds, "grpc.health.v1.Health/Check"],
                       check=True, stdout=subprocess.DEVNULL)
    grpcurl = (cpu_seconds(pid) - before) / GRPCURL_RUNS
    return warm, cold, grpcurl


def main():
    binaries = sys.argv[1:]
    results = {binary: {"warm": [], "cold": [], "grpcurl": []} for binary in binaries}
    servers = {}
    for binary in binaries:
        conftest.BIN = binary
        server = conftest.Scopegate("--uds", "SOCKET")
        servers[binary] = (server, check_request(server.create_key("mail.send")["token"]))
    try:
        for _ in range(ROUNDS):
            for binary in binaries:
                for name, figure in zip(["warm", "cold", "grpcurl"], measure(*servers[binary])):
                    results[binary][name].append(figure)
                time.sleep(0.2)
    finally:
        for server, _ in servers.values():
            server.stop()
    for binary, figures in results.items():
        print(json.dumps({
            "binary": binary,
            "grpcio_warm_call_server_cpu_us": round(statistics.median(figures["warm"]) * 1e6, 1),
            "grpcio_new_connection_server_cpu_us": round(statistics.median(figures["cold"]) * 1e6, 1),
            "grpcurl_run_server_cpu_us": round(statistics.median(figures["grpcurl"]) * 1e6, 1),
            "rounds": ROUNDS,
        }))


if __name__ == "__main__":
    main()
