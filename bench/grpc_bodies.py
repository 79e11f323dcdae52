"""Pre-encoded gRPC request bodies (5-byte frame header + protobuf) for
bench/cerbos.sh, which drives every server with the same HTTP/2 load
generator (h2load): scopegate's Authorize.Check (also what the bare tonic
server answers) and Cerbos's CheckResources asking the same question, "may
this key, whose scopes are these, do mail.send?".

    python3 bench/grpc_bodies.py scopegate OUT TOKEN
    python3 bench/grpc_bodies.py cerbos OUT SCOPE[,SCOPE...]

Field numbers: scopegate's proto/scopegate/v1/authorize.proto; Cerbos's
cerbos.request.v1.CheckResourcesRequest (request_id 1, principal 3,
resources 4), engine.v1 Principal (id 1, roles 3, attr 4) and Resource (kind
1, id 3), checked against a running Cerbos (a wrong number is refused with
INVALID_ARGUMENT naming the field).
"""

import struct
import sys


def varint(n):
    out = b""
    while True:
        low, n = n & 0x7F, n >> 7
        out += bytes([low | (0x80 if n else 0)])
        if not n:
            return out


def field(number, payload):
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def text(number, value):
    return field(number, value.encode())


def grpc_frame(message):
    return b"\x00" + struct.pack(">I", len(message)) + message


def scopegate_check(token):
    return grpc_frame(text(1, token) + text(2, "mail.send"))


def cerbos_check(scopes):
    # attr {"scopes": Value{list_value: ListValue{values: [Value{string_value}]}}}
    scope_list = field(6, b"".join(field(1, text(3, scope)) for scope in scopes))
    principal = text(1, "key-1") + text(3, "api_key") + field(4, text(1, "scopes") + field(2, scope_list))
    entry = text(1, "mail.send") + field(2, text(1, "email_api") + text(3, "r1"))
    return grpc_frame(text(1, "bench") + field(3, principal) + field(4, entry))


if __name__ == "__main__":
    kind, out, arg = sys.argv[1:4]
    body = cerbos_check(arg.split(",")) if kind == "cerbos" else scopegate_check(arg)
    open(out, "wb").write(body)
