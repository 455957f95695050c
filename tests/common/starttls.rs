//! The real STARTTLS peers of the lab (tests/lab/starttls-peers.sh: Postfix,
//! Dovecot, Prosody, vsftpd, PostgreSQL in the server namespace) and their
//! real clients (swaks, curl, `openssl s_client -starttls`, psql, slixmpp).
//! Each client function takes the lab, the client's namespace, the server
//! address (bare IPv4 or IPv6) and the CA file the client trusts, completes
//! its protocol over STARTTLS verifying the server as [`SERVER_NAME`], and
//! returns what happened: a direct test passes the lab CA
//! ([`StarttlsPeers::ca`]), an interception test the appliance CA.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::lab::{assert_tcp_counters, Lab, CLI, SRV_V4, SRV_V6};
use super::{await_log_line, output, repo, text, Scratch};

/// The name every client verifies (the peers' certificate also holds
/// lab.test and the server's two addresses).
pub const SERVER_NAME: &str = "mail.lab.test";
/// The mail, IMAP/POP3, XMPP and PostgreSQL account.
pub const USER: &str = "tester";
pub const PASSWORD: &str = "secret";
/// vsftpd's passive data ports (pasv_min_port..=pasv_max_port).
pub const FTP_PASSIVE_PORTS: std::ops::RangeInclusive<u16> = 40000..=40009;
/// The client namespace's addresses.
pub const CLI_V4: &str = "198.18.0.1";
pub const CLI_V6: &str = "2001:2::1";
/// Each server address with the client address the server must see.
pub const FAMILIES: [(&str, &str); 2] = [(SRV_V4, CLI_V4), (SRV_V6, CLI_V6)];
/// What [`curl_mail`] fetches of the first message: (scheme, path).
pub const FIRST_MESSAGE_FETCHES: [(&str, &str); 2] = [("imap", "INBOX;UID=1"), ("pop3", "1")];

/// Asserts the FTP counters of the appliance's final `report`: `data_tls`
/// data connections intercepted, none failed, and `control` (the control
/// connections upgraded, or the data connections opened in active mode).
pub fn assert_ftp_counters(report: &serde_json::Value, control: (&str, u64), data_tls: u64) {
    assert_tcp_counters(report, &[control, ("ftp_data_tls", data_tls), ("ftp_data_failed", 0)]);
}

/// The servers of tests/lab/starttls-peers.sh under a scratch directory,
/// stopped on drop.
pub struct StarttlsPeers(pub PathBuf);

