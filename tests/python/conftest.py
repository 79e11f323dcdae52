"""Starts the real scopegate binary for the Python tests (an independent client)."""
import json
import os
import pathlib
import signal
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = os.environ.get("SCOPEGATE_BIN") or str(
    pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "debug" / "scopegate"
)


class Scopegate:
    def __init__(self, *args):
        self.dir = tempfile.mkdtemp(prefix="scopegate-py-")
        self.data = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "serve.log")
        open(self.log_path, "w").close()
        # "SOCKET" in args stands for a Unix socket path in this server's dir.
        self.uds = os.path.join(self.dir, "scopegate.sock")
        self.args = [self.uds if arg == "SOCKET" else arg for arg in args]
        self.start()

    def start(self):
        """Starts the server (again, on the same data dir), waits until it serves."""
        args = self.args
        self.log = open(self.log_path, "a")
        start = os.path.getsize(self.log_path)
        self.proc = subprocess.Popen(
            [BIN, "serve", "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0",
             *([] if "--metrics-listen" in args else ["--metrics-listen", "none"]),
             "--log-format", "json",
             "--data-dir", self.data, "--routes", str(ROOT / "examples" / "routes.toml"), *args],
            stdout=subprocess.DEVNULL, stderr=self.log,
        )
        self.addr = None
        self.http_addr = None
        self.rate_limits_addr = None
        self.metrics_addr = None
        deadline = time.time() + 30
        while time.time() < deadline:
            with open(self.log_path) as log:
                log.seek(start)
                lines = log.read().splitlines()
            for line in lines:
                try:
                    fields = json.loads(line)["fields"]
                except ValueError:
                    continue
                if fields.get("message") == "scopegate listening":
                    self.addr = fields["addr"]
                if fields.get("message", "").startswith("REST API listening"):
                    self.http_addr = fields["addr"]
                if fields.get("message") == "rate-limit service listening":
                    self.rate_limits_addr = fields["addr"]
                if fields.get("message", "").startswith("metrics listening"):
                    self.metrics_addr = fields["addr"]
                if fields.get("message") == "keys loaded; serving" and self.addr:
                    return
            assert self.proc.poll() is None, open(self.log_path).read()
            time.sleep(0.02)
        raise RuntimeError("scopegate did not start: " + open(self.log_path).read())

    def cli(self, *args):
        """Runs a client subcommand with --json against this server."""
        out = subprocess.run(
            [BIN, *args, "--server", f"http://{self.addr}", "--data-dir", self.data, "--json"],
            check=True, capture_output=True, text=True,
        )
        return json.loads(out.stdout)

    def create_key(self, *scopes, account="acme"):
        args = ["keys", "create", "--account", account, "--name", "py"]
        for scope in scopes:
            args += ["--scope", scope]
        return self.cli(*args)

    def kill(self):
        """kill -9: no clean stop."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.log.close()


def wait_for(what, probe, seconds=30):
    """Polls `probe` until it holds; fails naming `what`."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if probe():
            return
        time.sleep(0.1)
    raise AssertionError(f"never: {what}")


@pytest.fixture(scope="module")
def scopegate():
    server = Scopegate("--api-key-header", "x-api-key")
    yield server
    server.stop()
