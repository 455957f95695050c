#!/usr/bin/python3
"""Generate the deterministic pcap fixtures in pcap-fixtures/ and EXPECTED.toml.

Usage:  scripts/gen-fixtures.py [OUTPUT_DIR]      (default: <repo>/pcap-fixtures)

Needs Debian's python3-scapy (scripts/setup.sh installs it); the shebang is
/usr/bin/python3 on purpose, so a python3 earlier on PATH (pyenv, venv) that
lacks scapy is not picked up.

Scapy only builds the frames; the pcap files are written by this script
(classic pcap, little-endian, v2.4, snaplen 65535, linktype 1 = Ethernet,
timestamps 1_700_000_000.000000 + 1 ms per frame in each file), so running it
twice produces byte-identical files.

Replay rule that EXPECTED.toml encodes (the bridge's contract):
  * a frame shorter than a complete Ethernet header including its VLAN tags
    (TPID 0x8100 / 0x88a8 / 0x9100, at most two tags unwrapped) is a runt:
    dropped, and counted as malformed and as dropped;
  * every other frame is bridged unchanged, byte for byte;
  * a bridged frame whose L3/L4 header fails validation (IPv4 bad header
    checksum, IHL < 5, header or total length beyond the frame; IPv6 header or
    payload length beyond the frame; TCP data offset < 5 or beyond the segment;
    ...) is also counted as malformed.
Each frame's category is declared when it is built AND recomputed from its
bytes by classify() below; the two must agree, so the numbers are exact.
"""

import os
import random
import struct
import sys
import textwrap

from scapy.config import conf

conf.verb = 0
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import (  # noqa: E402
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptSrcLLAddr,
    IPv6,
)
from scapy.layers.l2 import ARP, Dot1Q, Ether  # noqa: E402
from scapy.packet import Raw  # noqa: E402

CLI_MAC = "02:00:00:00:00:01"
SRV_MAC = "02:00:00:00:00:02"
BCAST = "ff:ff:ff:ff:ff:ff"
CLI4, SRV4 = "198.18.0.1", "198.18.0.2"
CLI6, SRV6 = "2001:2::1", "2001:2::2"
T0 = 1_700_000_000  # seconds; frame i is stamped T0 + i ms
SNAPLEN = 65535
LINKTYPE_ETHERNET = 1
PAD = b"\xaa"  # non-zero padding: a parser must use the IP length, not the frame length

OK, L3BAD, RUNT = "ok", "l3-malformed", "runt"
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
MAX_TAGS = 2


# --------------------------------------------------------------------------
# Independent validator: recomputes a frame's category from its bytes.
# --------------------------------------------------------------------------
def csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def l4_ok(proto: int, seg: bytes) -> bool:
    if proto == 6:  # TCP
        if len(seg) < 20:
            return False
        doff = seg[12] >> 4
        return doff >= 5 and doff * 4 <= len(seg)
    if proto == 17:  # UDP
        return len(seg) >= 8 and 8 <= struct.unpack("!H", seg[4:6])[0] <= len(seg)
    if proto in (1, 58):  # ICMP, ICMPv6
        return len(seg) >= 8 if seg[:1] in (b"\x00", b"\x08", b"\x80", b"\x81") else len(seg) >= 4
    return True


def classify(frame: bytes) -> str:
    hdr = 14
    if len(frame) < hdr:
        return RUNT
    etype = struct.unpack("!H", frame[12:14])[0]
    for _ in range(MAX_TAGS):
        if etype not in VLAN_TPIDS:
            break
        if len(frame) < hdr + 4:
            return RUNT
        etype = struct.unpack("!H", frame[hdr + 2:hdr + 4])[0]
        hdr += 4
    l3 = frame[hdr:]
    if etype == 0x0800:
        if len(l3) < 20 or l3[0] >> 4 != 4:
            return L3BAD
        ihl = (l3[0] & 0xF) * 4
        total = struct.unpack("!H", l3[2:4])[0]
        if ihl < 20 or ihl > len(l3) or total < ihl or total > len(l3):
            return L3BAD
        if csum16(l3[:ihl]) != 0xFFFF:
            return L3BAD
        frag_off = struct.unpack("!H", l3[6:8])[0] & 0x1FFF
        if frag_off == 0 and not l4_ok(l3[9], l3[ihl:total]):
            return L3BAD
        return OK
    if etype == 0x86DD:
        if len(l3) < 40 or l3[0] >> 4 != 6:
            return L3BAD
        plen = struct.unpack("!H", l3[4:6])[0]
        if 40 + plen > len(l3):
            return L3BAD
        if not l4_ok(l3[6], l3[40:40 + plen]):
            return L3BAD
        return OK
    if etype == 0x0806:
        return OK if len(l3) >= 28 else L3BAD
    return OK  # any other ethertype: not inspected, bridged as is


