//! TLS interception for tlsgate, sans-IO, on rustls (both legs) and rcgen
//! (forging): the appliance's CA, certificates forged to mirror the real
//! server's, verification of the real server that is never hidden from the
//! client, and the per-connection state machine that joins the client's TLS
//! session to the server's.
#![forbid(unsafe_code)]

pub mod ca;
pub mod clock;
mod error;
pub mod forge;
pub mod grade;
pub mod hello;
pub mod keylog;
pub mod queues;
pub mod resume;
pub mod session;
pub mod terminate;
pub mod trust;

pub use ca::CertificateAuthority;
pub use clock::WallClock;
pub use error::MitmError;
pub use forge::{Forged, Forger, Trust};
pub use grade::{Grade, LegGrade};
pub use queues::Queues;
pub use resume::GroupSessions;
pub use session::{InvalidUpstream, Pending, Rejection, SessionInfo, TlsContext, TlsSession};
pub use terminate::{CertifiedKeyPem, ServiceTls, TerminateError, TicketKeys, TlsVersion};
pub use trust::UpstreamTrust;
