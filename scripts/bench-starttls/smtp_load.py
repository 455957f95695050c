#!/usr/bin/env python3
"""scripts/bench-starttls/smtp_load.py — the SMTP load driver of
bench-starttls.sh: a fixed number of complete SMTP sessions with STARTTLS,
CONCURRENCY at a time, in one asyncio process (OpenSSL through Python's ssl).

  smtp_load.py --host H --port P --ca CA.pem --name SNI --sessions N --concurrency C

Each session: connect, greeting (220), EHLO, STARTTLS (220), TLS handshake
verifying the server's certificate against CA.pem only and for SNI (the name
is also sent as SNI), EHLO again, MAIL FROM, RCPT TO, DATA with a small
message (a unique Message-ID), QUIT (221), close. Any other reply, a
verification error, a closed connection or 30 s without progress fails the
session. Prints one JSON object: sessions, ok, failed, the first few failure
reasons with their counts, elapsed seconds (first connect to last close),
sessions per second (ok / elapsed), the session latencies' median and 95th
percentile (ms), and the driver's own CPU seconds (user + system).
"""
import argparse
import asyncio
import collections
import json
import resource
import ssl
import statistics
import time

SESSION_TIMEOUT_S = 30


class Refused(Exception):
    """The server answered with another code than the one expected."""


async def reply(reader):
    """One SMTP reply (all its lines); returns its code and last line."""
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        if len(line) < 4 or line[3:4] != b"-":
            return int(line[:3]), line


async def expect(reader, code, what):
    got, line = await reply(reader)
    if got != code:
        raise Refused(f"{what}: {line[:60]!r}")


async def command(reader, writer, text, code):
    writer.write(text.encode() + b"\r\n")
    await expect(reader, code, text.split(":")[0])


def message(index):
    return (
        f"From: Load <sender@lab.test>\r\nTo: Tester <tester@lab.test>\r\n"
        f"Subject: bench-starttls {index}\r\nMessage-ID: <bench-{index}@lab.test>\r\n\r\n"
        "A small message of the STARTTLS benchmark.\r\n.\r\n"
    ).encode()


async def session(args, context, index):
    reader, writer = await asyncio.open_connection(args.host, args.port)
    try:
        await expect(reader, 220, "greeting")
        await command(reader, writer, "EHLO client.lab.test", 250)
        await command(reader, writer, "STARTTLS", 220)
        await writer.start_tls(context, server_hostname=args.name)
        await command(reader, writer, "EHLO client.lab.test", 250)
        await command(reader, writer, "MAIL FROM:<sender@lab.test>", 250)
        await command(reader, writer, "RCPT TO:<tester@lab.test>", 250)
        await command(reader, writer, "DATA", 354)
        writer.write(message(index))
        await expect(reader, 250, "end of data")
        await command(reader, writer, "QUIT", 221)
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass


async def main(args):
    context = ssl.create_default_context(cafile=args.ca)  # verifies the chain and the name
    next_index = iter(range(args.sessions))
    failures = collections.Counter()
    latencies = []

    async def worker():
        for index in next_index:
            begin = time.monotonic()
            try:
                await asyncio.wait_for(session(args, context, index), SESSION_TIMEOUT_S)
                latencies.append(time.monotonic() - begin)
            except (OSError, ssl.SSLError, Refused, ValueError, asyncio.TimeoutError) as error:
                failures[f"{type(error).__name__}: {error}"[:120]] += 1

    start = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(args.concurrency)))
    elapsed = time.monotonic() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    ok = len(latencies)
    latencies.sort()
    print(json.dumps({
        "sessions": args.sessions,
        "ok": ok,
        "failed": sum(failures.values()),
        "failures": dict(failures.most_common(5)),
        "elapsed_s": round(elapsed, 3),
        "rate": round(ok / elapsed, 1) if elapsed > 0 else 0,
        "latency_median_ms": round(1e3 * statistics.median(latencies), 1) if ok else None,
        "latency_p95_ms": round(1e3 * latencies[int(0.95 * (ok - 1))], 1) if ok else None,
        "client_cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=25)
    parser.add_argument("--ca", required=True, help="the only CA trusted")
    parser.add_argument("--name", required=True, help="SNI and the name verified")
    parser.add_argument("--sessions", type=int, required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    asyncio.run(main(parser.parse_args()))
