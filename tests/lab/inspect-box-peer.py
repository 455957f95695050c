#!/usr/bin/env python3
"""Endpoints for tests/lab/inspect-box-selftest.sh (stdlib only).

  inspect-box-peer.py serve PORT LOG          dual-stack TCP server (until killed)
  inspect-box-peer.py request HOST PORT REQ OUT TIMEOUT [SPLIT]
  inspect-box-peer.py expect REQ OUT          write the response the server gives to REQ
  inspect-box-peer.py sniff IFACE SECONDS OUT record frames (VLAN tags restored)
  inspect-box-peer.py inject IFACE SRC_MAC DST_MAC OUT
  inspect-box-peer.py check-inject SENT A_FRAMES B_FRAMES

serve: reads a request up to the first CRLFCRLF, answers response(request)
and closes; logs "ok|reset|eof|timeout|error PEER PORT BYTES" per connection.
request: sends REQ (in two writes 0.3 s apart, split at byte SPLIT, if given),
reads the whole answer into OUT; prints "ok|reset|timeout|error SECONDS" and
exits 0 ok, 2 reset, 3 timeout, 4 other error.
inject: sends malformed frames and VLAN-tagged segments containing the marker
EVIL-MARKER from IFACE; check-inject verifies (with the frames sniffed on both
sides) that the malformed ones crossed the box unchanged and the marked ones
were replaced by correct RSTs towards both ends.
"""
import os
import random
import socket
import struct
import sys
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blockbox  # noqa: E402  (checksum helpers)

BODY = random.Random(7).randbytes(65536)
SOL_PACKET, PACKET_AUXDATA = 263, 8
MARKER = b"EVIL-MARKER"


def response(req):
    return b"HTTP/1.0 200 OK\r\nX-Len: %d\r\n\r\n" % len(req) + req + b"origin-says-hi\n" + BODY


def serve(port, log):
    ls = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    ls.bind(("::", port))
    ls.listen(64)
    out = open(log, "a", buffering=1)
    lock = threading.Lock()

    def note(what, peer, n):
        with lock:
            out.write(f"{what} {peer[0]} {peer[1]} {n}\n")

    def conn(c, peer):
        c.settimeout(15)
        data = b""
        try:
            while b"\r\n\r\n" not in data:
                chunk = c.recv(65536)
                if not chunk:
                    note("eof", peer, len(data))
                    return
                data += chunk
            c.sendall(response(data))
            c.shutdown(socket.SHUT_WR)
            c.recv(1)  # wait for the client's FIN
            note("ok", peer, len(data))
        except ConnectionResetError:
            note("reset", peer, len(data))
        except socket.timeout:
            note("timeout", peer, len(data))
        except OSError as e:
            note(f"error({e.errno})", peer, len(data))
        finally:
            c.close()

    print("listening", flush=True)
    while True:
        c, peer = ls.accept()
        threading.Thread(target=conn, args=(c, peer), daemon=True).start()


def request(host, port, reqfile, outfile, timeout, split=None):
    req = open(reqfile, "rb").read()
    t0 = time.monotonic()
    took = lambda: f"{time.monotonic() - t0:.3f}"  # noqa: E731
    try:
        c = socket.create_connection((host, port), timeout=timeout)
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if split:
            c.sendall(req[:split])
            time.sleep(0.3)
            c.sendall(req[split:])
        else:
            c.sendall(req)
        resp = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            resp += chunk
        c.close()
        with open(outfile, "wb") as f:
            f.write(resp)
        print(f"ok {took()}")
        return 0
    except ConnectionResetError:
        print(f"reset {took()}")
        return 2
    except socket.timeout:
        print(f"timeout {took()}")
        return 3
    except OSError as e:
        print(f"error {took()} {e}")
        return 4


def packet_socket(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.bind((iface, 0x0003))
    return s


def sniff(iface, seconds, outfile):
    s = packet_socket(iface)
    s.settimeout(0.1)
    print("ready", flush=True)
    frames = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            frame, anc, _flags, addr = s.recvmsg(65536, socket.CMSG_SPACE(20))
        except socket.timeout:
            continue
        if addr[2] == 4:  # PACKET_OUTGOING
            continue
        for level, ctype, data in anc:
            if level == SOL_PACKET and ctype == PACKET_AUXDATA:
                status, _l, _s, _m, _n, tci, tpid = struct.unpack("=IIIHHHH", data[:20])
                if status & (1 << 4):
                    tpid = tpid if status & (1 << 6) else 0x8100
                    frame = frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
        frames.append(frame.hex())
    with open(outfile, "w") as f:
        f.write("\n".join(frames) + "\n")


def ipv4(src, dst, payload, proto=6, frag=0x4000, ihl=5):
    hdr = bytearray(struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, 20 + len(payload), 1, frag, 64, proto, 0,
                                socket.inet_aton(src), socket.inet_aton(dst)))
    hdr[10:12] = blockbox.checksum(hdr)
    return bytes(hdr) + payload


def tcp(version, src, dst, sport, dport, seq, ack, payload, flags=0x18, doff=5):
    seg = bytearray(struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) + payload)
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    blockbox.set_tcp_checksum(version, socket.inet_pton(family, src), socket.inet_pton(family, dst), seg)
    return bytes(seg)