impl StarttlsPeers {
    /// Starts them under `dir`. What the script prints goes to a file
    /// beside it, not to a pipe a daemon could keep open.
    pub fn start(dir: PathBuf) -> StarttlsPeers {
        let printed = dir.with_extension("log");
        let log = std::fs::File::create(&printed).expect("peers' log");
        let started = Command::new("timeout")
            .arg("120")
            .arg("bash")
            .arg(repo().join("tests/lab/starttls-peers.sh"))
            .arg("start")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("peers' log"))
            .stderr(log)
            .status()
            .expect("run starttls-peers.sh");
        let peers = StarttlsPeers(dir);
        assert!(
            started.success(),
            "starttls-peers.sh: {}",
            std::fs::read_to_string(&printed).unwrap_or_default()
        );
        peers
    }

    /// The lab CA that signed every server's certificate.
    pub fn ca(&self) -> PathBuf {
        self.0.join("pki/ca.pem")
    }

    /// The configuration sections that make tlsgate intercept these peers:
    /// `[tls]` with the appliance CA in `ca_dir` (see `lab::appliance_ca`)
    /// trusting [`StarttlsPeers::ca`], and `[log]` writing the connection
    /// log to `scratch`'s connections.jsonl.
    pub fn tls_and_log_config(&self, ca_dir: &Path, scratch: &Scratch) -> String {
        format!(
            "\n[tls]\nca_cert = \"{ca}/ca.pem\"\nca_key = \"{ca}/ca.key\"\nupstream_trust = \"{trust}\"\n\n\
             [log]\nconnections = \"{logs}/connections.jsonl\"\n",
            ca = ca_dir.display(),
            trust = self.ca().display(),
            logs = scratch.0.display()
        )
    }

    /// The message waiting in tester's mailbox from the start, as IMAP and
    /// POP3 serve it (CRLF lines).
    pub fn first_message(&self) -> Vec<u8> {
        let message = std::fs::read_to_string(self.0.join("first-message.eml")).expect("first message");
        message.replace('\n', "\r\n").into_bytes()
    }

    /// Waits up to 15 s for a message delivered to tester's Maildir
    /// containing `needle`; returns it as stored.
    pub fn await_delivered(&self, needle: &str) -> String {
        let new = self.0.join("mail/lab.test/tester/new");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let found = std::fs::read_dir(&new)
                .into_iter()
                .flatten()
                .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
                .find(|message| message.contains(needle));
            if let Some(message) = found {
                return message;
            }
            assert!(
                Instant::now() < deadline,
                "no message with {needle:?} in {}",
                new.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits up to 15 s for a line of the log `log` (relative to the
    /// peers' directory: maillog, dovecot/dovecot.log, prosody/prosody.log,
    /// vsftpd.log, pg/postgresql.log) containing `needle`.
    pub fn await_logged(&self, log: &str, needle: &str) -> String {
        await_log_line(&self.0.join(log), needle, Duration::from_secs(15))
    }

    /// The file vsftpd serves as /file.bin.
    pub fn ftp_file(&self) -> Vec<u8> {
        std::fs::read(self.0.join("ftp/file.bin")).expect("ftp file")
    }

    /// What an upload to /upload/NAME stored.
    pub fn ftp_uploaded(&self, name: &str) -> Vec<u8> {
        std::fs::read(self.0.join("ftp/upload").join(name)).expect("uploaded file")
    }
}

impl Drop for StarttlsPeers {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(repo().join("tests/lab/starttls-peers.sh"))
            .arg("stop")
            .arg(&self.0)
            .output();
    }
}

/// What a client did: whether it succeeded, and everything it printed.
pub struct Session {
    pub succeeded: bool,
    pub transcript: String,
}

impl Session {
    pub fn of(result: Output) -> Session {
        Session {
            succeeded: result.status.success(),
            transcript: format!("{}{}", text(&result.stdout), text(&result.stderr)),
        }
    }

    /// The transcript of a session that must have succeeded.
    pub fn expect_ok(self, what: &str) -> String {
        assert!(self.succeeded, "{what} failed:\n{}", self.transcript);
        self.transcript
    }

    /// The transcript of a session that must have failed.
    pub fn expect_refused(self, what: &str) -> String {
        assert!(!self.succeeded, "{what} succeeded:\n{}", self.transcript);
        self.transcript
    }
}

/// The real clients in the client namespace ([`CLI`]) trusting `ca`, the
/// peers they talk to, and a scratch directory for their files: the
/// client-run-then-check bodies the direct and the interception tests
/// share.
pub struct Clients<'a> {
    pub lab: &'a Lab,
    pub peers: &'a StarttlsPeers,
    pub scratch: &'a Scratch,
    pub ca: PathBuf,
}

