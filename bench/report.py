#!/usr/bin/env python3
"""Rewrites the generated part of BENCHMARKS.md from one bench/run.sh run.

Usage: report.py RESULTS.jsonl CRITERION.txt BENCHMARKS.md
Only the text between the results markers is replaced; notes outside stay.
"""
import datetime
import json
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from plot import plots  # noqa: E402

START, END = "<!-- results:start -->", "<!-- results:end -->"
UNITS = {"ps": 1e-6, "ns": 1e-3, "µs": 1.0, "us": 1.0, "ms": 1e3, "s": 1e6}


def criterion(path):
    """(name, median µs) for every benchmark in criterion's text output."""
    rows, pending = [], None
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        same_line = re.match(r"^(\S+)\s+time:\s+\[(.*)\]", line)
        next_line = re.match(r"^\s+time:\s+\[(.*)\]", line)
        if same_line:
            name, values = same_line.group(1), same_line.group(2)
        elif next_line and pending:
            name, values = pending, next_line.group(1)
        else:
            if re.match(r"^[A-Za-z0-9_/.-]+$", line):
                pending = line
            continue
        low, low_unit, mid, mid_unit = values.split()[:4]
        rows.append((name, float(mid) * UNITS[mid_unit]))
        pending = None
    return rows


def machine():
    model = "unknown"
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} cores ({model}), {int(mem) // 1024 // 1024} GiB; commit {commit}; {datetime.date.today()}"


def network_table(rows):
    ceiling = {(r["target"], r["concurrency"]): r["rps"] for r in rows if r["workload"] == "ceiling"}
    envoy_ceiling = {(r["target"], r["concurrency"]): r["rps"] for r in rows if r["workload"] == "ceiling-ext-authz"}
    lines = ["| workload | transport | concurrency | req/s | vs ceiling | vs same-messages ceiling | p50 µs | p99 µs | p99.9 µs | server CPU % | server RSS MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        key = (r["target"], r["concurrency"])
        ratio = f"{r['rps'] / ceiling[key]:.0%}" if ceiling.get(key) else ""
        same = f"{r['rps'] / envoy_ceiling[key]:.0%}" if r["workload"] == "ext-authz" and envoy_ceiling.get(key) else ""
        lines.append(f"| {r['workload']} | {r['target']} | {r['concurrency']} | {r['rps']:.0f} | {ratio} | {same} | "
                     f"{r['p50_us']} | {r['p99_us']} | {r['p999_us']} | {r['server_cpu_percent']:.0f} | {r['server_rss_mib']:.0f} |")
    return lines


def main(results_path, criterion_path, out_path):
    results = [json.loads(line) for line in open(results_path) if line.strip()]
    lines = [START, "", f"Machine: {machine()}.", ""]
    # The shape first: plots before the tables they draw.
    kinds = [r for r in results if r.get("workload_kind") == "instructions"]
    drawn = plots([r for r in results if r.get("workload_kind") != "instructions"], kinds)
    if drawn:
        docs = os.path.join(os.path.dirname(os.path.abspath(out_path)), "docs")
        os.makedirs(docs, exist_ok=True)
        lines += ["### Plots", ""]
        for name, svg in drawn.items():
            open(os.path.join(docs, name), "w").write(svg)
            lines.append(f"![{name[6:-4]}](docs/{name})")
        lines.append("")

    lines += ["### Hot path, in process (criterion, median)", "", "| benchmark | median |", "|---|---|"]
    for name, micros in criterion(criterion_path):
        lines.append(f"| `{name}` | {micros * 1000:.0f} ns |" if micros < 10 else f"| `{name}` | {micros:.1f} µs |")

    instructions = [r for r in results if r.get("workload_kind") == "instructions"]
    results = [r for r in results if r.get("workload_kind") != "instructions"]
    checks = [r for r in results if r.get("workload") in ("ceiling", "ceiling-ext-authz", "scopes", "http", "ext-authz")
              and r.get("label", "") != "open"]
    lines += ["", "### Over the network (loadgen; fixed duration after warm-up)", "",
              "`ceiling`: bare tonic server, small fixed message. `ceiling-ext-authz`: the same bare server "
              "decoding the same Envoy request and answering a fixed allow of the same shape and size as scopegate's (headers, metadata: 212 bytes); ext_authz rows are also compared with it."]
    sections = [("", "Server and load generator sharing both cores"),
                ("pinned", "Pinned: every server started on CPU 0 (one runtime worker), the load generator on CPU 1 (`taskset`)")]
    for label, title in sections:
        rows = [r for r in checks if r.get("label", "") == label]
        if rows:
            lines += ["", f"#### {title}", ""] + network_table(rows)
    open_loop = [r for r in results if r.get("label") == "open"]
    if open_loop:
        lines += ["", "#### Open loop: fixed arrival rate, latency from the intended send time (TCP, shared cores)", "",
                  "`schedule late`: how late the generator itself started requests (p99), its own error.", "",
                  "| workload | offered req/s | achieved req/s | p50 µs | p99 µs | p99.9 µs | schedule late p99 µs | server CPU % |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in open_loop:
            lines.append(f"| {r['workload']} | {r['rate']:.0f} | {r['rps']:.0f} | {r['p50_us']} | {r['p99_us']} | "
                         f"{r['p999_us']} | {r.get('schedule_late_p99_us')} | {r['server_cpu_percent']:.0f} |")
    if instructions:
        by = {(r["server"], r["workload"], r["in_flight"]): r["instructions_per_request"] for r in instructions}
        same = {"scopes": "ceiling", "http": "ceiling", "ext-authz": "ceiling-ext-authz",
                "ext-authz-allowed": "ceiling-ext-authz-allowed"}
        names = {"scopes": "Authorize.Check (scopes)", "http": "Authorize.Check{http}",
                 "ext-authz": "ext_authz Check, all 14 headers", "ext-authz-allowed": "ext_authz Check, allowed headers (5)",
                 "forward-auth": "forward-auth (HTTP/1.1 keep-alive)"}
        lines += ["", "### Server instructions per request (callgrind, idle subtracted; `bench/instructions.sh`)", "",
                  "Bare server: the loadgen ceiling answering Authorize.Check with a fixed message, or decoding "
                  "the same Envoy request with envoy-types and answering a fixed allow of scopegate's size. "
                  "Under valgrind SHA-256 runs without SHA-NI (about 3.4 K of scopegate's instructions).", "",
                  "| request | in flight | bare, Authorize.Check | bare, same request | scopegate | vs bare Check | vs same request |",
                  "|---|---|---|---|---|---|---|"]
        for (server, workload, inflight), value in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1])):
            if server != "scopegate":
                continue
            bare = by[("bare", "ceiling", inflight)]
            # Forward-auth has no bare twin: compared with ext_authz (allowed headers).
            twin = by.get(("bare", same.get(workload, ""), inflight)) or by[("scopegate", "ext-authz-allowed", inflight)]
            lines.append(f"| {names[workload]} | {inflight} | {bare / 1000:.1f} K | {twin / 1000:.1f} K | "
                         f"{value / 1000:.1f} K | {value / bare:.2f}× | {value / twin:.2f}× |")
    footprint = [r for r in results if r.get("workload") == "footprint"]
    if footprint:
        lines += ["", "### Footprint (idle, default flags)", "",
                  "| keys | RSS | of which the process's own (RssAnon) | mapped files (RssFile) | threads |",
                  "|---|---|---|---|---|"]
        for r in footprint:
            own = f"{r['anon_kib'] / 1024:.1f} MiB" if "anon_kib" in r else ""
            files = f"{r['file_kib'] / 1024:.1f} MiB" if "file_kib" in r else ""
            lines.append(f"| {r['keys']} | {r['rss_kib'] / 1024:.1f} MiB | {own} | {files} | {r['threads']} |")
    writes = [r for r in results if r.get("workload") == "writes"]
    lines += ["", "### Durable writes (each acknowledged after fsync; group commit)", "",
              "| concurrency | keys | CreateKey/s | DeleteKey/s | checks right after DeleteKey | stale allows |", "|---|---|---|---|---|---|"]
    for r in writes:
        lines.append(f"| {r['concurrency']} | {r['count']} | {r['create_per_sec']:.0f} | {r['delete_per_sec']:.0f} | "
                     f"{r['checks_after_delete']} | {r['stale_allows_after_delete']} |")

    scale = [r for r in results if r.get("workload") == "scale"]
    lines += ["", "### Scale", "", "| keys | start-up to serving | of which loading | RSS | RAM per key | threads |", "|---|---|---|---|---|---|"]
    for r in scale:
        lines.append(f"| {r['keys']} | {r['startup_ms']} ms | {r['load_ms']} ms | {r['rss_kib'] / 1024:.0f} MiB | "
                     f"{r['rss_kib'] * 1024 / r['keys']:.0f} B | {r.get('threads', '')} |")
    lines += ["", END]

    text = open(out_path).read() if os.path.exists(out_path) else f"# Benchmarks\n\n{START}\n{END}\n"
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    open(out_path, "w").write(before + "\n".join(lines) + after)


if __name__ == "__main__":
    main(*sys.argv[1:])
