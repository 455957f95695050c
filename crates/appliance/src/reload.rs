//! Live reload (SIGHUP, `tlsgate reload`). The configuration file is read
//! again and loaded as `tlsgate check` and `run` load it ([`Config::load`],
//! then [`preflight`]: the policy, the CA with its key and chain, the leaf
//! key, the trust bundle, the log directories), and one set of [`Rules`] is
//! built per worker. Only when all of that worked are the rules handed to
//! the workers, each through its [`WorkerInbox`], which the worker reads
//! between two polls (a channel: no lock on the packet path). Sessions
//! already open keep the rules they started with (see
//! `splice::Generation`); new connections follow the new ones.
//!
//! The `[[service]]` entries are built again over the running ones
//! ([`Services::reloaded`]): a ticket key file replaced in place is rotated,
//! its previous key still decrypting. The reloader keeps the services in
//! force ([`Reloader::services`]).
//!
//! The TLS files (the services' included) are read again even when their
//! paths stay; a reload that
//! changes no live key and none of those files (log rotation) only reopens
//! the logs, so the workers keep their caches.
//!
//! Only the keys of [`LIVE_KEYS`] change live. Any other key that differs
//! (ports, workers, buffers, EAL arguments, timeouts, ...) is reported as
//! needing a restart and keeps its running value; a later reload reports
//! it again until the instance is restarted. A configuration that does not
//! load is refused as a whole, with the file and the key at fault, and the
//! running one stays in force.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use port::Port;
use serde::Serialize;
use serde_json::Value;
use thiserror::Error;

use crate::config::{Config, ConfigError};
use crate::connlog::ConnectionLog;
pub use crate::counters::ReloadTotals;
use crate::engine::Engine;
use crate::keylog::KeyLog;
use crate::learned::LearnedStore;
use crate::preflight::{preflight_over, Preflight};
use crate::service::Services;
use crate::setup::{error_text, SetupError};
use crate::splice::Rules;
use crate::writer::{Opened, WriterHandle};

/// The configuration keys a reload puts in force (a key below one of these,
/// such as `policy`'s rules, counts as that key). Every other key needs a
/// restart.
pub const LIVE_KEYS: &[&str] = &[
    "policy",
    "tls.ca_cert",
    "tls.ca_key",
    "tls.ca_chain",
    "tls.leaf_key",
    "tls.upstream_trust",
    "tls.invalid_upstream",
    "tls.cert_cache",
    "tls.client_auth",
    "tls.ech",
    "log.connections",
    "log.keylog",
    "service",
];

/// How long a reload waits for every worker to take the new rules.
pub const WORKER_WAIT: Duration = Duration::from_secs(5);

/// Why a reload was refused.
#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}")]
    Load {
        path: PathBuf,
        #[source]
        source: SetupError,
    },
    #[error("no configuration file to reload from")]
    NoSource,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadOutcome {
    /// Rules sent to the workers since the start (this reload's included;
    /// a reload that changed no live key and no TLS file sends none).
    pub generation: u64,
    /// The live keys whose value changed, now in force.
    pub applied: Vec<String>,
    /// Keys whose value changed but that only a restart applies; their
    /// running values stay.
    pub needs_restart: Vec<String>,
}

/// Which keys of a new configuration a reload applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadPlan {
    /// What will be in force: the new live keys, the running rest.
    pub config: Config,
    pub applied: Vec<String>,
    pub needs_restart: Vec<String>,
}

/// Whether `key` (dotted) is one of [`LIVE_KEYS`] or below one.
pub fn is_live(key: &str) -> bool {
    LIVE_KEYS.iter().any(|live| {
        key.strip_prefix(live)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
    })
}

/// The keys (dotted, e.g. `tcp.rx_buffer`) whose values differ between `a`
/// and `b`, defaults included; a list (such as `policy`) is one key.
pub fn changed_keys(a: &Config, b: &Config) -> Vec<String> {
    let mut changed = Vec::new();
    match (serde_json::to_value(a), serde_json::to_value(b)) {
        (Ok(a), Ok(b)) => diff("", &a, &b, &mut changed),
        // Not expected (every field serializes); then nothing is live.
        _ => changed.push("(the whole configuration)".into()),
    }
    changed
}