# --------------------------------------------------------------------------
# Fixture bookkeeping and the pcap writer.
# --------------------------------------------------------------------------
class Fixture:
    def __init__(self, name: str, title: str, af_packet_exact: bool = True, note: str = ""):
        self.name, self.title, self.note = name, title, note
        self.af_packet_exact = af_packet_exact
        self.frames = []  # (bytes, category, label)

    def add(self, pkt, cat: str = OK, label: str = "", pad_to: int = 0, pad: bytes = PAD):
        data = bytes(pkt)
        if pad_to and len(data) < pad_to:
            data += pad * (pad_to - len(data))
        got = classify(data)
        if got != cat:
            sys.exit(f"gen-fixtures: {self.name} frame {len(self.frames) + 1} ({label or pkt!r}): "
                     f"declared {cat}, bytes say {got}")
        self.frames.append((data, cat, label))

    def counts(self):
        n = len(self.frames)
        runts = sum(1 for _, c, _ in self.frames if c == RUNT)
        bad = sum(1 for _, c, _ in self.frames if c == L3BAD)
        return {"frames_in": n, "frames_out": n - runts, "malformed": runts + bad, "dropped": runts}

    def write(self, outdir: str):
        out = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, LINKTYPE_ETHERNET))
        for i, (data, _, _) in enumerate(self.frames):
            sec, usec = T0 + i // 1000, (i % 1000) * 1000
            out += struct.pack("<IIII", sec, usec, len(data), len(data)) + data
        path = os.path.join(outdir, self.name)
        with open(path + ".tmp", "wb") as f:
            f.write(out)
        os.replace(path + ".tmp", path)


def eth(src=CLI_MAC, dst=SRV_MAC, **kw):
    return Ether(src=src, dst=dst, **kw)


def c2s4():
    return eth(CLI_MAC, SRV_MAC) / IP(src=CLI4, dst=SRV4)


def s2c4():
    return eth(SRV_MAC, CLI_MAC) / IP(src=SRV4, dst=CLI4)


PING_DATA = bytes(range(0x10, 0x10 + 48)) + b"tlsgate!"  # 56 bytes like ping(8)


# --------------------------------------------------------------------------
# The fixtures.
# --------------------------------------------------------------------------
def fx_arp():
    f = Fixture("arp.pcap", "ARP request (broadcast, 42 B unpadded) and reply (zero-padded to 60 B)")
    f.add(eth(CLI_MAC, BCAST) / ARP(op=1, hwsrc=CLI_MAC, psrc=CLI4, hwdst="00:00:00:00:00:00", pdst=SRV4),
          label="who-has")
    f.add(eth(SRV_MAC, CLI_MAC) / ARP(op=2, hwsrc=SRV_MAC, psrc=SRV4, hwdst=CLI_MAC, pdst=CLI4),
          label="is-at", pad_to=60, pad=b"\0")
    return f


def fx_icmp():
    f = Fixture("icmp.pcap", "IPv4 ICMP echo request/reply x3 (id 0x1234, seq 1..3, 56-byte payload)")
    for seq in (1, 2, 3):
        f.add(eth(CLI_MAC, SRV_MAC) / IP(src=CLI4, dst=SRV4, id=0x4000 + seq, flags="DF")
              / ICMP(type=8, id=0x1234, seq=seq) / PING_DATA, label=f"echo-req {seq}")
        f.add(eth(SRV_MAC, CLI_MAC) / IP(src=SRV4, dst=CLI4, id=0x5000 + seq)
              / ICMP(type=0, id=0x1234, seq=seq) / PING_DATA, label=f"echo-rep {seq}")
    return f


def fx_icmpv6_nd():
    f = Fixture("icmpv6-nd.pcap", "IPv6 neighbour solicitation/advertisement, then echo request/reply")
    f.add(eth(CLI_MAC, "33:33:ff:00:00:02") / IPv6(src=CLI6, dst="ff02::1:ff00:2", hlim=255)
          / ICMPv6ND_NS(tgt=SRV6) / ICMPv6NDOptSrcLLAddr(lladdr=CLI_MAC), label="NS")
    f.add(eth(SRV_MAC, CLI_MAC) / IPv6(src=SRV6, dst=CLI6, hlim=255)
          / ICMPv6ND_NA(tgt=SRV6, R=0, S=1, O=1) / ICMPv6NDOptDstLLAddr(lladdr=SRV_MAC), label="NA")
    f.add(eth(CLI_MAC, SRV_MAC) / IPv6(src=CLI6, dst=SRV6) / ICMPv6EchoRequest(id=0x1234, seq=1, data=PING_DATA),
          label="echo-req")
    f.add(eth(SRV_MAC, CLI_MAC) / IPv6(src=SRV6, dst=CLI6) / ICMPv6EchoReply(id=0x1234, seq=1, data=PING_DATA),
          label="echo-rep")
    return f


