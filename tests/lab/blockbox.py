#!/usr/bin/env python3
"""A blocking / rewriting inspection box for the tlsgate lab (stdlib only).

  blockbox.py [--marker M] [--action reset|drop] [--rewrite OLD=NEW]...
              [--log FILE] [--pidfile FILE] IF1 IF2

Forwards every Ethernet frame received on IF1 out of IF2 and vice versa,
unchanged, through AF_PACKET raw sockets (run it in the namespace that owns
both interfaces; scripts/inspect-box.sh does that in tg-box). Frames the
kernel reports as PACKET_OUTGOING are ignored, so nothing loops.

The receiving kernel always moves a frame's outer VLAN tag into metadata
(skb_vlan_untag, even with rx-vlan offload off); it is read back from
PACKET_AUXDATA and re-inserted, so tagged frames are forwarded unchanged.
Frames are parsed as Ethernet (up to two 802.1Q/802.1ad tags) / IPv4 or IPv6
(extension headers skipped; fragments are never touched) / TCP. Anything that
does not parse is forwarded unchanged; the box never crashes on a frame.

--marker M  When a TCP segment's payload contains M (also when M straddles
            the boundary with the previous in-order segment of the same
            direction), the segment is not forwarded and the flow is blocked:
              reset  (default) an RST|ACK goes to the receiver (seq = the
                     segment's seq) and one to the sender (seq = the
                     segment's ack), with the original MACs/VLAN tags,
                     addresses and ports (swapped for the sender);
              drop   nothing is sent, the segment just vanishes.
            Every later segment of the flow, in either direction, is dropped,
            until a new SYN (without ACK) reuses the 5-tuple.
--rewrite OLD=NEW  Replace OLD by NEW (same length) in every TCP payload
            (within one segment), fixing the TCP checksum. Repeatable. The
            marker is looked for in the payload as received, before rewrites.
            Segments whose checksum is wrong are forwarded untouched.

M, OLD and NEW are taken as the bytes of the argument (os.fsencode); prefix
them with "hex:" to give hex bytes instead (hex:00ff0a).

Each decision (reset, drop, dropped later segment, rewrite, unblock) is one
line in --log (flushed at once): "<UTC time> <action> <proto> <src> > <dst>
seq=.. ack=.. len=.. <details>". After both sockets are bound it writes
--pidfile, logs "ready" and prints "ready" on stdout. SIGTERM/SIGINT stop it
(exit 0, logs "stopped" with counters).
"""
import argparse
import array
import datetime
import errno
import ipaddress
import os
import select
import signal
import socket
import struct
import sys

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_AUXDATA = 8
PACKET_IGNORE_OUTGOING = 23
PACKET_OUTGOING = 4
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
TP_STATUS_CSUMNOTREADY = 1 << 3
TP_STATUS_VLAN_VALID = 1 << 4
TP_STATUS_VLAN_TPID_VALID = 1 << 6
AUXDATA = struct.Struct("=IIIHHHH")
VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)
TCP_FIN, TCP_SYN, TCP_RST, TCP_ACK = 0x01, 0x02, 0x04, 0x10
IPV6_EXT = (0, 43, 60, 51, 44)  # hop-by-hop, routing, destination opts, AH, fragment
MAX_FLOWS = 65536
MAX_LOG_PER_FLOW = 20


def ones_sum(data, initial=0):
    """16-bit one's-complement sum in native byte order (RFC 1071)."""
    if len(data) & 1:
        data = bytes(data) + b"\0"
    s = initial + sum(array.array("H", bytes(data)))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def checksum(data):
    """Checksum bytes to store as-is in a header (native order in and out)."""
    return struct.pack("=H", ~ones_sum(data) & 0xFFFF)


def pseudo_header(version, src, dst, length):
    if version == 4:
        return src + dst + struct.pack("!BBH", 0, 6, length)
    return src + dst + struct.pack("!IxxxB", length, 6)


def tcp_checksum_ok(version, src, dst, segment):
    return ones_sum(pseudo_header(version, src, dst, len(segment)) + bytes(segment)) == 0xFFFF


def set_tcp_checksum(version, src, dst, segment):
    """segment: bytearray (TCP header + payload); fixes bytes 16..17 in place."""
    segment[16:18] = b"\0\0"
    segment[16:18] = checksum(pseudo_header(version, src, dst, len(segment)) + bytes(segment))