fn diff(prefix: &str, a: &Value, b: &Value, changed: &mut Vec<String>) {
    let key = |name: &str| {
        if prefix.is_empty() {
            name.to_owned()
        } else {
            format!("{prefix}.{name}")
        }
    };
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let (left, right) = (a.get(name.as_str()), b.get(name.as_str()));
                match (left, right) {
                    (Some(left), Some(right)) => diff(&key(name), left, right, changed),
                    _ => changed.push(key(name)),
                }
            }
        }
        _ if a != b => changed.push(prefix.to_owned()),
        _ => {}
    }
}

/// `running` with the live keys of `new` (see [`LIVE_KEYS`]).
fn with_live_keys(running: &Config, new: &Config) -> Config {
    let mut config = running.clone();
    config.policy = new.policy.clone();
    let (tls, new_tls) = (&mut config.tls, &new.tls);
    tls.ca_cert = new_tls.ca_cert.clone();
    tls.ca_key = new_tls.ca_key.clone();
    tls.ca_chain = new_tls.ca_chain.clone();
    tls.leaf_key = new_tls.leaf_key.clone();
    tls.upstream_trust = new_tls.upstream_trust.clone();
    tls.invalid_upstream = new_tls.invalid_upstream;
    tls.cert_cache = new_tls.cert_cache;
    tls.client_auth = new_tls.client_auth;
    tls.ech = new_tls.ech;
    config.log = new.log.clone();
    config.service = new.service.clone();
    config
}

/// What reloading `new` over `running` does.
pub fn plan(running: &Config, new: &Config) -> ReloadPlan {
    let config = with_live_keys(running, new);
    let (applied, needs_restart) = changed_keys(running, new).into_iter().partition(|key| is_live(key));
    ReloadPlan {
        config,
        applied,
        needs_restart,
    }
}

/// A digest of the TLS files `config` names (CA, key, chain, leaf key,
/// trust bundle, the services' chains, keys and ticket files) with their
/// paths, so that a reload sees a file replaced in place (a ticket key
/// rotated); a file that cannot be read counts as changed.
fn tls_material(config: &Config) -> Vec<u8> {
    let tls = &config.tls;
    let trust = tls.upstream_trust.bundle().to_owned();
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let services = config.service.iter().flat_map(|service| {
        let certificates = service
            .certificates
            .iter()
            .flat_map(|files| [files.chain.clone(), files.key.clone()]);
        certificates.chain(service.ticket_key.clone())
    });
    for path in [&tls.ca_cert, &tls.ca_key, &tls.ca_chain, &tls.leaf_key, &Some(trust)]
        .into_iter()
        .flatten()
        .cloned()
        .chain(services)
    {
        digest.update(path.as_os_str().as_encoded_bytes());
        match std::fs::read(&path) {
            Ok(contents) => digest.update(&contents),
            Err(_) => digest.update(b"\0unreadable"),
        }
        digest.update(b"\0");
    }
    digest.finish().as_ref().to_vec()
}

/// Loads everything the live keys of `config` name, as `run` does, and
/// builds the rules of `workers` workers (each its own TLS context) and the
/// services (over the `running` ones: ticket keys rotated); `learned` is the
/// running instance's store, kept.
pub fn prepare_rules(
    config: &Config,
    running: &Services,
    learned: &Arc<LearnedStore>,
    key_log: Option<Arc<KeyLog>>,
    log: Option<Arc<ConnectionLog>>,
    workers: usize,
) -> Result<(Vec<Rules>, Arc<Services>), SetupError> {
    let Preflight { policy, services } = preflight_over(config, Some(running))?;
    let services = Arc::new(services);
    let rules = policy.rules.clone().with_learned(Arc::clone(learned));
    let rules = (0..workers)
        .map(|_| {
            let mut tls = policy.tls_context()?;
            if let (Some(tls), Some(key_log)) = (tls.as_mut(), &key_log) {
                tls.set_key_log(key_log.clone());
            }
            Ok(Rules {
                policy: rules.clone(),
                tls,
                log: log.clone(),
                services: Arc::clone(&services),
            })
        })
        .collect::<Result<_, SetupError>>()?;
    Ok((rules, services))
}