def tagged_payloads():
    """(src, dst, L3 payload, label) carried inside the VLAN fixtures."""
    return [
        (CLI_MAC, BCAST, ARP(op=1, hwsrc=CLI_MAC, psrc=CLI4, pdst=SRV4), "arp who-has"),
        (SRV_MAC, CLI_MAC, ARP(op=2, hwsrc=SRV_MAC, psrc=SRV4, hwdst=CLI_MAC, pdst=CLI4), "arp is-at"),
        (CLI_MAC, SRV_MAC, IP(src=CLI4, dst=SRV4) / ICMP(type=8, id=7, seq=1) / PING_DATA, "icmp echo-req"),
        (SRV_MAC, CLI_MAC, IP(src=SRV4, dst=CLI4) / ICMP(type=0, id=7, seq=1) / PING_DATA, "icmp echo-rep"),
        (CLI_MAC, SRV_MAC, IP(src=CLI4, dst=SRV4, flags="DF")
         / TCP(sport=40001, dport=443, seq=1000, flags="S", window=64240,
               options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (1000, 0)), ("NOP", None),
                        ("WScale", 7)]), "tcp syn"),
        (SRV_MAC, CLI_MAC, IP(src=SRV4, dst=CLI4, flags="DF")
         / TCP(sport=443, dport=40001, seq=5000, ack=1001, flags="SA", window=65160,
               options=[("MSS", 1460), ("SAckOK", b""), ("Timestamp", (9000, 1000)), ("NOP", None),
                        ("WScale", 7)]), "tcp syn-ack"),
        (CLI_MAC, SRV_MAC, IP(src=CLI4, dst=SRV4) / UDP(sport=40002, dport=9999) / b"tlsgate vlan udp", "udp v4"),
        (CLI_MAC, SRV_MAC, IPv6(src=CLI6, dst=SRV6) / UDP(sport=40003, dport=9999) / b"tlsgate vlan udp6",
         "udp v6"),
    ]


def fx_vlan():
    f = Fixture("vlan.pcap", "802.1Q single-tagged (VID 10), 802.1Q-in-802.1Q double-tagged (outer VID 100, "
                "inner VID 10) and one priority-tagged (VID 0, PCP 5) frame carrying ARP, ICMP, TCP, UDP")
    for src, dst, l3, label in tagged_payloads():
        f.add(eth(src, dst) / Dot1Q(vlan=10, prio=3) / l3, label=f"1q {label}")
    for src, dst, l3, label in tagged_payloads():
        f.add(eth(src, dst) / Dot1Q(vlan=100) / Dot1Q(vlan=10) / l3, label=f"qinq {label}")
    f.add(eth(CLI_MAC, SRV_MAC) / Dot1Q(vlan=0, prio=5) / IP(src=CLI4, dst=SRV4) / ICMP(id=8, seq=1) / PING_DATA,
          label="priority-tagged icmp")
    return f


def fx_vlan_stag():
    f = Fixture("vlan-stag.pcap", "Q-in-Q with service-tag TPIDs: outer 0x88a8 (802.1ad, VID 200) and outer "
                "0x9100 (pre-standard, VID 300), inner 802.1Q VID 10, carrying ARP, ICMP, TCP, UDP",
                af_packet_exact=False,
                note="the kernel strips the outer 0x88a8 tag into packet metadata and DPDK 22.11's af_packet "
                     "PMD re-inserts it with TPID 0x8100, so the 8 frames with outer 0x88a8 leave the lab with "
                     "0x8100 (the 0x9100 ones are exact); replay with the pcap PMD or real NICs.")
    for src, dst, l3, label in tagged_payloads():
        f.add(eth(src, dst, type=0x88A8) / Dot1Q(vlan=200) / Dot1Q(vlan=10) / l3, label=f"88a8 {label}")
    for src, dst, l3, label in tagged_payloads():
        f.add(eth(src, dst, type=0x9100) / Dot1Q(vlan=300) / Dot1Q(vlan=10) / l3, label=f"9100 {label}")
    return f