class Tcp:
    """A parsed TCP segment inside an Ethernet frame (offsets into the frame)."""

    __slots__ = ("version", "l2", "l3", "l4", "end", "src", "dst", "sport", "dport",
                 "seq", "ack", "flags", "payload_off")

    def addr(self, raw, port):
        ip = ipaddress.ip_address(raw)
        return f"{ip}:{port}" if self.version == 4 else f"[{ip}]:{port}"

    def describe(self, frame):
        return (f"tcp{self.version} {self.addr(self.src, self.sport)} > {self.addr(self.dst, self.dport)} "
                f"seq={self.seq} ack={self.ack} len={self.end - self.payload_off} "
                f"flags={flag_names(self.flags)}")


def flag_names(flags):
    names = [n for bit, n in ((TCP_SYN, "S"), (TCP_FIN, "F"), (TCP_RST, "R"), (0x08, "P"), (TCP_ACK, "A"))
             if flags & bit]
    return "".join(names) or "-"


def parse_tcp(frame):
    """Return a Tcp for an unfragmented TCP segment, else None. Never raises on
    short or odd frames (every read is bounds-checked)."""
    n = len(frame)
    if n < 14:
        return None
    off = 12
    etype = struct.unpack_from("!H", frame, off)[0]
    tags = 0
    while etype in VLAN_TPIDS:
        if tags == 2 or n < off + 6:
            return None
        off += 4
        tags += 1
        etype = struct.unpack_from("!H", frame, off)[0]
    l3 = off + 2
    t = Tcp()
    t.l2 = 0
    t.l3 = l3
    if etype == 0x0800:
        if n < l3 + 20:
            return None
        vihl, _tos, total, _ident, frag, _ttl, proto = struct.unpack_from("!BBHHHBB", frame, l3)
        ihl = (vihl & 0x0F) * 4
        if vihl >> 4 != 4 or ihl < 20 or total < ihl or l3 + total > n:
            return None
        if proto != 6 or frag & 0x3FFF:  # not TCP, or MF / fragment offset set
            return None
        t.version = 4
        t.src = bytes(frame[l3 + 12:l3 + 16])
        t.dst = bytes(frame[l3 + 16:l3 + 20])
        l4 = l3 + ihl
        end = l3 + total
    elif etype == 0x86DD:
        if n < l3 + 40:
            return None
        vtf, plen, nh = struct.unpack_from("!IHB", frame, l3)
        if vtf >> 28 != 6 or plen == 0 or l3 + 40 + plen > n:
            return None
        t.version = 6
        t.src = bytes(frame[l3 + 8:l3 + 24])
        t.dst = bytes(frame[l3 + 24:l3 + 40])
        end = l3 + 40 + plen
        l4 = l3 + 40
        hops = 0
        while nh in IPV6_EXT:
            hops += 1
            if hops > 8 or l4 + 8 > end:
                return None
            if nh == 44:
                fo = struct.unpack_from("!H", frame, l4 + 2)[0]
                if fo & 0xFFF9:  # offset != 0 or more-fragments: never touch fragments
                    return None
                hlen = 8
            elif nh == 51:
                hlen = (frame[l4 + 1] + 2) * 4
            else:
                hlen = (frame[l4 + 1] + 1) * 8
            nh = frame[l4]
            l4 += hlen
        if nh != 6:
            return None
    else:
        return None
    if l4 + 20 > end:
        return None
    sport, dport, seq, ack, doff, flags = struct.unpack_from("!HHIIBB", frame, l4)
    hlen = (doff >> 4) * 4
    if hlen < 20 or l4 + hlen > end:
        return None
    t.l4, t.end = l4, end
    t.sport, t.dport, t.seq, t.ack, t.flags = sport, dport, seq, ack, flags
    t.payload_off = l4 + hlen
    return t


def build_rst(frame, t, to_sender):
    """An RST|ACK frame for the flow of segment t (parsed from frame): towards
    the receiver (same direction, seq = t.seq) or towards the sender (reversed,
    seq = t.ack). Keeps the VLAN tags; MACs swapped towards the sender."""
    plen = t.end - t.payload_off
    if to_sender:
        eth = bytes(frame[6:12]) + bytes(frame[0:6]) + bytes(frame[12:t.l3])
        src, dst, sport, dport = t.dst, t.src, t.dport, t.sport
        seq = t.ack
        ack = (t.seq + plen + (1 if t.flags & TCP_SYN else 0) + (1 if t.flags & TCP_FIN else 0)) & 0xFFFFFFFF
        flags = TCP_RST | TCP_ACK
    else:
        eth = bytes(frame[0:t.l3])
        src, dst, sport, dport = t.src, t.dst, t.sport, t.dport
        seq = t.seq
        ack = t.ack if t.flags & TCP_ACK else 0
        flags = TCP_RST | (TCP_ACK if t.flags & TCP_ACK else 0)
    tcp = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 0, 0, 0))
    set_tcp_checksum(t.version, src, dst, tcp)
    if t.version == 4:
        ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 40, 0, 0x4000, 64, 6, 0, src, dst))
        ip[10:12] = checksum(ip)
    else:
        ip = struct.pack("!IHBB16s16s", 6 << 28, 20, 6, 64, src, dst)
    return eth + bytes(ip) + bytes(tcp)


