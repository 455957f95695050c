//! What the transforms on rustls' buffered connections do alike
//! (termination and downgrade, [`crate::TlsServer`]; upgrade,
//! [`crate::TlsClient`]): records in, the plaintext they hold out, records
//! for the peer out.

use std::io::BufRead;

use rustls::ConnectionCommon;

/// Reads `data` into `conn` and processes it, up to the first error.
pub(crate) fn read_records<D>(conn: &mut ConnectionCommon<D>, mut data: &[u8]) -> Result<(), rustls::Error> {
    while !data.is_empty() {
        match conn.read_tls(&mut data) {
            Ok(0) => break,
            Ok(_) => {}
            Err(err) => return Err(rustls::Error::General(err.to_string())),
        }
        conn.process_new_packets()?;
    }
    Ok(())
}

/// Appends the plaintext `conn` decrypted to `plaintext`, straight from
/// rustls' buffer; whether the peer's stream ended (close_notify).
pub(crate) fn read_plaintext<D>(conn: &mut ConnectionCommon<D>, plaintext: &mut Vec<u8>) -> bool {
    let mut reader = conn.reader();
    loop {
        match reader.fill_buf() {
            Ok([]) => return true,
            Ok(chunk) => {
                plaintext.extend_from_slice(chunk);
                let read = chunk.len();
                reader.consume(read);
            }
            // Nothing more for now (WouldBlock); or the peer's stream ended
            // without close_notify, and the FIN passes the end on.
            Err(_) => return false,
        }
    }
}

/// Appends the records `conn` has for its peer to `out` (an alert after an
/// error included).
pub(crate) fn write_records<D>(conn: &mut ConnectionCommon<D>, out: &mut Vec<u8>) {
    while conn.wants_write() {
        if conn.write_tls(out).is_err() {
            break;
        }
    }
}