def fx_tcp_session():
    f = Fixture("tcp-session.pcap", "plain IPv4 TCP/HTTP session 198.18.0.1:40000 -> 198.18.0.2:80 with TCP "
                "timestamps: handshake, HTTP GET, ~4.3 KB response in 3 segments, FIN/ACK teardown")
    cport, sport = 40000, 80
    c_isn, s_isn = 0x1000_0000, 0x2000_0000
    c_ts, s_ts = 100_000, 500_000
    ip_c = iter(range(0x6000, 0x7000))
    ip_s = iter(range(0x7000, 0x8000))

    def c(flags, seq, ack, data=b"", opts=None, win=502):
        nonlocal c_ts
        c_ts += 1
        o = opts if opts is not None else [("NOP", None), ("NOP", None), ("Timestamp", (c_ts, s_ts))]
        f.add(eth(CLI_MAC, SRV_MAC) / IP(src=CLI4, dst=SRV4, id=next(ip_c), flags="DF")
              / TCP(sport=cport, dport=sport, seq=seq, ack=ack, flags=flags, window=win, options=o) / data,
              label=f"c->s {flags} {len(data)}B")

    def s(flags, seq, ack, data=b"", opts=None, win=509):
        nonlocal s_ts
        s_ts += 1
        o = opts if opts is not None else [("NOP", None), ("NOP", None), ("Timestamp", (s_ts, c_ts))]
        f.add(eth(SRV_MAC, CLI_MAC) / IP(src=SRV4, dst=CLI4, id=next(ip_s), flags="DF")
              / TCP(sport=sport, dport=cport, seq=seq, ack=ack, flags=flags, window=win, options=o) / data,
              label=f"s->c {flags} {len(data)}B")

    req = (b"GET /index.html HTTP/1.1\r\n"
           b"Host: origin.test\r\n"
           b"User-Agent: curl/7.88.1\r\n"
           b"Accept: text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8\r\n"
           b"Accept-Language: en-GB,en;q=0.7\r\n"
           b"Accept-Encoding: identity\r\n"
           b"Cache-Control: no-cache\r\n"
           b"X-Tlsgate-Fixture: tcp-session\r\n"
           b"Connection: close\r\n\r\n")
    body = b"".join(b"line %04d: the quick brown fox jumps over the lazy tlsgate bridge\n" % i for i in range(64))
    resp = (b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: text/plain\r\n"
            b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
    mss_data = 1448  # MSS 1460 minus 12 bytes of timestamp option

    syn_opts = lambda ts, ecr: [("MSS", 1460), ("SAckOK", b""), ("Timestamp", (ts, ecr)), ("NOP", None),
                                ("WScale", 7)]
    c("S", c_isn, 0, opts=syn_opts(c_ts + 1, 0), win=64240)
    s("SA", s_isn, c_isn + 1, opts=syn_opts(s_ts + 1, c_ts), win=65160)
    c("A", c_isn + 1, s_isn + 1)
    c("PA", c_isn + 1, s_isn + 1, req)
    s("A", s_isn + 1, c_isn + 1 + len(req))
    off = 0
    while off < len(resp):
        chunk = resp[off:off + mss_data]
        last = off + len(chunk) >= len(resp)
        s("PA" if last else "A", s_isn + 1 + off, c_isn + 1 + len(req), chunk)
        off += len(chunk)
    c("A", c_isn + 1 + len(req), s_isn + 1 + len(resp))
    s("FA", s_isn + 1 + len(resp), c_isn + 1 + len(req))
    c("FA", c_isn + 1 + len(req), s_isn + 2 + len(resp))
    s("A", s_isn + 2 + len(resp), c_isn + 2 + len(req))
    return f


def fx_tcp_padded():
    f = Fixture("tcp-padded.pcap", "IPv4 TCP without options; segments carry 1..5 payload bytes; every frame "
                "is padded with 0xAA to 60 bytes (IP total length stays exact)")
    cport, sport = 40010, 7
    ci, si = 0x3000_0000, 0x4000_0000
    ids = iter(range(0x100, 0x200))

    def c(flags, seq, ack, data=b""):
        f.add(eth(CLI_MAC, SRV_MAC) / IP(src=CLI4, dst=SRV4, id=next(ids), flags="DF")
              / TCP(sport=cport, dport=sport, seq=seq, ack=ack, flags=flags, window=64240) / data,
              label=f"c->s {flags} {len(data)}B", pad_to=60)

    def s(flags, seq, ack, data=b""):
        f.add(eth(SRV_MAC, CLI_MAC) / IP(src=SRV4, dst=CLI4, id=next(ids), flags="DF")
              / TCP(sport=sport, dport=cport, seq=seq, ack=ack, flags=flags, window=65160) / data,
              label=f"s->c {flags} {len(data)}B", pad_to=60)

    c("S", ci, 0)
    s("SA", si, ci + 1)
    c("A", ci + 1, si + 1)
    sent = 0
    for n in range(1, 6):
        c("PA", ci + 1 + sent, si + 1, bytes(range(0x31, 0x31 + n)))  # "1", "12", ... "12345"
        sent += n
        s("A", si + 1, ci + 1 + sent)
    c("FA", ci + 1 + sent, si + 1)
    s("FA", si + 1, ci + 2 + sent)
    c("A", ci + 2 + sent, si + 2)
    for data, _, label in f.frames:
        assert len(data) == 60, label
    return f


def fx_udp():
    f = Fixture("udp.pcap", "IPv4 and IPv6 UDP datagrams both ways: small, empty, zero-checksum (v4) and "
                "MTU-sized (1514-byte frames)")
    f.add(c2s4() / UDP(sport=40020, dport=9999) / b"hello over udp/ipv4", label="v4 c->s")
    f.add(s2c4() / UDP(sport=9999, dport=40020) / b"reply over udp/ipv4", label="v4 s->c")
    f.add(c2s4() / UDP(sport=40021, dport=9999) / b"", label="v4 empty")
    f.add(c2s4() / UDP(sport=40022, dport=9999, chksum=0) / b"no checksum", label="v4 chksum 0")
    f.add(c2s4() / UDP(sport=40023, dport=9999) / (b"\x5a" * 1472), label="v4 1472B")
    f.add(eth(CLI_MAC, SRV_MAC) / IPv6(src=CLI6, dst=SRV6) / UDP(sport=40024, dport=9999) / b"hello over udp/ipv6",
          label="v6 c->s")
    f.add(eth(SRV_MAC, CLI_MAC) / IPv6(src=SRV6, dst=CLI6) / UDP(sport=9999, dport=40024) / b"reply over udp/ipv6",
          label="v6 s->c")
    f.add(eth(CLI_MAC, SRV_MAC) / IPv6(src=CLI6, dst=SRV6) / UDP(sport=40025, dport=9999) / (b"\xa5" * 1452),
          label="v6 1452B")
    return f


def fx_malformed():
    f = Fixture("malformed.pcap", "valid frames interleaved with runts (0, 1, 6, 13 B; truncated inside a "
                "VLAN tag), L3/L4-malformed frames, and random garbage with an unassigned ethertype",
                af_packet_exact=False,
                note="a veth does not carry frames shorter than 14 B, and the kernel drops a VLAN-tagged frame "
                     "unless 2 bytes follow its (first) tag, so frames 2, 4, 5 and 7-11 never reach DPDK there; replay this "
                     "file with the pcap PMD (byte-exact, runts included).")
    rng = random.Random(0x7154_6A7E)
    hdr = bytes.fromhex("020000000002" "020000000001")  # dst srv, src cli

    def good_icmp(seq):
        return c2s4() / ICMP(type=8, id=0x99, seq=seq) / PING_DATA

    def fixed_ip(ip_layer_bytes: bytes) -> bytes:
        """Recompute the IPv4 header checksum over the (possibly altered) first 20 bytes."""
        b = bytearray(ip_layer_bytes)
        b[10:12] = b"\0\0"
        b[10:12] = struct.pack("!H", 0xFFFF - csum16(bytes(b[:20])))
        return bytes(b)

    f.add(good_icmp(1), label="valid icmp")
    f.add(b"", RUNT, "runt 0 B")
    f.add(good_icmp(2), label="valid icmp")
    f.add(b"\x02", RUNT, "runt 1 B")
    f.add(hdr[:6], RUNT, "runt 6 B (dst MAC only)")
    f.add(good_icmp(3), label="valid icmp")
    f.add(hdr + b"\x08", RUNT, "runt 13 B")
    f.add(hdr + b"\x81\x00", RUNT, "14 B: 802.1Q TPID, tag missing")
    f.add(hdr + b"\x81\x00\x00\x0a\x08", RUNT, "17 B: 802.1Q tag cut inside inner ethertype")
    f.add(hdr + b"\x88\xa8\x00\xc8\x81\x00\x00\x0a", RUNT, "20 B: QinQ, inner tag's TCI/ethertype missing")
    f.add(hdr + b"\x81\x00\x00\x0a\x88\xb5", OK, "18 B: complete 802.1Q header, ethertype 0x88b5, no payload")
    f.add(good_icmp(4), label="valid icmp")

    ip = bytearray(bytes(IP(src=CLI4, dst=SRV4) / ICMP(id=0x99, seq=5) / PING_DATA))
    ip[10] ^= 0x5A
    f.add(hdr + b"\x08\x00" + bytes(ip), L3BAD, "IPv4 bad header checksum")

    ip = bytearray(bytes(IP(src=CLI4, dst=SRV4) / ICMP(id=0x99, seq=6) / PING_DATA))
    ip[0] = 0x43
    f.add(hdr + b"\x08\x00" + fixed_ip(bytes(ip)), L3BAD, "IPv4 IHL=3")

    ip = bytearray(bytes(IP(src=CLI4, dst=SRV4) / ICMP(id=0x99, seq=7) / PING_DATA))
    ip[2:4] = struct.pack("!H", len(ip) + 100)
    f.add(hdr + b"\x08\x00" + fixed_ip(bytes(ip)), L3BAD, "IPv4 total length 100 B beyond the frame")

    f.add(hdr + b"\x08\x00" + bytes(IP(src=CLI4, dst=SRV4) / ICMP())[:10], L3BAD,
          "IPv4 ethertype, header cut after 10 bytes")
    f.add(good_icmp(8), label="valid icmp")

    ip6 = bytearray(bytes(IPv6(src=CLI6, dst=SRV6) / ICMPv6EchoRequest(id=0x99, seq=9, data=PING_DATA)))
    ip6[4:6] = struct.pack("!H", len(ip6) - 40 + 64)
    f.add(hdr + b"\x86\xdd" + bytes(ip6), L3BAD, "IPv6 payload length 64 B beyond the frame")

    f.add(c2s4() / TCP(sport=40030, dport=80, flags="S", seq=1, dataofs=3), L3BAD, "TCP data offset 3")
    f.add(c2s4() / TCP(sport=40031, dport=80, flags="S", seq=1, dataofs=15), L3BAD,
          "TCP data offset 15 (60 B) in a 20-byte segment")
    f.add(eth(CLI_MAC, SRV_MAC) / IPv6(src=CLI6, dst=SRV6) / ICMPv6EchoRequest(id=0x99, seq=10, data=PING_DATA),
          label="valid icmpv6")

    for n in (60, 200):
        g = bytearray(rng.randbytes(n))
        g[12:14] = b"\x88\xb5"  # IEEE local experimental ethertype: "other", never parsed
        g[6] &= 0xFE  # individual (unicast) source MAC, so no bridge could reject it on that ground
        f.add(bytes(g), OK, f"garbage {n} B, ethertype 0x88b5")
    f.add(good_icmp(11), label="valid icmp")
    return f


FIXTURES = [fx_arp, fx_icmp, fx_icmpv6_nd, fx_vlan, fx_vlan_stag, fx_tcp_session, fx_tcp_padded, fx_udp,
            fx_malformed]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "pcap-fixtures")
    os.makedirs(outdir, exist_ok=True)
    lines = [
        "# Generated by scripts/gen-fixtures.py — do not edit; rerun the script instead.",
        "#",
        "# Replay rule: a frame shorter than its complete Ethernet header (VLAN tags",
        "# 0x8100/0x88a8/0x9100 included, at most two unwrapped) is a runt: dropped and",
        "# counted as malformed and dropped. Every other frame is bridged unchanged,",
        "# byte for byte; those whose L3/L4 header fails validation are also malformed.",
        "#   frames_in  = frames in the file",
        "#   frames_out = frames bridged (frames_in - runts)",
        "#   malformed  = runts + L3/L4-malformed frames",
        "#   dropped    = runts",
        "# Comments list every frame that is not plain valid traffic (all of malformed.pcap).",
    ]
    for make in FIXTURES:
        fx = make()
        fx.write(outdir)
        cnt = fx.counts()
        lines.append("")
        lines += textwrap.wrap(fx.title, 96, initial_indent="# ", subsequent_indent="#   ")
        if not fx.af_packet_exact:
            lines += textwrap.wrap("NOT byte-exact through the af_packet veth lab: " + fx.note, 96,
                                   initial_indent="# ", subsequent_indent="#   ")
        for i, (data, cat, label) in enumerate(fx.frames, 1):
            if cat != OK or fx.name == "malformed.pcap":
                lines.append(f"#   frame {i:2d}: {len(data):4d} B  {cat:12s} {label}")
        lines.append(f'[fixtures."{fx.name}"]')
        for k in ("frames_in", "frames_out", "malformed", "dropped"):
            lines.append(f"{k} = {cnt[k]}")
        print(f"{fx.name:18s} in={cnt['frames_in']:3d} out={cnt['frames_out']:3d} "
              f"malformed={cnt['malformed']:2d} dropped={cnt['dropped']:2d}")
    with open(os.path.join(outdir, "EXPECTED.toml.tmp"), "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(os.path.join(outdir, "EXPECTED.toml.tmp"), os.path.join(outdir, "EXPECTED.toml"))


if __name__ == "__main__":
    main()


# --------------------------------------------------------------------------
# Load-generator replay fixture (appended): http-flows.pcapng.
#
# Written after main() so the fixtures above and EXPECTED.toml are untouched.
# It is pcapng on purpose: tests/replay.rs replays every *.pcap through the
# bridge against EXPECTED.toml, and this file is input for
# `tlsgate-loadgen --replay` (crates/loadgen/src/replay.rs), not a bridge
# contract. Its frames still pass the validator above (Fixture.add).
# Format: little-endian SHB (version 1.0, section length -1, no options), one
# IDB (linktype 1, snaplen 65535, no options: timestamps in microseconds),
# one EPB per frame stamped T0 + i ms.
# --------------------------------------------------------------------------
def replay_body(n):
    """The POST body of flow B: n lines 'tlsgate-replay-%05d\\n' (20 B each)."""
    return b"".join(b"tlsgate-replay-%05d\n" % i for i in range(n))


def fx_http_flows():
    f = Fixture("http-flows.pcapng", "three HTTP/1.1 requests of different sizes for the load generator's replay: "
                "IPv4 GET, 802.1Q-tagged IPv4 POST reassembled from out-of-order, retransmitted and overlapping "
                "segments, IPv6 GET in two segments; around them ARP, UDP, ICMP and a TCP flow without SYN")
    ids = iter(range(0x9000, 0xA000))

    def conn(cli, srv, cport, sport, c_isn, s_isn, tag=None, mss=1460):
        v6 = ":" in cli

        def frame(src_mac, dst_mac, src, dst, sp, dp, flags, seq, ack, data):
            ip = IPv6(src=src, dst=dst) if v6 else IP(src=src, dst=dst, id=next(ids), flags="DF")
            l2 = eth(src_mac, dst_mac)
            if tag is not None:
                l2 = l2 / Dot1Q(vlan=tag)
            return l2 / ip / TCP(sport=sp, dport=dp, seq=seq, ack=ack, flags=flags, window=64240) / data

        def c(flags, off, data=b"", ack_off=0, label=""):
            seq = c_isn if flags == "S" else c_isn + 1 + off
            ack = 0 if flags == "S" else s_isn + 1 + ack_off
            f.add(frame(CLI_MAC, SRV_MAC, cli, srv, cport, sport, flags, seq, ack, data),
                  label=label or f"{cport} c->s {flags} +{off} {len(data)}B")

        def s(flags, off, ack_off, data=b""):
            seq = s_isn if flags == "SA" else s_isn + 1 + off
            f.add(frame(SRV_MAC, CLI_MAC, srv, cli, sport, cport, flags, seq, c_isn + 1 + ack_off, data),
                  label=f"{cport} s->c {flags} +{off} {len(data)}B")

        def segments(data):
            return [(o, data[o:o + mss]) for o in range(0, len(data), mss)]

        return c, s, segments

    def response(body_len, kind=b"text/plain"):
        body = bytes((0x41 + i % 26) for i in range(body_len))
        return (b"HTTP/1.1 200 OK\r\nServer: origin.test\r\nContent-Type: " + kind +
                b"\r\nContent-Length: %d\r\n\r\n" % body_len) + body

    f.add(eth(CLI_MAC, BCAST) / ARP(op=1, hwsrc=CLI_MAC, psrc=CLI4, pdst=SRV4), label="arp who-has")
    f.add(eth(SRV_MAC, CLI_MAC) / ARP(op=2, hwsrc=SRV_MAC, psrc=SRV4, hwdst=CLI_MAC, pdst=CLI4), label="arp is-at")

    # A: IPv4 GET in one segment, 1 KiB response in one segment.
    req_a = (b"GET /small HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: tlsgate-replay\r\n"
             b"Accept: */*\r\n\r\n")
    resp_a = response(1024)
    c, s, _ = conn(CLI4, SRV4, 40100, 80, 0x0A00_0000, 0x0B00_0000)
    c("S", 0)
    s("SA", 0, 0)
    c("A", 0)
    c("PA", 0, req_a)
    s("PA", 0, len(req_a), resp_a)
    c("FA", len(req_a), ack_off=len(resp_a))
    s("FA", len(resp_a), len(req_a) + 1)
    c("A", len(req_a) + 1, ack_off=len(resp_a) + 1)

    # Noise between flows: UDP and ICMP, and a TCP flow seen only mid-stream.
    f.add(c2s4() / UDP(sport=40200, dport=53) / b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
          b"\x06origin\x04test\x00\x00\x01\x00\x01", label="udp dns-like query")
    f.add(c2s4() / ICMP(type=8, id=0x42, seq=1) / PING_DATA, label="icmp echo-req")
    f.add(s2c4() / ICMP(type=0, id=0x42, seq=1) / PING_DATA, label="icmp echo-rep")
    c, s, _ = conn(CLI4, SRV4, 40099, 80, 0x0C00_0000, 0x0D00_0000)
    c("PA", 500, b"GET /orphan HTTP/1.1\r\n\r\n", label="40099 mid-stream c->s (no SYN captured)")
    s("A", 0, 500 + 25)

    # B: 802.1Q VLAN 10, POST of 3000 body bytes in 3 segments, captured out of
    # order with a duplicate and an overlapping retransmission.
    body_b = replay_body(150)
    req_b = (b"POST /upload HTTP/1.1\r\nHost: origin.test\r\nContent-Type: text/plain\r\n"
             b"Content-Length: %d\r\n\r\n" % len(body_b)) + body_b
    resp_b = response(200)
    c, s, segments = conn(CLI4, SRV4, 40101, 80, 0x1A00_0000, 0x1B00_0000, tag=10)
    seg = segments(req_b)
    assert len(seg) == 3, len(seg)
    c("S", 0)
    s("SA", 0, 0)
    c("A", 0)
    c("A", *seg[0])
    c("PA", *seg[2])  # the third segment overtakes the second
    s("A", 0, seg[0][0] + len(seg[0][1]))  # ACK for the first only
    c("A", *seg[0])  # a needless retransmission of the first
    c("A", 1000, req_b[1000:2000])  # overlaps the first and the second
    c("A", *seg[1])
    s("A", 0, len(req_b))
    s("PA", 0, len(req_b), resp_b)
    c("FA", len(req_b), ack_off=len(resp_b))
    s("FA", len(resp_b), len(req_b) + 1)
    c("A", len(req_b) + 1, ack_off=len(resp_b) + 1)

    # C: IPv6 GET with large headers in two segments, 8000-byte body in MSS-sized segments.
    cookie = b"Cookie: session=" + b"0123456789abcdef" * 36 + b"\r\n"
    req_c = (b"GET /big HTTP/1.1\r\nHost: origin.test\r\nUser-Agent: tlsgate-replay\r\n" + cookie +
             b"Accept: */*\r\n\r\n")
    resp_c = response(8000, b"application/octet-stream")
    c, s, segments = conn(CLI6, SRV6, 40102, 80, 0x2A00_0000, 0x2B00_0000, mss=1440)
    c("S", 0)
    s("SA", 0, 0)
    c("A", 0)
    c("A", 0, req_c[:400])
    c("PA", 400, req_c[400:])
    for off, chunk in segments(resp_c):
        s("A" if off + len(chunk) < len(resp_c) else "PA", off, len(req_c), chunk)
    c("A", len(req_c), ack_off=len(resp_c))
    c("FA", len(req_c), ack_off=len(resp_c))
    s("FA", len(resp_c), len(req_c) + 1)
    c("A", len(req_c) + 1, ack_off=len(resp_c) + 1)

    sizes = {"A": (len(req_a), len(resp_a)), "B": (len(req_b), len(resp_b)), "C": (len(req_c), len(resp_c))}
    return f, sizes


def write_pcapng(fx, outdir):
    def block(kind, body):
        body += b"\0" * (-len(body) % 4)
        total = 12 + len(body)
        return struct.pack("<II", kind, total) + body + struct.pack("<I", total)

    out = bytearray(block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    out += block(1, struct.pack("<HHI", LINKTYPE_ETHERNET, 0, SNAPLEN))
    for i, (data, _, _) in enumerate(fx.frames):
        ts = (T0 * 1000 + i) * 1000  # microseconds
        out += block(6, struct.pack("<IIIII", 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data)) + data)
    path = os.path.join(outdir, fx.name)
    with open(path + ".tmp", "wb") as fh:
        fh.write(out)
    os.replace(path + ".tmp", path)


def main_replay():
    here = os.path.dirname(os.path.abspath(__file__))
    outdir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "pcap-fixtures")
    fx, sizes = fx_http_flows()
    write_pcapng(fx, outdir)
    flows = ", ".join(f"{k}: {req} B request, {resp} B response" for k, (req, resp) in sizes.items())
    print(f"{fx.name:18s} frames={len(fx.frames)} (replay fixture, not in EXPECTED.toml) {flows}")


if __name__ == "__main__":
    main_replay()
