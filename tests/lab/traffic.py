#!/usr/bin/env python3
"""Lab traffic for the tlsgate system tests: parallel TCP transfers, each
checked byte for byte with SHA-256.

  traffic.py serve --port P             serve uploads and downloads (IPv4+IPv6) until killed
  traffic.py run --host H --port P --jobs N --sizes 1M,5M,50M [--timeout S]

A job opens one connection and sends a 13-byte header: mode ('U' upload or
'D' download), size (8 bytes), seed (4 bytes). Upload: the client sends
`size` bytes generated from `seed`, then half-closes; the server answers with
the SHA-256 of what it got. Download: the server sends `size` bytes from
`seed`, then half-closes. Jobs alternate U and D and cycle through the sizes.
`run` prints one JSON line and exits 0 only if every job verified.
"""
import argparse
import hashlib
import json
import random
import socket
import struct
import sys
import threading

HEADER = struct.Struct("!cQI")
CHUNK = 256 * 1024


def data_for(seed, size):
    return random.Random(seed).randbytes(size)


def read_exact(conn, size):
    parts, left = [], size
    while left:
        part = conn.recv(min(left, CHUNK))
        if not part:
            raise ConnectionError(f"peer closed with {left} of {size} bytes missing")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def handle(conn):
    with conn:
        mode, size, seed = HEADER.unpack(read_exact(conn, HEADER.size))
        if mode == b"U":
            digest, left = hashlib.sha256(), size
            while left:
                part = conn.recv(min(left, CHUNK))
                if not part:
                    return
                digest.update(part)
                left -= len(part)
            conn.sendall(digest.digest())
        elif mode == b"D":
            conn.sendall(data_for(seed, size))
        conn.shutdown(socket.SHUT_WR)
        while conn.recv(CHUNK):
            pass


def serve(port):
    server = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True, backlog=512)
    while True:
        conn, _ = server.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def parse_size(text):
    units = {"K": 1024, "M": 1024 * 1024}
    return int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text)


def job(host, port, mode, size, seed, timeout):
    payload = data_for(seed, size)
    with socket.create_connection((host, port), timeout=timeout) as conn:
        conn.sendall(HEADER.pack(mode, size, seed))
        if mode == b"U":
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            answer = read_exact(conn, 32)
            if answer != hashlib.sha256(payload).digest():
                raise ValueError("upload digest mismatch")
        else:
            conn.shutdown(socket.SHUT_WR)
            received = read_exact(conn, size)
            if conn.recv(1):
                raise ValueError("extra bytes after the download")
            if hashlib.sha256(received).digest() != hashlib.sha256(payload).digest():
                raise ValueError("download content mismatch")


def run(args):
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    results, lock = {"ok": 0, "failed": 0, "bytes": 0, "errors": []}, threading.Lock()

    def worker(index):
        mode = b"U" if index % 2 == 0 else b"D"
        size = sizes[index % len(sizes)]
        try:
            job(args.host, args.port, mode, size, 1000 + index, args.timeout)
            with lock:
                results["ok"] += 1
                results["bytes"] += size
        except Exception as err:  # every failure is reported, none is fatal to the others
            with lock:
                results["failed"] += 1
                results["errors"].append(f"job {index} {mode.decode()} {size}: {err!r}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(json.dumps(results))
    return 0 if results["failed"] == 0 and results["ok"] == args.jobs else 1


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve")
    p_serve.add_argument("--port", type=int, required=True)
    p_run = sub.add_parser("run")
    p_run.add_argument("--host", required=True)
    p_run.add_argument("--port", type=int, required=True)
    p_run.add_argument("--jobs", type=int, default=10)
    p_run.add_argument("--sizes", default="1M")
    p_run.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
