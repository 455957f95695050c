//! The ports of one engine: the client and server ports of the bridge,
//! and the inspection pair.

/// Which port a frame came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
    /// The inspection pair: plaintext leaves through `InspectOut` and comes
    /// back through the box on `InspectIn`.
    InspectOut,
    InspectIn,
}

impl Side {
    /// Every port, in the order of the engine's port numbers.
    pub const ALL: [Side; 4] = [Side::Client, Side::Server, Side::InspectOut, Side::InspectIn];

    pub fn index(self) -> usize {
        match self {
            Side::Client => 0,
            Side::Server => 1,
            Side::InspectOut => 2,
            Side::InspectIn => 3,
        }
    }

    /// The port's name in reports (as in `[ports.NAME]`).
    pub fn role(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
            Side::InspectOut => "inspect_out",
            Side::InspectIn => "inspect_in",
        }
    }
}
