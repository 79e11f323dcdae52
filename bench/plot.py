#!/usr/bin/env python3
"""SVG plots of one bench/run.sh run, drawn by hand (no plotting library):
throughput and p99 by concurrency, scopegate's doors against the bare-tonic
ceiling; instructions per request by door. report.py writes them beside
BENCHMARKS.md and links them from the generated section."""
from xml.sax.saxutils import escape

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 50
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#7f7f7f"]
DOORS = {"ceiling": "bare tonic (ceiling)", "ceiling-ext-authz": "bare, Envoy's messages",
         "scopes": "Authorize.Check (scopes)", "http": "Authorize.Check{http}", "ext-authz": "ext_authz"}


def _nice_max(value):
    """A round axis maximum at or above `value`."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return float(step * magnitude)
    return float(10 * magnitude)


def _frame(title, y_label, y_max, x_ticks):
    """The axes, grid and title; returns (parts, x position, y position)."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    xs = {tick: LEFT + plot_w * i / max(len(x_ticks) - 1, 1) for i, tick in enumerate(x_ticks)}

    def y_of(value):
        return TOP + plot_h * (1 - value / y_max)

    parts = [f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
             f'<text x="16" y="{TOP + plot_h / 2}" transform="rotate(-90 16 {TOP + plot_h / 2})" '
             f'text-anchor="middle" font-size="12">{escape(y_label)}</text>']
    for i in range(5):
        value = y_max * i / 4
        y = y_of(value)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + plot_w}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end" font-size="11">{value:,.0f}</text>')
    for tick, x in xs.items():
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 18}" text-anchor="middle" font-size="11">{escape(str(tick))}</text>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{LEFT + plot_w}" y2="{TOP + plot_h}" stroke="#333"/>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="#333"/>')
    return parts, xs, y_of


def _svg(parts):
    body = "\n".join(parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
            f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif">\n'
            f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>\n{body}\n</svg>\n')


def lines_by_concurrency(rows, metric, title, y_label):
    """One line per door: `metric` (a row field) by concurrency."""
    series = {}
    for row in rows:
        series.setdefault(row["workload"], {})[row["concurrency"]] = row[metric]
    concurrencies = sorted({c for points in series.values() for c in points})
    y_max = _nice_max(max((v for points in series.values() for v in points.values()), default=1))
    parts, xs, y_of = _frame(title, y_label, y_max, concurrencies)
    parts.append(f'<text x="{LEFT + (WIDTH - LEFT - RIGHT) / 2}" y="{HEIGHT - 10}" text-anchor="middle" '
                 f'font-size="12">requests in flight</text>')
    for n, (workload, points) in enumerate(sorted(series.items())):
        colour = COLOURS[n % len(COLOURS)]
        dash = ' stroke-dasharray="6 4"' if workload.startswith("ceiling") else ""
        coords = " ".join(f"{xs[c]:.1f},{y_of(v):.1f}" for c, v in sorted(points.items()))
        parts.append(f'<polyline class="series" data-workload="{escape(workload)}" points="{coords}" '
                     f'fill="none" stroke="{colour}" stroke-width="2"{dash}/>')
        for c, v in sorted(points.items()):
            parts.append(f'<circle cx="{xs[c]:.1f}" cy="{y_of(v):.1f}" r="3" fill="{colour}">'
                         f'<title>{escape(DOORS.get(workload, workload))}, {c} in flight: {v:,.0f}</title></circle>')
        y = TOP + 14 + 18 * n
        parts.append(f'<line x1="{WIDTH - RIGHT + 12}" y1="{y - 4}" x2="{WIDTH - RIGHT + 32}" y2="{y - 4}" '
                     f'stroke="{colour}" stroke-width="2"{dash}/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 36}" y="{y}" font-size="11">{escape(DOORS.get(workload, workload))}</text>')
    return _svg(parts)


def bars(values, title, y_label):
    """Grouped bars: {door: {server: value}}."""
    doors = list(values)
    servers = sorted({s for by in values.values() for s in by})
    y_max = _nice_max(max((v for by in values.values() for v in by.values()), default=1))
    parts, _, y_of = _frame(title, y_label, y_max, [])
    plot_w = WIDTH - LEFT - RIGHT
    slot = plot_w / max(len(doors), 1)
    width = slot * 0.7 / max(len(servers), 1)
    for i, door in enumerate(doors):
        x0 = LEFT + slot * i + slot * 0.15
        parts.append(f'<text x="{LEFT + slot * (i + 0.5):.1f}" y="{HEIGHT - BOTTOM + 18}" text-anchor="middle" '
                     f'font-size="10">{escape(door)}</text>')
        for j, server in enumerate(servers):
            value = values[door].get(server)
            if value is None:
                continue
            y = y_of(value)
            parts.append(f'<rect class="bar" data-door="{escape(door)}" data-server="{escape(server)}" '
                         f'x="{x0 + width * j:.1f}" y="{y:.1f}" width="{width:.1f}" height="{TOP + (HEIGHT - TOP - BOTTOM) - y:.1f}" '
                         f'fill="{COLOURS[j % len(COLOURS)]}"><title>{escape(door)}, {escape(server)}: {value:,.0f}</title></rect>')
    for j, server in enumerate(servers):
        y = TOP + 14 + 18 * j
        parts.append(f'<rect x="{WIDTH - RIGHT + 12}" y="{y - 10}" width="14" height="10" fill="{COLOURS[j % len(COLOURS)]}"/>')
        parts.append(f'<text x="{WIDTH - RIGHT + 32}" y="{y}" font-size="11">{escape(server)}</text>')
    return _svg(parts)


def plots(checks, instructions):
    """{file name: SVG} for one run's rows (report.py's `checks` on shared
    cores over TCP, and the instruction counts)."""
    tcp = [r for r in checks if r.get("target") == "tcp" and r.get("label", "") == ""]
    out = {}
    if tcp:
        out["bench-throughput.svg"] = lines_by_concurrency(
            tcp, "rps", "Throughput by concurrency (TCP, shared cores)", "requests per second")
        out["bench-p99.svg"] = lines_by_concurrency(
            tcp, "p99_us", "p99 latency by concurrency (TCP, shared cores)", "p99 µs")
    if instructions:
        names = {"scopes": "Check (scopes)", "http": "Check{http}", "ext-authz": "ext_authz",
                 "ext-authz-allowed": "ext_authz (5 headers)", "forward-auth": "forward-auth"}
        twin = {"scopes": "ceiling", "http": "ceiling", "ext-authz": "ceiling-ext-authz",
                "ext-authz-allowed": "ceiling-ext-authz-allowed"}
        by = {(r["server"], r["workload"]): r["instructions_per_request"]
              for r in instructions if r.get("in_flight") == 1}
        values = {}
        for workload, name in names.items():
            if ("scopegate", workload) not in by:
                continue
            values[name] = {"scopegate": by[("scopegate", workload)]}
            bare = by.get(("bare", twin.get(workload, "")))
            if bare is not None:
                values[name]["bare tonic, same request"] = bare
        if values:
            out["bench-instructions.svg"] = bars(
                values, "Server instructions per request (1 in flight)", "instructions")
    return out
