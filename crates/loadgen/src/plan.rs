//! What the generator does: which client addresses connect to which server
//! endpoints, how many connections at what rate, what each exchanges (a
//! synthetic request or a replayed capture flow), and whether it is then
//! held idle or closed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use thiserror::Error;

use crate::replay::Flow;

/// Why a plan cannot be run.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("client prefix {0:?} is not an address prefix such as 198.18.128.0/17")]
    BadPrefix(String),
    #[error("the client prefixes hold no address")]
    NoClients,
    #[error("no server endpoint given")]
    NoServers,
    #[error("{connections} connections need more than the {available} (client address, port) pairs of the prefixes")]
    TooFewTuples { connections: u64, available: u64 },
    #[error("the rate must be at least 1 connection per second")]
    ZeroRate,
    #[error("client and server addresses must be of the same family: {client} -> {server}")]
    MixedFamilies { client: IpAddr, server: IpAddr },
    #[error("nothing to replay: no flow with client payload")]
    NoReplayFlows,
}

/// One request and its response, after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exchange {
    /// Bytes the client sends (an HTTP-like request padded to this size).
    pub request_bytes: usize,
    /// Bytes the server answers with.
    pub response_bytes: usize,
}

/// What the origin answers to a replayed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayResponse {
    /// As many bytes as the server sent in the captured flow (nothing when
    /// it sent nothing, or its SYN-ACK was not captured).
    Original,
    /// This many bytes for every flow (0: no response).
    Fixed(usize),
}

/// Client payloads of captured flows, replayed one per connection (round
/// robin: connection `i` sends flow `i % flows`) through TLS after the
/// handshake. The origin side checks that each arrives byte-exact, then
/// answers with an HTTP-like response of [`ReplayResponse`]'s size (the
/// same shape as [`Exchange`]'s, at least its 40-odd header bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    flows: Arc<[Flow]>,
    pub response: ReplayResponse,
}

impl Replay {
    /// Replays `flows`; those without client payload are left out.
    pub fn new(flows: Vec<Flow>, response: ReplayResponse) -> Result<Replay, PlanError> {
        let flows: Arc<[Flow]> = flows.into_iter().filter(|flow| !flow.payload.is_empty()).collect();
        if flows.is_empty() {
            return Err(PlanError::NoReplayFlows);
        }
        Ok(Replay { flows, response })
    }

    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }

    /// The flow connection `index` replays, with its position in [`flows`](Self::flows).
    pub fn flow_for(&self, index: u64) -> Option<(usize, &Flow)> {
        let position = usize::try_from(index % self.flows.len() as u64).ok()?;
        Some((position, self.flows.get(position)?))
    }

    /// The response size for `flow` (0: no response).
    pub fn response_bytes(&self, flow: &Flow) -> usize {
        match self.response {
            ReplayResponse::Original => usize::try_from(flow.server_bytes).unwrap_or(usize::MAX),
            ReplayResponse::Fixed(bytes) => bytes,
        }
    }

    /// Client payload bytes of all flows.
    pub fn payload_bytes(&self) -> u64 {
        self.flows.iter().map(|flow| flow.payload.len() as u64).sum()
    }
}

/// What becomes of a connection after its exchange (or handshake).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Kept open and idle: both ends drop their TLS state.
    Idle,
    /// Closed by the client (FIN).
    Close,
}

/// Source ports used per client address.
const FIRST_PORT: u16 = 1024;
const PORTS_PER_ADDRESS: u64 = 64_000;

/// The load to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    clients: Vec<IpNet>,
    client_count: u64,
    servers: Vec<SocketAddr>,
    pub connections: u64,
    /// New connections per second.
    pub rate: u32,
    pub exchange: Option<Exchange>,
    /// Replayed capture flows instead of the exchange (when both are set,
    /// the replay wins and `exchange` is not used).
    pub replay: Option<Replay>,
    pub hold: Hold,
    /// The SNI the clients send.
    pub server_name: String,
    /// The MACs the two sides use (the appliance between them is a bridge).
    pub client_mac: [u8; 6],
    pub server_mac: [u8; 6],
}