impl Clients<'_> {
    /// [`swaks`] sends the mail `text` (Message-ID `<ID@lab.test>`) to
    /// `server`:`port`; checks that it went over TLS, was delivered intact
    /// and received over TLS, and that Postfix saw it come from `client`
    /// (bridged or transparent, never proxied).
    pub fn swaks_delivers(&self, server: &str, client: &str, port: u16, id: &str, text: &str) {
        let file = self.scratch.path(&format!("{id}.eml"));
        std::fs::write(&file, text).expect("mail file");
        let transcript = swaks(self.lab, CLI, server, port, &self.ca, &file).expect_ok(&format!("swaks {id}"));
        assert!(transcript.contains("=== TLS started with cipher"), "{transcript}");
        let queued = queue_id(&transcript);
        let delivered = self.peers.await_delivered(&format!("<{id}@lab.test>"));
        assert!(delivered.contains(text), "delivered intact:\n{delivered}");
        assert!(delivered.contains("with ESMTPS id"), "received over TLS:\n{delivered}");
        self.peers
            .await_logged("maillog", &format!("{queued}: client=unknown[{client}]"));
    }

    /// [`s_client`] upgrades `protocol` at `server`:`port` and says its
    /// [`s_client_dialogue`]: checks that the chain verified, that the
    /// certificate shown holds `certificate_shows` (its subject, its
    /// issuer) and that the server answered what only comes after the
    /// upgrade. Its status says nothing (vsftpd closes without
    /// close_notify): the transcript does.
    pub fn s_client_talks(&self, protocol: &str, server: &str, port: u16, certificate_shows: &str) -> Session {
        let (input, answer) = s_client_dialogue(protocol);
        let what = format!("s_client -starttls {protocol} to {server}:{port}");
        let session = s_client(self.lab, CLI, protocol, server, port, &self.ca, input);
        let transcript = &session.transcript;
        assert!(
            transcript.contains("Verify return code: 0 (ok)"),
            "{what}:\n{transcript}"
        );
        assert!(
            transcript.contains(certificate_shows),
            "{what}: no {certificate_shows:?}:\n{transcript}"
        );
        assert!(transcript.contains(answer), "{what}:\n{transcript}");
        session
    }

    /// [`curl_mail`] reads the first message over `scheme` (`path`, see
    /// [`FIRST_MESSAGE_FETCHES`]) at `server`: checks it came as stored and
    /// that Dovecot logged the login from `client`, over TLS.
    pub fn curl_reads_first_message(&self, server: &str, client: &str, scheme: &str, path: &str) {
        let transcript =
            curl_mail(self.lab, CLI, server, &self.ca, scheme, path).expect_ok(&format!("curl {scheme} via {server}"));
        assert_eq!(
            transcript.as_bytes(),
            &self.peers.first_message()[..],
            "{scheme} via {server}: the message as stored"
        );
        let login = self.peers.await_logged(
            "dovecot/dovecot.log",
            &format!("{scheme}-login: Info: Login: user=<tester>, method=PLAIN, rip={client}, lip={server}"),
        );
        assert!(login.contains(", TLS"), "{login}");
    }
}

/// `[2001:2::2]` for an IPv6 address, the IPv4 address as is.
pub fn bracketed(address: &str) -> String {
    if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_owned()
    }
}

/// curl's `--resolve` of SERVER_NAME:port to `server`.
fn resolve(server: &str, port: u16) -> String {
    format!("{SERVER_NAME}:{port}:{}", bracketed(server))
}

/// swaks sends the message file `message` (headers and body, LF lines) to
/// tester@lab.test at `server`:`port` over STARTTLS (`--tls`: no mail
/// without TLS), verifying the certificate against `ca`.
pub fn swaks(lab: &Lab, namespace: &str, server: &str, port: u16, ca: &Path, message: &Path) -> Session {
    swaks_with(lab, namespace, server, port, Some(ca), message)
}

/// [`swaks`] without STARTTLS: the whole transaction in plaintext.
pub fn swaks_in_plaintext(lab: &Lab, namespace: &str, server: &str, port: u16, message: &Path) -> Session {
    swaks_with(lab, namespace, server, port, None, message)
}

/// swaks over STARTTLS verifying against `ca`, or in plaintext (`None`).
fn swaks_with(lab: &Lab, namespace: &str, server: &str, port: u16, ca: Option<&Path>, message: &Path) -> Session {
    let port = port.to_string();
    let mut command = lab.cmd(namespace, "timeout");
    command
        .args(["30", "swaks", "--server", server, "--port", &port])
        .args(["--from", "sender@lab.test", "--to", "tester@lab.test"])
        .args(["--helo", "client.lab.test"]);
    if let Some(ca) = ca {
        command
            .args(["--tls", "--tls-verify", "--tls-sni", SERVER_NAME, "--tls-ca-path"])
            .arg(ca);
    }
    Session::of(output(command.arg("--data").arg(format!("@{}", message.display()))))
}

/// A mail (headers and body, LF lines) to tester@lab.test with the
/// subject "SUBJECT ID", the unique Message-ID `<ID@lab.test>` and `lines`
/// lines of about 70 bytes: enough body to take many segments.
pub fn mail(subject: &str, id: &str, lines: usize) -> String {
    let mut text = format!(
        "From: Lab Sender <sender@lab.test>\nTo: Tester <tester@lab.test>\nSubject: {subject} {id}\n\
         Date: Thu, 03 Dec 2026 12:00:00 +0000\nMessage-ID: <{id}@lab.test>\n\n"
    );
    for line in 0..lines {
        text.push_str(&format!(
            "line {line:04} of {id}: the quick brown fox jumps over the lazy dog\n"
        ));
    }
    text
}

