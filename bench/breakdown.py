"""Per-layer instructions per request from bench/breakdown.sh's callgrind dumps.

Each function's exclusive count (run minus idle, over N requests) goes to the
first layer whose pattern its demangled name contains, in LAYERS' order: so
`drop_in_place<h2::…>` is HTTP/2's and `<… as prost::Message>::merge` is
protobuf's, whoever's type it is. Inlined code counts where it was inlined.
"""

import re
import sys
from collections import defaultdict

LAYERS = [
    ("SHA-256 (portable: valgrind hides SHA-NI)", ("sha2::",)),
    ("allocator (mimalloc)", ()),
    ("memcpy / memset / memcmp (libc)", ()),
    ("libc: syscall wrappers, locks", ()),
    ("metrics (the request counter and latency histogram)", ("metrics", "scopegate::telemetry")),
    ("tracing", ("tracing", "opentelemetry")),
    ("scopegate: the gate", ("scopegate::gate", "scopegate::throttle", "scopegate::readiness")),
    ("scopegate: usage, credits, limits", ("scopegate::usage", "scopegate::balances", "scopegate::counters",
                                           "limitador")),
    ("scopegate: decision core (token, table, scopes)", ("scopegate_core", "crc32fast", "base64", "subtle",
                                                         "digest")),
    ("scopegate: gRPC edge (request to answer)", ("scopegate",)),
    ("HTTP/2 (h2)", ("h2::",)),
    ("hyper", ("hyper",)),
    ("protobuf (prost)", ("prost",)),
    ("tonic", ("tonic",)),
    ("tower layers", ("tower",)),
    ("tokio (tasks, timers, IO)", ("tokio",)),
    ("bytes, http, hashbrown", ("bytes::", "http::", "http_body", "hashbrown::", "matchit", "axum")),
    ("core / alloc / std (generic glue)", ("core::", "alloc::", "std::")),
]
OTHER = "other"
ALLOCATOR, MEMORY, LIBC = LAYERS[1][0], LAYERS[2][0], LAYERS[3][0]
MEMORY_FUNCTIONS = ("memcpy", "memmove", "memset", "memcmp", "bcmp")
LINE = re.compile(r"^\s*([\d,]+)\s+(?:\([\d.]+%\)\s+)?(.*?)(?:\s+\[(.*)\])?\s*$")


def functions(path):
    """{(function, object): exclusive Ir} from a callgrind dump, read directly:
    cost lines under `fn=` count, the line after `calls=` (a callee's
    inclusive cost) does not."""
    names = {"fn": {}, "ob": {}}
    out = defaultdict(int)
    fn = ob = ""
    skip_next = False
    for line in open(path, encoding="utf-8", errors="replace"):
        line = line.rstrip("\n")
        if skip_next:
            skip_next = False
            continue
        key, _, value = line.partition("=")
        if key in ("fn", "ob", "cfn", "cob"):
            match = re.match(r"^\((\d+)\)(?: (.*))?$", value)
            kind = key.lstrip("c")
            if match:
                if match.group(2) is not None:
                    names[kind][match.group(1)] = match.group(2)
                value = names[kind].get(match.group(1), value)
            if key == "fn":
                fn = value
            elif key == "ob":
                ob = value
            continue
        if key == "calls":
            skip_next = True
            continue
        if line and (line[0].isdigit() or line[0] in "+-*"):
            parts = line.split()
            if len(parts) >= 2:
                out[(fn, ob)] += int(parts[-1])
    return out


def inclusive(path):
    """{function: inclusive Ir} from a callgrind_annotate --inclusive=yes listing."""
    out = {}
    started = False
    for line in open(path, encoding="utf-8", errors="replace"):
        if "file:function" in line:
            started = True
            continue
        match = LINE.match(line) if started else None
        if not match or not match.group(2):
            continue
        name = match.group(2)
        name = name[4:] if name.startswith("???:") else re.sub(r"^(?:[^:]|::)*?[^:]:(?!:)", "", name, count=1)
        out[name] = out.get(name, 0) + int(match.group(1).replace(",", ""))
    return out


def per_request(work, server, requests, read=functions, suffix=""):
    run = read(f"{work}/{server}.run{suffix}")
    idle = read(f"{work}/{server}.idle{suffix}")
    return {key: (count - idle.get(key, 0)) / requests for key, count in run.items()}


def unclassified(costs):
    """The biggest functions no layer claimed, to extend LAYERS with."""
    rest = [(cost, name) for (name, obj), cost in costs.items() if layer(name, obj) == OTHER]
    return sorted(rest, reverse=True)[:8]


def layer(name, obj):
    """The layer of a function: by the path it is named under (the type of an
    impl, `<T as Trait>::f` is T's), so generic glue instantiated for h2's types
    is h2's."""
    if name.startswith(("mi_", "_mi_")):
        return ALLOCATOR
    library = obj.rsplit("/", 1)[-1]
    if library.startswith(("libc.", "ld-linux", "libm.", "libgcc")):
        return MEMORY if any(p in name for p in MEMORY_FUNCTIONS) else LIBC
    head = re.split(r"<| as ", name.lstrip("<&"), maxsplit=1)[0]
    if head.startswith(("core::ptr::drop_in_place", "core::ops::function")):
        inner = name[len(head):].lstrip("<:")
        head = re.split(r"<| as ", inner.lstrip("<&"), maxsplit=1)[0] or head
    for label, prefixes in LAYERS:
        if prefixes and head.startswith(prefixes):
            return label
    return OTHER


def by_layer(costs):
    sums = defaultdict(float)
    for (name, obj), cost in costs.items():
        sums[layer(name, obj)] += cost
    return sums


def main():
    work, requests, workload = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    bare = by_layer(per_request(work, "bare", requests))
    ours = by_layer(per_request(work, "scopegate", requests))
    total_bare, total_ours = sum(bare.values()), sum(ours.values())
    print(f"Instructions per request, `{workload}`, one in flight, {requests} requests "
          f"(exclusive counts by layer, idle subtracted):\n")
    print("| layer | bare tonic server | scopegate | difference |")
    print("|---|---|---|---|")
    for label in [label for label, _ in LAYERS] + [OTHER]:
        b, o = bare.get(label, 0), ours.get(label, 0)
        if abs(b) < 50 and abs(o) < 50:
            continue
        print(f"| {label} | {b:,.0f} | {o:,.0f} | {o - b:+,.0f} |")
    print(f"| **total** | **{total_bare:,.0f}** | **{total_ours:,.0f}** | **{total_ours - total_bare:+,.0f}** "
          f"({total_ours / total_bare:.2f}×) |")
    for cost, name in unclassified(per_request(work, "scopegate", requests)):
        print(f"other: {cost:,.0f} {name[:150]}", file=sys.stderr)
    costs = per_request(work, "scopegate", requests, read=inclusive, suffix=".incl.txt")
    ours_fns = sorted(((cost, name) for name, cost in costs.items()
                       if name.startswith(("scopegate", "<scopegate")) and cost >= 100), reverse=True)
    print("\nscopegate's own functions, inclusive instructions per request (≥ 100):\n")
    print("| function | inclusive |")
    print("|---|---|")
    for cost, name in ours_fns[:30]:
        short = re.sub(r"<[^<>]*>", "<…>", name) if len(name) > 110 else name
        print(f"| `{short[:140]}` | {cost:,.0f} |")


if __name__ == "__main__":
    main()