def inject(iface, src_mac, dst_mac, outfile):
    a, b = bytes.fromhex(src_mac.replace(":", "")), bytes.fromhex(dst_mac.replace(":", ""))
    eth = b + a
    v4a, v4b, v6a, v6b = "198.18.9.1", "198.18.9.2", "2001:2:9::1", "2001:2:9::2"
    good = tcp(4, v4a, v4b, 5555, 6666, 1000, 2000, b"xx" + MARKER + b"xx")
    malformed = [
        eth + b"\x08\x00",                                            # IPv4 ethertype, no header
        eth + b"\x08\x00" + bytes([0x4F]) + bytes(25),                # IHL 60 > frame
        eth + b"\x08\x00" + ipv4(v4a, v4b, good)[:30],                # total length > frame
        eth + b"\x08\x00" + ipv4(v4a, v4b, tcp(4, v4a, v4b, 1, 2, 3, 4, MARKER, doff=15)),  # data offset past end
        eth + b"\x08\x00" + ipv4(v4a, v4b, tcp(4, v4a, v4b, 1, 2, 3, 4, MARKER, doff=2)),   # data offset < 5
        eth + b"\x08\x00" + ipv4(v4a, v4b, good, frag=0x2000),        # first fragment (MF): never touched
        eth + b"\x08\x00" + ipv4(v4a, v4b, MARKER, proto=17),         # UDP
        eth + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, 200, 0, 64) + bytes(32) + bytes(8) * 3,  # plen > frame
        eth + b"\x86\xdd" + struct.pack("!IHBB", 6 << 28, 80, 0, 64) + bytes(32) + bytes(80),      # 10 hop-by-hop
        eth + b"\x81\x00\x00\x07\x81\x00\x00\x08\x81\x00\x00\x09\x08\x00" + ipv4(v4a, v4b, good),  # 3 VLAN tags
        eth + b"\x88\xb5" + MARKER,                                   # unknown ethertype
    ]
    # (A VLAN ethertype with the tag cut short is not in the list: the kernel
    # frees it in skb_vlan_untag() before any packet socket sees it.)
    seg6 = tcp(6, v6a, v6b, 7777, 8888, 5000, 6000, b"yy" + MARKER)
    ip6 = struct.pack("!IHBB16s16s", 6 << 28, len(seg6), 6, 64, socket.inet_pton(socket.AF_INET6, v6a),
                      socket.inet_pton(socket.AF_INET6, v6b)) + seg6
    marked = [
        eth + b"\x81\x00\x00\x64\x08\x00" + ipv4(v4a, v4b, good),                     # VLAN 100, IPv4
        eth + b"\x88\xa8\x00\xc8\x81\x00\x00\x65\x86\xdd" + ip6,                      # QinQ 200/101, IPv6
    ]
    s = packet_socket(iface)
    for f in malformed + marked:
        s.send(f)
        time.sleep(0.01)
    with open(outfile, "w") as f:
        f.write("".join(f"malformed {x.hex()}\n" for x in malformed))
        f.write("".join(f"marked {x.hex()}\n" for x in marked))


def check_inject(sent, a_file, b_file):
    at_a = [bytes.fromhex(x) for x in open(a_file).read().split()]
    at_b = [bytes.fromhex(x) for x in open(b_file).read().split()]
    errors = []
    malformed, marked = [], []
    for line in open(sent):
        kind, hexframe = line.split()
        (malformed if kind == "malformed" else marked).append(bytes.fromhex(hexframe))
    for i, f in enumerate(malformed):
        if f not in at_b:
            errors.append(f"malformed frame #{i} did not cross the box unchanged: {f.hex()}")
    for i, f in enumerate(marked):
        if f in at_b:
            errors.append(f"marked segment #{i} crossed the box")
        t = blockbox.parse_tcp(f)
        plen = t.end - t.payload_off
        want = [(at_b, f[0:12], f[12:t.l3], t.src, t.dst, t.sport, t.dport, t.seq, t.ack, "receiver"),
                (at_a, f[6:12] + f[0:6], f[12:t.l3], t.dst, t.src, t.dport, t.sport, t.ack, t.seq + plen, "sender")]
        for frames, macs, tags, src, dst, sport, dport, seq, ack, who in want:
            hits = []
            for g in frames:
                r = blockbox.parse_tcp(g)
                if (r and g[0:12] == macs and g[12:r.l3] == tags and (r.src, r.dst, r.sport, r.dport) ==
                        (src, dst, sport, dport) and r.flags & 0x04):
                    hits.append((g, r))
            if len(hits) != 1:
                errors.append(f"marked segment #{i}: {len(hits)} RSTs towards the {who}, want 1")
                continue
            g, r = hits[0]
            if (r.seq, r.ack, r.flags) != (seq, ack, 0x14):
                errors.append(f"marked segment #{i}: RST to {who} seq={r.seq} ack={r.ack} flags={r.flags:#x}, "
                              f"want seq={seq} ack={ack} flags=0x14")
            if not blockbox.tcp_checksum_ok(r.version, r.src, r.dst, g[r.l4:r.end]):
                errors.append(f"marked segment #{i}: RST to {who} has a bad TCP checksum")
            if r.version == 4 and blockbox.ones_sum(g[r.l3:r.l3 + 20]) != 0xFFFF:
                errors.append(f"marked segment #{i}: RST to {who} has a bad IPv4 header checksum")
    for e in errors:
        print(e)
    print(f"check-inject: {len(malformed)} malformed frames, {len(marked)} marked segments, {len(errors)} errors")
    return 1 if errors else 0


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(int(args[0]), args[1])
    elif cmd == "request":
        split = int(args[5]) if len(args) > 5 else None
        return request(args[0], int(args[1]), args[2], args[3], float(args[4]), split)
    elif cmd == "expect":
        with open(args[1], "wb") as f:
            f.write(response(open(args[0], "rb").read()))
    elif cmd == "sniff":
        sniff(args[0], float(args[1]), args[2])
    elif cmd == "inject":
        inject(*args)
    elif cmd == "check-inject":
        return check_inject(*args)
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