/// The queue id in swaks' transcript ("250 2.0.0 Ok: queued as ID").
pub fn queue_id(transcript: &str) -> &str {
    let (_, after) = transcript
        .split_once("queued as ")
        .unwrap_or_else(|| panic!("no queue id in:\n{transcript}"));
    after.split_whitespace().next().expect("queue id")
}

/// `openssl s_client -starttls PROTOCOL` to `server`:`port`, verifying
/// SERVER_NAME against `ca` (`-verify_return_error`), then sending `input`
/// (LF lines, sent as CRLF) over TLS and reading until the server closes
/// (`-ign_eof`; with an empty input, until the handshake is done). A server
/// closing without close_notify (vsftpd) makes s_client fail after a
/// complete dialogue: judge by the transcript ("Verify return code: 0
/// (ok)" and the answer of [`s_client_dialogue`]).
pub fn s_client(
    lab: &Lab,
    namespace: &str,
    protocol: &str,
    server: &str,
    port: u16,
    ca: &Path,
    input: &str,
) -> Session {
    let mut command = lab.cmd(namespace, "timeout");
    command
        .args(["20", "openssl", "s_client", "-starttls", protocol, "-connect"])
        .arg(format!("{}:{port}", bracketed(server)))
        .args(["-servername", SERVER_NAME, "-verify_hostname", SERVER_NAME])
        .args(["-verify_return_error", "-crlf", "-CAfile"])
        .arg(ca);
    if protocol == "xmpp" {
        command.args(["-xmpphost", "lab.test"]);
    }
    if !input.is_empty() {
        command.arg("-ign_eof");
    }
    Session::of(with_input(&mut command, input.as_bytes()))
}

/// Runs `command` with `input` on its standard input (then closed).
fn with_input(command: &mut Command, input: &[u8]) -> Output {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot run {command:?}: {err}"));
    let mut stdin = child.stdin.take().expect("stdin");
    // A few hundred bytes: the pipe holds them before the child reads.
    stdin.write_all(input).expect("write the client's input");
    drop(stdin);
    child.wait_with_output().expect("wait for the client")
}

/// What `s_client` sends after the upgrade for each protocol, and what the
/// server answers only once the client is in: a login or a new stream.
pub fn s_client_dialogue(protocol: &str) -> (&'static str, &'static str) {
    match protocol {
        "smtp" => ("EHLO client.lab.test\nQUIT\n", "221 2.0.0 Bye"),
        "imap" => ("a1 LOGIN tester secret\na2 SELECT INBOX\na3 LOGOUT\n", "a2 OK"),
        "pop3" => ("USER tester\nPASS secret\nSTAT\nQUIT\n", "+OK Logged in."),
        "xmpp" => (
            "<stream:stream xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' \
             to='lab.test' version='1.0'>\n</stream:stream>\n",
            "<mechanism>PLAIN</mechanism>",
        ),
        "ftp" => (
            "PBSZ 0\nPROT P\nUSER anonymous\nPASS lab@lab.test\nPWD\nQUIT\n",
            "230 Login successful.",
        ),
        "postgres" => ("", ""),
        other => panic!("no dialogue for {other}"),
    }
}

/// curl fetching `path` (e.g. `INBOX;UID=1` for IMAP, `1` for POP3) from
/// `scheme`://SERVER_NAME at `server` with `--ssl-reqd` (STARTTLS or
/// nothing), as tester.
pub fn curl_mail(lab: &Lab, namespace: &str, server: &str, ca: &Path, scheme: &str, path: &str) -> Session {
    let port = if scheme == "imap" { 143 } else { 110 };
    Session::of(output(
        lab.cmd(namespace, "curl")
            .args(["-sS", "--max-time", "20", "--ssl-reqd", "--user", "tester:secret"])
            .args(["--resolve", &resolve(server, port), "--cacert"])
            .arg(ca)
            .arg(format!("{scheme}://{SERVER_NAME}/{path}")),
    ))
}