class Box:
    def __init__(self, args):
        self.marker = args.marker
        self.action = args.action
        self.rewrites = args.rewrite
        self.log_file = open(args.log, "a", buffering=1) if args.log else None
        self.blocked = {}    # flow key -> number of segments dropped since the block
        self.streams = {}    # direction key -> (next seq, tail bytes) for straddling markers
        self.stats = {"received": 0, "sent": 0, "dropped": 0, "rst_sent": 0, "rewritten": 0,
                      "unparsed": 0, "errors": 0}

    def log(self, line):
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        text = f"{now} {line}\n"
        if self.log_file:
            self.log_file.write(text)
            self.log_file.flush()
        else:
            sys.stderr.write(text)

    @staticmethod
    def flow_key(t):
        a, b = (t.src, t.sport), (t.dst, t.dport)
        return (t.version,) + (a + b if a <= b else b + a)

    def marker_found(self, t, payload):
        """Marker in this payload, or straddling from the previous in-order one."""
        if not self.marker:
            return False
        key = (t.version, t.src, t.sport, t.dst, t.dport)
        prev = self.streams.get(key)
        data = payload
        if prev is not None and prev[0] == t.seq:
            data = prev[1] + payload
        if self.marker in data:
            return True
        keep = len(self.marker) - 1
        if payload:
            if len(self.streams) >= MAX_FLOWS and key not in self.streams:
                self.streams.clear()
            self.streams[key] = ((t.seq + len(payload)) & 0xFFFFFFFF, data[-keep:] if keep else b"")
        return False

    def handle(self, frame, csum_not_ready):
        """Decide about one received frame: return the list of (to_peer, frame)
        to send, where to_peer=True means out of the other interface."""
        t = parse_tcp(frame)
        if t is None:
            self.stats["unparsed"] += 1
            return [(True, frame)]
        key = self.flow_key(t)
        if key in self.blocked:
            if t.flags & TCP_SYN and not t.flags & TCP_ACK:
                del self.blocked[key]
                self.log(f"unblock {t.describe(frame)} new SYN on a blocked 5-tuple")
            else:
                self.blocked[key] += 1
                self.stats["dropped"] += 1
                if self.blocked[key] <= MAX_LOG_PER_FLOW:
                    self.log(f"drop-blocked {t.describe(frame)} segment #{self.blocked[key]} after the block")
                return []
        payload = bytes(frame[t.payload_off:t.end])
        if self.marker_found(t, payload):
            if len(self.blocked) >= MAX_FLOWS:
                self.blocked.clear()
            self.blocked[key] = 0
            self.stats["dropped"] += 1
            if self.action == "drop":
                self.log(f"drop {t.describe(frame)} marker found: segment and flow dropped")
                return []
            out = [(True, build_rst(frame, t, to_sender=False))]
            if t.flags & TCP_ACK:
                out.append((False, build_rst(frame, t, to_sender=True)))
            self.stats["rst_sent"] += len(out)
            self.log(f"reset {t.describe(frame)} marker found: segment dropped, "
                     f"RST to receiver seq={t.seq}" + (f", RST to sender seq={t.ack}" if len(out) == 2 else ""))
            return out
        fix_csum = csum_not_ready
        if self.rewrites and payload:
            new = payload
            for old, rep in self.rewrites:
                new = new.replace(old, rep)
            if new != payload:
                if not csum_not_ready and not tcp_checksum_ok(t.version, t.src, t.dst, frame[t.l4:t.end]):
                    self.log(f"bad-checksum {t.describe(frame)} not rewritten, forwarded as is")
                else:
                    frame = bytearray(frame)
                    frame[t.payload_off:t.end] = new
                    fix_csum = True
                    self.stats["rewritten"] += 1
                    self.log(f"rewrite {t.describe(frame)} payload rewritten")
        if fix_csum:
            frame = bytearray(frame)
            seg = frame[t.l4:t.end]
            set_tcp_checksum(t.version, t.src, t.dst, seg)
            frame[t.l4:t.end] = seg
        return [(True, frame)]