impl Plan {
    /// A plan for `connections` connections from the addresses of the
    /// `client_prefixes` to `servers`, at `rate` per second.
    pub fn new(
        client_prefixes: &[&str],
        servers: &[SocketAddr],
        connections: u64,
        rate: u32,
    ) -> Result<Plan, PlanError> {
        let clients = client_prefixes
            .iter()
            .map(|text| {
                text.parse::<IpNet>()
                    .map_err(|_| PlanError::BadPrefix((*text).to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client_count: u64 = clients.iter().map(prefix_size).sum();
        if client_count == 0 {
            return Err(PlanError::NoClients);
        }
        let first_server = *servers.first().ok_or(PlanError::NoServers)?;
        if let Some(client) = clients
            .iter()
            .find(|net| net.addr().is_ipv4() != first_server.is_ipv4())
        {
            return Err(PlanError::MixedFamilies {
                client: client.addr(),
                server: first_server.ip(),
            });
        }
        let available = client_count.saturating_mul(PORTS_PER_ADDRESS);
        if connections > available {
            return Err(PlanError::TooFewTuples { connections, available });
        }
        if rate == 0 {
            return Err(PlanError::ZeroRate);
        }
        Ok(Plan {
            clients,
            client_count,
            servers: servers.to_vec(),
            connections,
            rate,
            exchange: None,
            replay: None,
            hold: Hold::Idle,
            server_name: "origin.test".into(),
            client_mac: [0x02, 0x4c, 0x47, 0, 0, 0x01],
            server_mac: [0x02, 0x4c, 0x47, 0, 0, 0x02],
        })
    }

    /// The client endpoint and server endpoint of connection `index`: the
    /// client addresses are used in turn, each with ever new source ports.
    pub fn endpoints(&self, index: u64) -> Option<(SocketAddr, SocketAddr)> {
        if index >= self.connections {
            return None;
        }
        let client = self.client_address(index % self.client_count)?;
        let port = FIRST_PORT + u16::try_from((index / self.client_count) % PORTS_PER_ADDRESS).ok()?;
        let server = *self.servers.get((index % self.servers.len() as u64) as usize)?;
        Some((SocketAddr::new(client, port), server))
    }

    /// The `n`th address of the client prefixes (network and broadcast
    /// addresses of IPv4 prefixes excluded).
    fn client_address(&self, mut n: u64) -> Option<IpAddr> {
        for net in &self.clients {
            let size = prefix_size(net);
            if n < size {
                return Some(match net {
                    IpNet::V4(v4) => {
                        let skip = u64::from(v4.prefix_len() < 31);
                        let base = u64::from(u32::from(v4.network()));
                        IpAddr::V4(u32::try_from(base + skip + n).ok()?.into())
                    }
                    IpNet::V6(v6) => {
                        let base = u128::from(v6.network());
                        IpAddr::V6((base + 1 + u128::from(n)).into())
                    }
                });
            }
            n -= size;
        }
        None
    }
}

/// Usable host addresses of a prefix (capped at 2^32 for IPv6).
fn prefix_size(net: &IpNet) -> u64 {
    match net {
        IpNet::V4(v4) => {
            let all = 1u64 << (32 - u32::from(v4.prefix_len()));
            if v4.prefix_len() < 31 {
                all - 2
            } else {
                all
            }
        }
        IpNet::V6(v6) => {
            let bits = 128 - u32::from(v6.prefix_len());
            (1u64 << bits.min(32)) - 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> SocketAddr {
        "198.18.0.2:443".parse().expect("address")
    }

    #[test]
    fn endpoints_walk_the_addresses_then_the_ports() {
        let plan = Plan::new(&["198.18.1.0/30"], &[server()], 5, 100).expect("plan");
        let clients: Vec<String> = (0..5)
            .map(|i| plan.endpoints(i).expect("endpoint").0.to_string())
            .collect();
        assert_eq!(
            clients,
            [
                "198.18.1.1:1024",
                "198.18.1.2:1024",
                "198.18.1.1:1025",
                "198.18.1.2:1025",
                "198.18.1.1:1026"
            ]
        );
        assert_eq!(plan.endpoints(5), None);
        let v6 = Plan::new(&["2001:2:1::/64"], &["[2001:2::2]:443".parse().expect("v6")], 2, 1).expect("plan");
        assert_eq!(v6.endpoints(1).expect("endpoint").0.to_string(), "[2001:2:1::2]:1024");
    }

    #[test]
    fn bad_plans_are_refused_with_the_reason() {
        assert_eq!(
            Plan::new(&["nonsense"], &[server()], 1, 1),
            Err(PlanError::BadPrefix("nonsense".into()))
        );
        assert_eq!(Plan::new(&["198.18.1.0/24"], &[], 1, 1), Err(PlanError::NoServers));
        assert_eq!(
            Plan::new(&["198.18.1.0/24"], &[server()], 1, 0),
            Err(PlanError::ZeroRate)
        );
        assert!(matches!(
            Plan::new(&["198.18.1.0/30"], &[server()], 200_000, 1),
            Err(PlanError::TooFewTuples { .. })
        ));
        assert!(matches!(
            Plan::new(&["2001:2:1::/64"], &[server()], 1, 1),
            Err(PlanError::MixedFamilies { .. })
        ));
    }

    fn flow(payload: &[u8], server_bytes: u64) -> Flow {
        Flow {
            client: "198.18.0.1:40000".parse().expect("client"),
            server: "198.18.0.2:80".parse().expect("server"),
            payload: payload.to_vec(),
            server_bytes,
            cut_at_gap: false,
        }
    }

    #[test]
    fn replay_goes_round_robin_over_the_flows_with_payload() {
        assert_eq!(
            Replay::new(vec![flow(b"", 10)], ReplayResponse::Original),
            Err(PlanError::NoReplayFlows)
        );
        let replay = Replay::new(
            vec![flow(b"a", 10), flow(b"", 5), flow(b"bc", 20)],
            ReplayResponse::Original,
        )
        .expect("replay");
        assert_eq!(replay.flows().len(), 2, "the flow without payload is left out");
        assert_eq!(replay.payload_bytes(), 3);
        let sent: Vec<(usize, usize)> = (0..5)
            .map(|index| {
                let (position, flow) = replay.flow_for(index).expect("flow");
                (position, replay.response_bytes(flow))
            })
            .collect();
        assert_eq!(sent, [(0, 10), (1, 20), (0, 10), (1, 20), (0, 10)]);
        let fixed = Replay {
            response: ReplayResponse::Fixed(7),
            ..replay
        };
        assert_eq!(fixed.response_bytes(&fixed.flows()[1]), 7);
    }
}
