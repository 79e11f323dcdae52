"""bench/plot.py draws what the numbers say: each door a line whose points
sit higher for larger values, the ceiling dashed, bars as tall as their
counts; the SVG parses as XML."""
import sys
import xml.etree.ElementTree as ET

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
from plot import plots  # noqa: E402

SVG = "{http://www.w3.org/2000/svg}"


def row(workload, concurrency, rps, p99):
    return {"workload": workload, "target": "tcp", "concurrency": concurrency, "rps": rps, "p99_us": p99,
            "p50_us": p99 // 2, "p999_us": p99 * 2, "server_cpu_percent": 90.0, "server_rss_mib": 20.0}


def test_lines_and_bars_follow_the_figures():
    checks = [row("ceiling", 1, 20000, 60), row("ceiling", 16, 80000, 300), row("scopes", 1, 18000, 70),
              row("scopes", 16, 76000, 320), row("ext-authz", 1, 15000, 90), row("ext-authz", 16, 60000, 400),
              dict(row("scopes", 16, 1, 1), target="uds")]  # another transport: not drawn
    instructions = [{"server": "scopegate", "workload": "scopes", "in_flight": 1, "instructions_per_request": 70000},
                    {"server": "bare", "workload": "ceiling", "in_flight": 1, "instructions_per_request": 60000},
                    {"server": "scopegate", "workload": "forward-auth", "in_flight": 1, "instructions_per_request": 34000},
                    {"server": "scopegate", "workload": "scopes", "in_flight": 16, "instructions_per_request": 1}]
    drawn = plots(checks, instructions)
    assert set(drawn) == {"bench-throughput.svg", "bench-p99.svg", "bench-instructions.svg"}
    throughput = ET.fromstring(drawn["bench-throughput.svg"])
    lines = {line.get("data-workload"): line for line in throughput.iter(f"{SVG}polyline")}
    assert set(lines) == {"ceiling", "scopes", "ext-authz"}
    assert lines["ceiling"].get("stroke-dasharray") and not lines["scopes"].get("stroke-dasharray")

    def ys(workload):
        return [float(point.split(",")[1]) for point in lines[workload].get("points").split()]
    # SVG y grows downward: more requests per second sit higher (smaller y).
    assert ys("scopes")[1] < ys("scopes")[0]
    assert ys("ceiling")[1] < ys("scopes")[1] < ys("ext-authz")[1]
    bars = {(b.get("data-door"), b.get("data-server")): float(b.get("height"))
            for b in ET.fromstring(drawn["bench-instructions.svg"]).iter(f"{SVG}rect") if b.get("class") == "bar"}
    assert set(bars) == {("Check (scopes)", "scopegate"), ("Check (scopes)", "bare tonic, same request"),
                         ("forward-auth", "scopegate")}
    assert abs(bars[("Check (scopes)", "scopegate")] / bars[("Check (scopes)", "bare tonic, same request")] - 70 / 60) < 0.01


def test_the_report_renders_every_door_and_links_its_plots(tmp_path):
    """report.py on one run's rows (every door, forward-auth among them):
    the tables and the plots, written beside the given BENCHMARKS.md."""
    import json
    from report import main
    rows = [row("ceiling", 1, 20000, 60), row("scopes", 1, 18000, 70)]
    for server, workload, count in [("bare", "ceiling", 60000), ("bare", "ceiling-ext-authz", 90000),
                                    ("bare", "ceiling-ext-authz-allowed", 76000), ("scopegate", "scopes", 70000),
                                    ("scopegate", "http", 71000), ("scopegate", "ext-authz", 80000),
                                    ("scopegate", "ext-authz-allowed", 76000), ("scopegate", "forward-auth", 34000)]:
        rows.append({"workload_kind": "instructions", "server": server, "workload": workload, "in_flight": 1,
                     "instructions_per_request": count})
    rows.append({"workload": "footprint", "config": "default", "keys": 1000, "rss_kib": 15360,
                 "anon_kib": 7475, "file_kib": 7885, "threads": 4})
    results, criterion, out = tmp_path / "r.jsonl", tmp_path / "c.txt", tmp_path / "BENCHMARKS.md"
    results.write_text("\n".join(json.dumps(r) for r in rows))
    criterion.write_text("check/allowed          time:   [1.0 µs 1.1 µs 1.2 µs]\n")
    out.write_text("# Benchmarks\n\nnotes\n\n<!-- results:start -->\n<!-- results:end -->\n\nmore notes\n")
    main(str(results), str(criterion), str(out))
    text = out.read_text()
    assert "| forward-auth (HTTP/1.1 keep-alive) | 1 | 60.0 K | 76.0 K | 34.0 K | 0.57× | 0.45× |" in text, text
    assert "| 1000 | 15.0 MiB | 7.3 MiB | 7.7 MiB | 4 |" in text, text
    assert "![throughput](docs/bench-throughput.svg)" in text and "more notes" in text
    assert (tmp_path / "docs" / "bench-instructions.svg").exists()


def test_the_breakdown_counts_own_cost_by_layer_and_not_callees_twice(tmp_path):
    """breakdown.py reads callgrind's own format: a function's cost lines are
    its own, the line after `calls=` (the callee's inclusive cost) is not;
    names are compressed to `(id)` after their first use; idle is subtracted."""
    from breakdown import by_layer, per_request
    run = """events: Ir
ob=(1) /bin/scopegate
fl=(1) a.rs
fn=(1) <scopegate::grpc::authorize::AuthorizeService as scopegate_protocol::authorize_server::Authorize>::check
10 300
cob=(1)
cfn=(2) sha2::sha256::compress256
calls=1 0
10 9999
+2 100
fn=(2)
5 3500
fn=(3) core::ptr::drop_in_place::<h2::frame::Frame>
1 40
ob=(2) /usr/lib/x86_64-linux-gnu/libc.so.6
fn=(4) __memcpy_avx_unaligned_erms
* 60
"""
    idle = "events: Ir\nob=(1) /bin/scopegate\nfn=(3) core::ptr::drop_in_place::<h2::frame::Frame>\n1 20\n"
    (tmp_path / "scopegate.run").write_text(run)
    (tmp_path / "scopegate.idle").write_text(idle)
    layers = by_layer(per_request(str(tmp_path), "scopegate", 2))
    assert layers["scopegate: gRPC edge (request to answer)"] == 200  # 300 + 100, not the call's 9999
    assert layers["SHA-256 (portable: valgrind hides SHA-NI)"] == 1750
    assert layers["HTTP/2 (h2)"] == 10  # glue for h2's type is h2's, idle subtracted
    assert layers["memcpy / memset / memcmp (libc)"] == 30