/// A worker's end of the reload channel: read between two polls.
pub struct WorkerInbox {
    rules: Receiver<Rules>,
    /// Rules taken so far (compared with the generation by the reloader).
    taken: Arc<AtomicU64>,
}

impl WorkerInbox {
    /// Puts the rules waiting for this worker (if any) in force in
    /// `engine`; true if there were some.
    pub fn apply_to<P: Port>(&self, engine: &mut Engine<P>) -> bool {
        let mut applied = false;
        while let Ok(rules) = self.rules.try_recv() {
            engine.reload(rules);
            self.taken.fetch_add(1, Ordering::Release);
            applied = true;
        }
        applied
    }
}

/// The reloader's end of one worker's channel.
struct WorkerLink {
    rules: Sender<Rules>,
    taken: Arc<AtomicU64>,
}

/// The running configuration and how to reach the workers; one reload at a
/// time (the control thread's `tlsgate reload` and SIGHUP share it).
pub struct Reloader {
    state: Mutex<State>,
    /// The file the instance was started from, reread by [`Reloader::hangup`].
    source: Mutex<Option<PathBuf>>,
    ok: AtomicU64,
    refused: AtomicU64,
}

struct State {
    running: Config,
    /// [`tls_material`] of `running`.
    material: Vec<u8>,
    /// The services in force (their ticket keys carried across reloads).
    services: Arc<Services>,
    learned: Arc<LearnedStore>,
    key_log: Option<Arc<KeyLog>>,
    connection_log: Option<Arc<ConnectionLog>>,
    /// Where log files go once opened.
    writer: WriterHandle,
    workers: Vec<WorkerLink>,
    generation: u64,
}

/// The log file at `path`: `current` (reopened later) if it is the same
/// file, else a fresh one, opened but not yet handed to the writer.
fn log_at<L, E>(
    current: &Option<Arc<L>>,
    path: Option<&Path>,
    same: impl Fn(&L) -> bool,
    prepare: impl Fn(&Path) -> Result<(L, Opened), E>,
) -> Result<(Option<Arc<L>>, Option<Opened>), E> {
    match (current, path) {
        (_, None) => Ok((None, None)),
        (Some(current), Some(_)) if same(current) => Ok((Some(Arc::clone(current)), None)),
        (_, Some(path)) => prepare(path).map(|(log, file)| (Some(Arc::new(log)), Some(file))),
    }
}

impl State {
    fn reload(&mut self, path: &Path) -> Result<ReloadOutcome, ReloadError> {
        let new = Config::load(path)?;
        let plan = plan(&self.running, &new);
        // The services go into force with the running ports: a backend
        // from an owned address needs one there, not only in the file.
        plan.config
            .validate_owned_addresses()
            .map_err(|(key, reason)| ConfigError::InvalidRule {
                path: path.to_owned(),
                key,
                reason: format!("{reason} (with the running ports.server: changing it needs a restart)"),
            })?;
        let material = tls_material(&plan.config);
        if plan.applied.is_empty() && material == self.material {
            // Nothing live changed (log rotation, a key that needs a
            // restart): the workers keep their rules, and their caches.
            self.reopen_logs_kept(&self.key_log, &self.connection_log);
            return Ok(ReloadOutcome {
                generation: self.generation,
                applied: plan.applied,
                needs_restart: plan.needs_restart,
            });
        }
        let load = |source| ReloadError::Load {
            path: path.to_owned(),
            source,
        };
        let (key_log, key_log_file) = log_at(
            &self.key_log,
            plan.config.log.keylog.as_deref(),
            |log| Some(log.path()) == plan.config.log.keylog.as_deref(),
            |path| KeyLog::prepare(path, &self.writer),
        )
        .map_err(|err| load(SetupError::KeyLog(err)))?;
        let (connection_log, connection_log_file) = log_at(
            &self.connection_log,
            plan.config.log.connections.as_deref(),
            |log| Some(log.path()) == plan.config.log.connections.as_deref(),
            |path| ConnectionLog::prepare(path, &self.writer),
        )
        .map_err(|err| load(SetupError::ConnectionLog(err)))?;
        let (rules, services) = prepare_rules(
            &plan.config,
            &self.services,
            &self.learned,
            key_log.clone(),
            connection_log.clone(),
            self.workers.len(),
        )
        .map_err(load)?;
        // Everything loaded: now it goes into force.
        for file in [key_log_file, connection_log_file].into_iter().flatten() {
            self.writer.open(file);
        }
        self.reopen_logs_kept(&key_log, &connection_log);
        for (link, rules) in self.workers.iter().zip(rules) {
            // A worker that ended (stop) takes nothing any more.
            let _ = link.rules.send(rules);
        }
        self.generation += 1;
        self.services = services;
        self.running = plan.config;
        self.material = material;
        self.key_log = key_log;
        self.connection_log = connection_log;
        Ok(ReloadOutcome {
            generation: self.generation,
            applied: plan.applied,
            needs_restart: plan.needs_restart,
        })
    }

