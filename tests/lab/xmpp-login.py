#!/usr/bin/python3
"""tests/lab/xmpp-login.py — a real XMPP client (slixmpp) for the lab.

    xmpp-login.py ADDRESS PORT JID PASSWORD CA_FILE

Connects to ADDRESS:PORT (no DNS), requires STARTTLS, verifies the server's
certificate for the JID's domain against CA_FILE only, logs in with SASL,
sends itself a chat message and waits for it to come back. Prints
"logged in as FULL_JID" and "message echoed: BODY", exits 0; on a failed
TLS, login or a 20 s timeout it prints why and exits 1.
"""

import asyncio
import sys

import slixmpp

BODY = "over STARTTLS through the lab"


class Client(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        self.outcome = None
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("message", self.on_message)
        self.add_event_handler("failed_auth", lambda _: self.finish("login failed"))
        self.add_event_handler("connection_failed", lambda why: self.finish(f"connection failed: {why}"))
        self.add_event_handler("ssl_invalid_chain", lambda why: self.finish(f"invalid chain: {why}"))

    def finish(self, outcome):
        if self.outcome is None:
            self.outcome = outcome
        self.disconnect()

    async def on_session_start(self, _):
        print(f"logged in as {self.boundjid.full}", flush=True)
        self.send_presence()
        self.send_message(mto=self.boundjid.full, mbody=BODY, mtype="chat")

    def on_message(self, message):
        if message["body"] == BODY:
            print(f"message echoed: {message['body']}", flush=True)
            self.finish("ok")


def main():
    address, port, jid, password, ca_file = sys.argv[1:6]
    client = Client(jid, password)
    client.ca_certs = ca_file
    client.connect((address, int(port)), force_starttls=True)
    loop = asyncio.get_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(client.disconnected, 20))
    except asyncio.TimeoutError:
        client.outcome = client.outcome or "timed out"
    if client.outcome != "ok":
        print(f"xmpp-login.py: {client.outcome or 'disconnected'}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