/// curl downloading ftp://SERVER_NAME/file.bin at `server` into `saved`
/// over AUTH TLS (`--ssl-reqd`: control and data connections), anonymous,
/// passive (EPSV, then PASV; `options` such as `--disable-epsv` first).
pub fn curl_ftp_download(
    lab: &Lab,
    namespace: &str,
    server: &str,
    ca: &Path,
    options: &[&str],
    saved: &Path,
) -> Session {
    curl_ftp(lab, namespace, server, ca, options, ("-o", saved), "file.bin")
}

/// curl uploading `file` to ftp://SERVER_NAME/upload/NAME at `server` like
/// [`curl_ftp_download`].
pub fn curl_ftp_upload(
    lab: &Lab,
    namespace: &str,
    server: &str,
    ca: &Path,
    options: &[&str],
    file: &Path,
    name: &str,
) -> Session {
    curl_ftp(
        lab,
        namespace,
        server,
        ca,
        options,
        ("-T", file),
        &format!("upload/{name}"),
    )
}

/// curl over AUTH TLS to ftp://SERVER_NAME/PATH at `server`, with `local`
/// (`-o` and the file to save, or `-T` and the file to upload).
fn curl_ftp(
    lab: &Lab,
    namespace: &str,
    server: &str,
    ca: &Path,
    options: &[&str],
    (flag, local): (&str, &Path),
    path: &str,
) -> Session {
    Session::of(output(
        lab.cmd(namespace, "curl")
            .args(["-sS", "--max-time", "30", "--ssl-reqd"])
            .args(options)
            .args(["--resolve", &resolve(server, 21), "--cacert"])
            .arg(ca)
            .arg(flag)
            .arg(local)
            .arg(format!("ftp://{SERVER_NAME}/{path}")),
    ))
}

/// psql to database labdb at `server` as tester with
/// `sslmode=verify-full sslrootcert=CA` (SSLRequest, then the chain and
/// SERVER_NAME verified), running `query` (`-At`: unaligned rows, `|`
/// between columns).
pub fn psql(lab: &Lab, namespace: &str, server: &str, ca: &Path, query: &str) -> Session {
    psql_with(lab, namespace, server, ca, "", query)
}

/// [`psql`] with more connection `options` (`key=value ...`, e.g.
/// `channel_binding=disable`).
pub fn psql_with(lab: &Lab, namespace: &str, server: &str, ca: &Path, options: &str, query: &str) -> Session {
    let connection = format!(
        "host={SERVER_NAME} hostaddr={server} port=5432 dbname=labdb user={USER} \
         sslmode=verify-full sslrootcert={} connect_timeout=10 {options}",
        ca.display()
    );
    Session::of(output(
        lab.cmd(namespace, "env").arg(format!("PGPASSWORD={PASSWORD}")).args([
            "timeout",
            "20",
            "psql",
            "-X",
            "-At",
            &connection,
            "-c",
            query,
        ]),
    ))
}

/// The slixmpp client of tests/lab/xmpp-login.py: tester@lab.test logs in
/// at `server`:5222 over STARTTLS (required; the chain verified against
/// `ca` for lab.test) and sends itself a message that must come back.
pub fn xmpp_login(lab: &Lab, namespace: &str, server: &str, ca: &Path) -> Session {
    Session::of(output(
        lab.cmd(namespace, "/usr/bin/python3")
            .arg(repo().join("tests/lab/xmpp-login.py"))
            .args([server, "5222", "tester@lab.test", PASSWORD])
            .arg(ca),
    ))
}

/// tests/lab/starttls-inject.py: an IMAP client at `server`:143 that sends
/// `a STARTTLS` and an injected `b LOGIN tester secret` in one segment,
/// upgrades verifying SERVER_NAME against `ca`, sends `c LOGOUT` and prints
/// what the server said inside TLS (a `b` answer: the injection ran).
pub fn imap_injection(lab: &Lab, namespace: &str, server: &str, ca: &Path) -> Session {
    Session::of(output(
        lab.cmd(namespace, "/usr/bin/python3")
            .arg(repo().join("tests/lab/starttls-inject.py"))
            .arg(server)
            .arg(ca),
    ))
}