    /// Reopens the running logs that stay at their path (rotation).
    fn reopen_logs_kept(&self, key_log: &Option<Arc<KeyLog>>, connection_log: &Option<Arc<ConnectionLog>>) {
        if let (Some(kept), Some(running)) = (key_log, &self.key_log) {
            if Arc::ptr_eq(kept, running) {
                if let Err(err) = kept.reopen() {
                    tracing::error!("cannot reopen the key log: {err}");
                }
            }
        }
        if let (Some(kept), Some(running)) = (connection_log, &self.connection_log) {
            if Arc::ptr_eq(kept, running) {
                if let Err(err) = kept.reopen() {
                    tracing::error!("cannot reopen the connection log: {err}");
                }
            }
        }
    }
}

impl Reloader {
    /// The reloader of an instance running `config` with `workers` workers
    /// (and these logs, written by `writer`, and learned bypasses); returns
    /// the workers' inboxes, in order.
    pub fn new(
        config: &Config,
        services: Arc<Services>,
        learned: Arc<LearnedStore>,
        key_log: Option<Arc<KeyLog>>,
        connection_log: Option<Arc<ConnectionLog>>,
        writer: WriterHandle,
        workers: usize,
    ) -> (Reloader, Vec<WorkerInbox>) {
        let (links, inboxes) = (0..workers)
            .map(|_| {
                let (sender, receiver) = mpsc::channel();
                let taken = Arc::new(AtomicU64::new(0));
                (
                    WorkerLink {
                        rules: sender,
                        taken: Arc::clone(&taken),
                    },
                    WorkerInbox { rules: receiver, taken },
                )
            })
            .unzip();
        let reloader = Reloader {
            state: Mutex::new(State {
                running: config.clone(),
                material: tls_material(config),
                services,
                learned,
                key_log,
                connection_log,
                writer,
                workers: links,
                generation: 0,
            }),
            source: Mutex::new(None),
            ok: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        };
        (reloader, inboxes)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The services in force: those `run` loaded, then each reload's.
    pub fn services(&self) -> Arc<Services> {
        Arc::clone(&self.state().services)
    }

    /// The file [`Reloader::hangup`] rereads (the one `run` started from).
    pub fn set_source(&self, path: &Path) {
        *self.source.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(path.to_owned());
    }

    /// The file reloads read, if set.
    pub fn source(&self) -> Option<PathBuf> {
        self.source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reloads the configuration at `path` (see the module documentation);
    /// the new rules are on their way to the workers when this returns
    /// (see [`Reloader::await_workers`]).
    pub fn reload(&self, path: &Path) -> Result<ReloadOutcome, ReloadError> {
        let outcome = self.state().reload(path);
        match &outcome {
            Ok(outcome) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    "reloaded {} (generation {}): {}",
                    path.display(),
                    outcome.generation,
                    if outcome.applied.is_empty() {
                        "no live key changed, the logs were reopened".to_owned()
                    } else {
                        format!("now in force: {}", outcome.applied.join(", "))
                    }
                );
                if !outcome.needs_restart.is_empty() {
                    tracing::warn!(
                        "reload of {}: {} changed but need a restart; their running values stay",
                        path.display(),
                        outcome.needs_restart.join(", ")
                    );
                }
            }
            Err(err) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                tracing::error!(
                    "reload refused, the running configuration stays in force: {}",
                    error_text(err)
                );
            }
        }
        outcome
    }

    /// Reloads from the source file (SIGHUP). When there is none, or the
    /// reload is refused, the running logs are still reopened (rotation).
    pub fn hangup(&self) {
        let reloaded = match self.source() {
            Some(path) => self.reload(&path).is_ok(),
            None => false,
        };
        if !reloaded {
            let state = self.state();
            state.reopen_logs_kept(&state.key_log, &state.connection_log);
        }
    }

    /// Waits up to `limit` until every worker took the rules of
    /// `generation`; returns how many did.
    pub fn await_workers(&self, generation: u64, limit: Duration) -> usize {
        let taken: Vec<Arc<AtomicU64>> = self
            .state()
            .workers
            .iter()
            .map(|link| Arc::clone(&link.taken))
            .collect();
        let deadline = Instant::now() + limit;
        loop {
            let done = taken
                .iter()
                .filter(|taken| taken.load(Ordering::Acquire) >= generation)
                .count();
            if done == taken.len() || Instant::now() >= deadline {
                return done;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// How many workers there are.
    pub fn workers(&self) -> usize {
        self.state().workers.len()
    }

    pub fn totals(&self) -> ReloadTotals {
        ReloadTotals {
            ok: self.ok.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[dataplane]
workers = 1
[ports.client]
device = "net_ring0"
[ports.server]
device = "net_ring1"
[intercept]
tcp_ports = [443]
mode = "splice"
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn live_keys_apply_and_the_others_are_named_for_a_restart() {
        let running = parse(BASE);
        let new = parse(&format!(
            "{}\n[tcp]\nrx_buffer = 65536\n[tls]\nupstream_trust = \"/x.pem\"\nech = \"block\"\nlearned_ttl_secs = 5\n\
             [log]\nconnections = \"/tmp/c.jsonl\"\n[[policy]]\naction = \"bypass\"\nport = [443]\n",
            BASE.replace("workers = 1", "workers = 1\nburst_size = 16")
        ));
        let plan = plan(&running, &new);
        assert_eq!(
            plan.applied,
            ["log.connections", "policy", "tls.ech", "tls.upstream_trust"],
            "{plan:?}"
        );
        assert_eq!(
            plan.needs_restart,
            ["dataplane.burst_size", "tcp.rx_buffer", "tls.learned_ttl_secs"]
        );
        // What goes into force differs from the new file exactly by the
        // keys that need a restart, and from the running one by the live ones.
        assert_eq!(changed_keys(&plan.config, &new), plan.needs_restart);
        assert_eq!(changed_keys(&running, &plan.config), plan.applied);
        // The same file again changes nothing.
        let again = super::plan(&plan.config, &plan.config);
        assert!(again.applied.is_empty() && again.needs_restart.is_empty());
    }

    #[test]
    fn every_live_key_is_carried_over() {
        // A configuration whose every live key differs from the defaults.
        let new = parse(&format!(
            "{BASE}\n[tls]\nca_cert = \"/a\"\nca_key = \"/b\"\nca_chain = \"/c\"\nleaf_key = \"/d\"\n\
             upstream_trust = \"/e\"\ninvalid_upstream = \"refuse\"\ncert_cache = 7\nclient_auth = \"block\"\n\
             ech = \"bypass\"\n[log]\nconnections = \"/f\"\nkeylog = \"/g\"\n[[policy]]\naction = \"block\"\n\
             [[service]]\nname = \"www\"\ndestinations = [\"198.18.1.2\"]\nport = 443\n\
             certificates = [ {{ chain = \"/h\", key = \"/i\" }} ]\nbackend = {{ port = 8080 }}\n"
        ));
        let plan = plan(&parse(BASE), &new);
        let mut live: Vec<&str> = LIVE_KEYS.to_vec();
        live.sort_unstable();
        assert_eq!(plan.applied, live);
        assert!(plan.needs_restart.is_empty(), "{plan:?}");
        assert_eq!(plan.config, new);
    }

    #[test]
    fn a_reload_after_replacing_the_ticket_file_rotates_the_services_keys() {
        let scratch = crate::service::test_files::Scratch::new();
        let tickets = scratch.0.join("tickets.key");
        scratch.private(&tickets, &[1; 80]);
        let service = scratch.service_toml(
            "www",
            "198.18.1.2",
            &[],
            &format!("ticket_key = \"{}\"", tickets.display()),
        );
        let path = scratch.0.join("tlsgate.toml");
        std::fs::write(&path, format!("{BASE}{service}")).unwrap();
        let (reloader, _writer) = reloader_of(&path);
        let hello = |services: &Services| {
            let tuple = wire::FlowTuple {
                src_ip: "198.18.0.2".parse().unwrap(),
                dst_ip: "198.18.1.2".parse().unwrap(),
                src_port: 40000,
                dst_port: 443,
            };
            services.for_hello(&tuple, None).unwrap().tls.server_config()
        };
        let old_ticket = hello(&reloader.services()).ticketer.encrypt(b"state").unwrap();

        scratch.private(&tickets, &[2; 80]);
        let outcome = reloader.reload(&path).unwrap();
        assert_eq!(outcome.generation, 1, "a replaced ticket file is a change: {outcome:?}");
        let rotated = hello(&reloader.services());
        assert_eq!(rotated.ticketer.decrypt(&old_ticket).as_deref(), Some(&b"state"[..]));
        let new_ticket = rotated.ticketer.encrypt(b"state").unwrap();

        // A broken ticket file is refused; the running keys stay.
        scratch.private(&tickets, &[0; 10]);
        let err = reloader.reload(&path).unwrap_err();
        assert!(
            anyhow_like(&err).contains("service[0].ticket_key"),
            "{}",
            anyhow_like(&err)
        );
        assert_eq!(
            hello(&reloader.services()).ticketer.decrypt(&new_ticket).as_deref(),
            Some(&b"state"[..])
        );
    }

    /// A reloader of the configuration at `path`, and the writer it
    /// hands log files to (no log: it has nothing to write; stopped when
    /// dropped).
    fn reloader_of(path: &Path) -> (Reloader, crate::writer::Writer) {
        let running = Config::load(path).unwrap();
        let Preflight { policy, services } = crate::preflight::preflight(&running).unwrap();
        let writer = crate::writer::Writer::start().unwrap();
        let (reloader, _) = Reloader::new(
            &running,
            Arc::new(services),
            Arc::clone(policy.rules.learned()),
            None,
            None,
            writer.handle().clone(),
            0,
        );
        (reloader, writer)
    }

    /// A reload that adds a service whose backend leaves from an owned
    /// address, and the owned address with it, is refused: the ports stay
    /// as they run until a restart, so the service would have no source.
    #[test]
    fn a_service_from_an_owned_address_needs_the_running_ports_to_have_it() {
        let scratch = crate::service::test_files::Scratch::new();
        let path = scratch.0.join("tlsgate.toml");
        let service = scratch.service_toml("www", "198.18.1.2", &[], "");
        std::fs::write(&path, format!("{BASE}{service}")).unwrap();
        let (reloader, _writer) = reloader_of(&path);
        let owned = BASE.replace(
            "device = \"net_ring1\"",
            "device = \"net_ring1\"\naddresses = [\"198.18.7.1/24\"]",
        );
        let from_owned = service.replace(
            "backend = { port = 8080 }",
            "backend = { address = \"198.18.7.9\", port = 8080, source = \"appliance\" }",
        );
        std::fs::write(&path, format!("{owned}{from_owned}")).unwrap();
        let err = anyhow_like(&reloader.reload(&path).unwrap_err());
        assert!(
            err.contains("service[0].backend.source") && err.contains("needs a restart"),
            "{err}"
        );
        assert_eq!(reloader.totals().refused, 1);
    }

    /// The error with its sources, as `tlsgate reload` prints it.
    fn anyhow_like(err: &dyn std::error::Error) -> String {
        let mut text = err.to_string();
        let mut source = err.source();
        while let Some(err) = source {
            text.push_str(": ");
            text.push_str(&err.to_string());
            source = err.source();
        }
        text
    }

    #[test]
    fn a_key_below_a_live_key_is_live_and_a_lookalike_is_not() {
        assert!(is_live("policy") && is_live("tls.ca_cert") && is_live("log.keylog"));
        assert!(!is_live("tls.ca_certs") && !is_live("tls") && !is_live("capture.path"));
    }
}
