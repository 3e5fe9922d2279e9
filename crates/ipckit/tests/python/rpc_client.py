#!/usr/bin/env python3
"""An ipckit RPC client written from docs/protocol/rpc.md alone, standard library only.

Usage: rpc_client.py HOST PORT
Binds to the Calc interface of crates/ipckit/tests/rpc_python.rs and prints one line per check.
"""
import socket
import struct
import sys

MAGIC, VERSION = 0xC5, 1
BIND, BIND_ACK, REQUEST, RESPONSE, FAULT, CANCEL = 1, 2, 3, 4, 5, 6
APP_ERROR = 2
UUID = "3f2b8c10-5a4e-4d6f-9b21-7e0c4a1d2e55"


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zigzag(n):
    return (n << 1) ^ (n >> 63)


def unzigzag(u):
    return (u >> 1) ^ -(u & 1)


def read_varint(buf, pos):
    shift = value = 0
    while True:
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return value, pos


def string(s):
    data = s.encode()
    return varint(len(data)) + data


class Conn:
    def __init__(self, host, port, major=1, minor=0):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.next_id = 1
        body = bytes.fromhex(UUID.replace("-", "")) + struct.pack("<HHI", major, minor, 1 << 20)
        self.send(BIND, 0, 0, 0, body)
        ty, flags, call_id, status, body = self.recv()
        assert ty == BIND_ACK, ty
        self.bind_status = status
        self.server_version = struct.unpack("<HH", body[:4])

    def send(self, ty, flags, call_id, aux, body):
        self.sock.sendall(struct.pack("<BBBBIII", MAGIC, VERSION, ty, flags, call_id, aux, len(body)) + body)

    def recv_exact(self, n):
        data = b""
        while len(data) < n:
            chunk = self.sock.recv(n - len(data))
            if not chunk:
                raise EOFError("connection closed")
            data += chunk
        return data

    def recv(self):
        magic, version, ty, flags, call_id, aux, length = struct.unpack("<BBBBIII", self.recv_exact(16))
        assert (magic, version) == (MAGIC, VERSION)
        return ty, flags, call_id, aux, self.recv_exact(length)

    def call(self, opnum, args):
        call_id = self.next_id
        self.next_id += 1
        self.send(REQUEST, 0, call_id, opnum, struct.pack("<I", 0) + args)
        ty, flags, got_id, aux, body = self.recv()
        assert got_id == call_id
        if ty == FAULT:
            return ("fault", aux, body.decode())
        return ("app_error" if flags & APP_ERROR else "ok", body)


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    c = Conn(host, port)
    print("bind", c.bind_status, "%d.%d" % c.server_version)
    # add(i64, i64) -> i64 is opnum 0.
    kind, body = c.call(0, varint(zigzag(40)) + varint(zigzag(2)))
    print("add", kind, unzigzag(read_varint(body, 0)[0]))
    kind, body = c.call(0, varint(zigzag(-7)) + varint(zigzag(-1000000)))
    print("add", kind, unzigzag(read_varint(body, 0)[0]))
    # div(i64, i64) -> Result<i64, MathError> is opnum 1; MathError::DivideByZero is variant 0.
    kind, body = c.call(1, varint(zigzag(84)) + varint(zigzag(2)))
    print("div", kind, unzigzag(read_varint(body, 0)[0]))
    kind, body = c.call(1, varint(zigzag(1)) + varint(zigzag(0)))
    print("div", kind, read_varint(body, 0)[0])
    # greet(String) -> String is opnum 2.
    kind, body = c.call(2, string("python"))
    n, pos = read_varint(body, 0)
    print("greet", kind, body[pos:pos + n].decode())
    # An opnum out of range, and bad arguments.
    print("opnum", *c.call(99, b"")[:2])
    print("args", *c.call(0, b"\xff")[:2])
    # A refused bind: higher minor than the server's.
    print("bind", Conn(host, port, 1, 9).bind_status)


if __name__ == "__main__":
    main()