def open_port(ifname):
    # Protocol 0 first: an ETH_P_ALL socket would queue frames of *every*
    # interface until bind(); bind() then sets the protocol for this one only.
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    except OSError:
        pass  # kernels < 4.20: the pkttype check below still applies
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    for opt, fallback in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            s.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
        except OSError:
            s.setsockopt(socket.SOL_SOCKET, fallback, 8 << 20)
    s.bind((ifname, ETH_P_ALL))
    ifindex = socket.if_nametoindex(ifname)
    mreq = struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
    s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)  # dropped again when we exit
    s.setblocking(False)
    return s


def parse_bytes(text):
    return bytes.fromhex(text[4:]) if text.startswith("hex:") else os.fsencode(text)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("if1")
    ap.add_argument("if2")
    ap.add_argument("--marker", type=parse_bytes, default=b"")
    ap.add_argument("--action", choices=("reset", "drop"), default="reset")
    ap.add_argument("--rewrite", action="append", default=[], metavar="OLD=NEW")
    ap.add_argument("--log")
    ap.add_argument("--pidfile")
    args = ap.parse_args()
    rewrites = []
    for spec in args.rewrite:
        old, sep, new = spec.partition("=")
        old, new = parse_bytes(old), parse_bytes(new)
        if not sep or not old or len(old) != len(new):
            ap.error(f"--rewrite {spec!r}: need OLD=NEW with OLD non-empty and NEW of the same length")
        rewrites.append((old, new))
    args.rewrite = rewrites

    box = Box(args)

    ports = [open_port(args.if1), open_port(args.if2)]
    names = [args.if1, args.if2]
    if args.pidfile:
        with open(args.pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    mode = (f"marker={box.marker!r} action={box.action}" if box.marker else "no marker") + \
        (f" rewrites={len(rewrites)}" if rewrites else "")

    def on_signal(*_):
        raise Stop()
    try:
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        box.log(f"ready {args.if1} <-> {args.if2} {mode}")
        print("ready", flush=True)
        return run(box, ports, names)
    except Stop:
        box.log("stopped " + " ".join(f"{k}={v}" for k, v in box.stats.items()))
        return 0


class Stop(BaseException):
    """SIGTERM/SIGINT: leave the forwarding loop at once."""


def run(box, ports, names):
    poller = select.poll()
    for s in ports:
        poller.register(s, select.POLLIN | select.POLLERR)
    fd_port = {s.fileno(): i for i, s in enumerate(ports)}
    anc_size = socket.CMSG_SPACE(AUXDATA.size)
    quiet = set()  # (what, ifname) already logged: one line per link-down episode

    def once(what, ifname, line):
        if (what, ifname) not in quiet:
            quiet.add((what, ifname))
            box.log(line)

    while True:
        events = poller.poll()
        for fd, _ev in events:
            i = fd_port[fd]
            rx = ports[i]
            for _ in range(256):
                try:
                    frame, anc, flags, addr = rx.recvmsg(65536, anc_size)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    if e.errno in (errno.ENODEV, errno.ENXIO):
                        box.log(f"fatal {names[i]}: {e}; exiting")
                        return 1
                    once("rx", names[i], f"link {names[i]}: {e}")  # ENETDOWN after a link-down
                    break
                quiet.discard(("rx", names[i]))
                box.stats["received"] += 1
                if addr[2] == PACKET_OUTGOING:
                    continue
                if flags & socket.MSG_TRUNC:
                    box.stats["errors"] += 1
                    box.log(f"truncated frame on {names[i]} (> 65536 bytes) not forwarded")
                    continue
                status = 0
                for level, ctype, data in anc:
                    if level == SOL_PACKET and ctype == PACKET_AUXDATA and len(data) >= AUXDATA.size:
                        status, _l, _s, _m, _n, tci, tpid = AUXDATA.unpack_from(data)
                        if status & TP_STATUS_VLAN_VALID:  # tag was stripped into metadata: put it back
                            if not status & TP_STATUS_VLAN_TPID_VALID:
                                tpid = 0x8100
                            frame = frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
                try:
                    out = box.handle(frame, bool(status & TP_STATUS_CSUMNOTREADY))
                except Exception as e:  # never die on a frame: forward it unchanged
                    box.stats["errors"] += 1
                    box.log(f"error {type(e).__name__}: {e}; frame forwarded unchanged")
                    out = [(True, frame)]
                for to_peer, f in out:
                    j = 1 - i if to_peer else i
                    try:
                        ports[j].send(f)
                        box.stats["sent"] += 1
                        quiet.discard(("tx", names[j]))
                    except OSError as e:
                        box.stats["errors"] += 1
                        once("tx", names[j], f"send-failed {names[j]}: {e} (further failures not logged)")


if __name__ == "__main__":
    sys.exit(main())
