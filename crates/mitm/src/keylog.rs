//! The NSS key log format (`SSLKEYLOGFILE`): one line per TLS secret of
//! either leg, `LABEL <client random hex> <secret hex>`, so Wireshark or
//! tshark can decrypt a capture of the client leg or of the server leg.
//! The file itself is written elsewhere (the appliance's writer thread):
//! [`crate::TlsContext::set_key_log`] takes any `rustls::KeyLog`.

/// The key log line (with its newline) of one secret.
pub fn nss_line(label: &str, client_random: &[u8], secret: &[u8]) -> String {
    let hex = |bytes: &[u8]| bytes.iter().map(|byte| format!("{byte:02x}")).collect::<String>();
    format!("{label} {} {}\n", hex(client_random), hex(secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_label_random_and_secret_in_lowercase_hex() {
        assert_eq!(
            nss_line("CLIENT_TRAFFIC_SECRET_0", &[0x00, 0xab], &[0xff, 0x01]),
            "CLIENT_TRAFFIC_SECRET_0 00ab ff01\n"
        );
    }
}
