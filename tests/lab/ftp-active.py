#!/usr/bin/python3
"""An FTP client in active mode over AUTH TLS (RFC 4217), for the lab.

Usage: ftp-active.py SERVER CA eprt|port download|upload LOCAL_FILE REMOTE_PATH

Connects to SERVER:21, upgrades with AUTH TLS verifying mail.lab.test
against CA, logs in anonymously, sets PROT P, and moves one file in active
mode: it listens on its control connection's address and announces that
port with EPRT or PORT; the server connects to it and this client, which
accepted the data connection, is its TLS client, resuming the control
connection's TLS session (vsftpd's require_ssl_reuse). curl 7.88 cannot do
active FTPS (curl issue 10666), hence this script.
"""
import ftplib
import socket
import ssl
import sys

SERVER_NAME = "mail.lab.test"


class ActiveFtpTls(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control session and whose
    announcement is EPRT or PORT as asked."""

    def __init__(self, context, extended):
        super().__init__(context=context, timeout=30)
        self.extended = extended

    def makeport(self):
        sock = socket.create_server((self.sock.getsockname()[0], 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        host = self.sock.getsockname()[0]
        if self.extended:
            self.sendeprt(host, port)
        else:
            self.sendport(host, port)
        if self.timeout is not ftplib._GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(self.timeout)
        return sock

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        conn = self.context.wrap_socket(conn, server_hostname=SERVER_NAME, session=self.sock.session)
        return conn, size


def main():
    server, ca, announce, action, local, remote = sys.argv[1:7]
    context = ssl.create_default_context(cafile=ca)
    ftp = ActiveFtpTls(context, extended=announce == "eprt")
    ftp.connect(server, 21)
    ftp.host = SERVER_NAME
    ftp.auth()
    ftp.login()
    ftp.prot_p()
    ftp.set_pasv(False)
    if action == "download":
        with open(local, "wb") as out:
            print(ftp.retrbinary(f"RETR {remote}", out.write))
    else:
        with open(local, "rb") as source:
            print(ftp.storbinary(f"STOR {remote}", source))
    ftp.quit()


if __name__ == "__main__":
    main()
