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
    results, criterion, out = tmp_path / "r.jsonl", tmp_path / "c.txt", tmp_path / "BENCHMARKS.md"
    results.write_text("\n".join(json.dumps(r) for r in rows))
    criterion.write_text("check/allowed          time:   [1.0 µs 1.1 µs 1.2 µs]\n")
    out.write_text("# Benchmarks\n\nnotes\n\n<!-- results:start -->\n<!-- results:end -->\n\nmore notes\n")
    main(str(results), str(criterion), str(out))
    text = out.read_text()
    assert "| forward-auth (HTTP/1.1 keep-alive) | 1 | 60.0 K | 76.0 K | 34.0 K | 0.57× | 0.45× |" in text, text
    assert "![throughput](docs/bench-throughput.svg)" in text and "more notes" in text
    assert (tmp_path / "docs" / "bench-instructions.svg").exists()
