#!/usr/bin/env python3
"""Holds COUNT idle HTTPS connections open (scripts/bench-compare.sh, memory
workload): each one completes its TLS handshake, sends one keep-alive
HTTP/1.1 request and reads the whole response, then stays idle until SIGTERM
(or --hold seconds). Progress goes to STATUS (one line, rewritten):

  opening N/COUNT failed F      while connecting
  ready OPEN/COUNT failed F     every connection tried; OPEN are idle now
  alive A/OPEN                  on SIGUSR1 (and again on SIGTERM, before
                                closing them all): how many are still open
                                (not closed by a peer)

  hold.py HOST PORT COUNT STATUS [--cafile PEM] [--parallel N] [--hold SECONDS]
"""
import argparse
import asyncio
import os
import signal
import ssl
import sys


def write_status(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


async def one(host, port, ctx, request, gate, timeout):
    async with gate:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), timeout)
        try:
            writer.write(request)
            await asyncio.wait_for(writer.drain(), timeout)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
            status = head.split(b"\r\n", 1)[0]
            if b" 200 " not in status + b" ":
                raise RuntimeError(f"status {status!r}")
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
                if name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                    raise RuntimeError("server closes the connection")
            await asyncio.wait_for(reader.readexactly(length), timeout)
        except BaseException:
            writer.close()
            raise
        return reader, writer


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("host")
    ap.add_argument("port", type=int)
    ap.add_argument("count", type=int)
    ap.add_argument("status")
    ap.add_argument("--cafile")
    ap.add_argument("--parallel", type=int, default=64)
    ap.add_argument("--hold", type=float, default=300.0)
    ap.add_argument("--timeout", type=float, default=20.0)
    args = ap.parse_args()

    ctx = ssl.create_default_context(cafile=args.cafile) if args.cafile else ssl._create_unverified_context()
    ctx.set_alpn_protocols(["http/1.1"])
    request = (f"GET /index.html HTTP/1.1\r\nHost: {args.host}\r\n"
               "Connection: keep-alive\r\n\r\n").encode()
    stop = asyncio.Event()
    conns = []
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    def report_alive():
        alive = sum(1 for reader, _ in conns if not reader.at_eof())
        write_status(args.status, f"alive {alive}/{len(conns)}")
    loop.add_signal_handler(signal.SIGUSR1, report_alive)

    gate = asyncio.Semaphore(args.parallel)
    tasks = [asyncio.create_task(one(args.host, args.port, ctx, request, gate, args.timeout))
             for _ in range(args.count)]
    done_count = 0
    failed = 0
    errors = {}
    write_status(args.status, f"opening 0/{args.count} failed 0")
    for fut in asyncio.as_completed(tasks):
        try:
            conns.append(await fut)
        except Exception as e:  # noqa: BLE001 - counted and reported
            failed += 1
            key = f"{type(e).__name__}: {e}"[:120]
            errors[key] = errors.get(key, 0) + 1
        done_count += 1
        if done_count % 100 == 0:
            write_status(args.status, f"opening {done_count}/{args.count} failed {failed}")
        if stop.is_set():
            break
    for key, n in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"hold.py: {n} x {key}", file=sys.stderr)
    write_status(args.status, f"ready {len(conns)}/{args.count} failed {failed}")

    try:
        await asyncio.wait_for(stop.wait(), args.hold)
    except asyncio.TimeoutError:
        print(f"hold.py: --hold {args.hold} s over, closing", file=sys.stderr)
    report_alive()
    for _, writer in conns:
        writer.close()
    for task in tasks:
        task.cancel()


if __name__ == "__main__":
    asyncio.run(main())
