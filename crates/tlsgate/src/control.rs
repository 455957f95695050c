//! The control channel of a running instance: a Unix domain socket
//! (`[control] socket`, mode 0600) served by a thread of `tlsgate run`.
//! The protocol is one request line and one JSON answer line per
//! connection:
//!
//! - `learned list`: `{"now_ms": N, "learned": [{name, addr, port, why,
//!   reason, added_ms, expires_ms}, ...]}` (engine-clock milliseconds);
//! - `learned clear` / `learned clear NAME`: `{"cleared": N}`;
//! - `reload`: rereads the configuration file the instance was started
//!   from and puts its live keys in force (see `appliance::reload`):
//!   `{"reloaded": PATH, "generation": N, "applied": [KEY, ...],
//!   "needs_restart": [KEY, ...], "workers": TOOK, "of": WORKERS}` once the
//!   workers took it, or `{"error": "..."}` naming the file and key when
//!   the new configuration is refused (the running one stays);
//! - anything else: `{"error": "..."}`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use appliance::learned::LearnedStore;
use appliance::reload::WORKER_WAIT;
use appliance::worker::EngineClock;
use appliance::Reloader;
use serde_json::{json, Value};

/// The longest request line read.
const MAX_REQUEST: u64 = 1024;
/// How long a peer may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the answer may take (a reload loads the CA and trust bundle
/// once per worker, then waits for the workers).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The listening socket; its file is removed when this is dropped.
pub struct ControlServer {
    path: PathBuf,
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// What the control channel acts on.
pub struct Instance {
    /// The learned bypasses, whose entries are timed by `clock`.
    pub learned: Arc<LearnedStore>,
    pub clock: EngineClock,
    pub reloader: Arc<Reloader>,
}

/// Listens at `path` and answers requests about `instance` on a thread of
/// its own.
pub fn serve(path: &Path, instance: Instance) -> Result<ControlServer> {
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!("control.socket {}: exists and is not a socket", path.display());
        }
        if UnixStream::connect(path).is_ok() {
            bail!("control.socket {}: another instance is listening there", path.display());
        }
        // Left behind by an instance that did not stop cleanly.
        std::fs::remove_file(path).with_context(|| format!("cannot remove the stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path).with_context(|| format!("control.socket {}", path.display()))?;
    let server = ControlServer { path: path.to_owned() };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    std::thread::Builder::new()
        .name("tlsgate-control".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(err) = answer_one(stream, &instance) {
                            tracing::warn!("control channel: {err}");
                        }
                    }
                    Err(err) => tracing::warn!("control channel: {err}"),
                }
            }
        })
        .context("cannot start the control thread")?;
    tracing::info!("control channel listening on {}", path.display());
    Ok(server)
}

fn answer_one(stream: UnixStream, instance: &Instance) -> std::io::Result<()> {
    stream.set_read_timeout(Some(REQUEST_TIMEOUT))?;
    stream.set_write_timeout(Some(REQUEST_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new((&stream).take(MAX_REQUEST)).read_line(&mut line)?;
    let answer = answer(instance, line.trim());
    let mut writer = &stream;
    writer.write_all(format!("{answer}\n").as_bytes())
}

/// The answer to one request line.
fn answer(instance: &Instance, request: &str) -> Value {
    let learned = &instance.learned;
    let now = instance.clock.now();
    let words: Vec<&str> = request.split_whitespace().collect();
    match words.as_slice() {
        ["learned", "list"] => {
            let entries: Vec<Value> = learned
                .list(now)
                .into_iter()
                .map(|entry| {
                    json!({
                        "name": entry.destination.name,
                        "addr": entry.destination.addr,
                        "port": entry.destination.port,
                        "why": entry.why,
                        "reason": entry.reason,
                        "added_ms": entry.added_ms,
                        "expires_ms": entry.expires_ms,
                    })
                })
                .collect();
            json!({ "now_ms": now.total_millis(), "learned": entries })
        }
        ["learned", "clear"] => json!({ "cleared": cleared(learned, None) }),
        ["learned", "clear", name] => json!({ "cleared": cleared(learned, Some(name)) }),
        ["reload"] => reload(&instance.reloader),
        _ => json!({
            "error": format!("unknown request {request:?}: try `learned list`, `learned clear [NAME]` or `reload`")
        }),
    }
}

/// Reloads the file the instance was started from, and waits for the
/// workers to take the new rules.
fn reload(reloader: &Reloader) -> Value {
    let Some(path) = reloader.source() else {
        return json!({ "error": "this instance has no configuration file to reload" });
    };
    match reloader.reload(&path) {
        Ok(outcome) => json!({
            "reloaded": path,
            "generation": outcome.generation,
            "applied": outcome.applied,
            "needs_restart": outcome.needs_restart,
            "workers": reloader.await_workers(outcome.generation, WORKER_WAIT),
            "of": reloader.workers(),
        }),
        Err(err) => json!({
            "error": format!(
                "reload refused, the running configuration stays in force: {}",
                appliance::error_text(&err)
            )
        }),
    }
}

fn cleared(learned: &LearnedStore, name: Option<&str>) -> usize {
    let cleared = learned.clear(name);
    tracing::warn!(
        "control channel: the operator cleared {cleared} learned bypass(es){}",
        name.map(|name| format!(" for {name}")).unwrap_or_default()
    );
    cleared
}

/// Sends `request` to the instance listening at `path`; its answer, or
/// the error it gave.
pub fn request(path: &Path, request: &str) -> Result<Value> {
    let mut stream = UnixStream::connect(path)
        .with_context(|| format!("cannot reach a running tlsgate at {} (control.socket)", path.display()))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let answer: Value = serde_json::from_str(&line).with_context(|| format!("bad answer {line:?}"))?;
    if let Some(error) = answer.get("error") {
        bail!("tlsgate answered: {}", error.as_str().unwrap_or("an error"));
    }
    Ok(answer)
}

/// The table `tlsgate learned list` prints.
pub fn format_list(answer: &Value) -> String {
    let now = answer["now_ms"].as_i64().unwrap_or(0);
    let entries = answer["learned"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() {
        return "no learned bypasses\n".into();
    }
    let mut out = format!(
        "{:<40} {:<24} {:<12} {:>10}  reason\n",
        "name", "destination", "why", "expires in"
    );
    for entry in entries {
        let destination = format!(
            "{}",
            std::net::SocketAddr::new(
                entry["addr"]
                    .as_str()
                    .and_then(|a| a.parse().ok())
                    .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
                entry["port"].as_u64().and_then(|p| u16::try_from(p).ok()).unwrap_or(0)
            )
        );
        let left = (entry["expires_ms"].as_i64().unwrap_or(now) - now).max(0) / 1000;
        out.push_str(&format!(
            "{:<40} {:<24} {:<12} {:>8} s  {}\n",
            entry["name"].as_str().unwrap_or("?"),
            destination,
            entry["why"].as_str().unwrap_or("?"),
            left,
            entry["reason"].as_str().unwrap_or("")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use appliance::learned::{Destination, Learned, LearnedSettings};

    const SPLICE: &str =
        "[dataplane]\n[ports.client]\ndevice = \"net_ring0\"\n[ports.server]\ndevice = \"net_ring1\"\n\
                          [intercept]\ntcp_ports = [443]\nmode = \"splice\"\n";

    /// An instance without workers started from `config` (SPLICE).
    fn instance(learned: &Arc<LearnedStore>, clock: EngineClock, config: &Path) -> Instance {
        std::fs::write(config, SPLICE).unwrap();
        let running = appliance::Config::load(config).unwrap();
        let services = Arc::new(appliance::service::Services::from_config(&running.service).unwrap());
        // No log: the writer has nothing to write (stopped when dropped).
        let writer = appliance::writer::Writer::start().unwrap();
        let (reloader, _) = Reloader::new(
            &running,
            services,
            Arc::clone(learned),
            None,
            None,
            writer.handle().clone(),
            0,
        );
        reloader.set_source(config);
        Instance {
            learned: Arc::clone(learned),
            clock,
            reloader: Arc::new(reloader),
        }
    }

    #[test]
    fn reload_answers_what_it_applied_or_why_it_refused() {
        let dir = std::env::temp_dir().join(format!("tlsgate-control-reload-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (path, config) = (dir.join("control.sock"), dir.join("tlsgate.toml"));
        let learned = Arc::new(LearnedStore::new(LearnedSettings::default()));
        let instance = instance(&learned, EngineClock::start(), &config);
        let reloader = Arc::clone(&instance.reloader);
        let _server = serve(&path, instance).unwrap();
        std::fs::write(
            &config,
            format!("{SPLICE}[tcp]\nrx_buffer = 65536\n[[policy]]\naction = \"bypass\"\nport = [443]\n"),
        )
        .unwrap();
        let answer = request(&path, "reload").unwrap();
        assert_eq!(answer["generation"], 1, "{answer}");
        assert_eq!(answer["applied"], json!(["policy"]), "{answer}");
        assert_eq!(answer["needs_restart"], json!(["tcp.rx_buffer"]), "{answer}");
        std::fs::write(
            &config,
            format!("{SPLICE}[[policy]]\naction = \"bypass\"\ndst = [\"nowhere\"]\n"),
        )
        .unwrap();
        let err = request(&path, "reload").unwrap_err().to_string();
        assert!(
            err.contains("reload refused") && err.contains("tlsgate.toml") && err.contains("policy[1].dst"),
            "{err}"
        );
        assert_eq!(reloader.totals().ok, 1);
        assert_eq!(reloader.totals().refused, 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn list_and_clear_round_trip_through_the_socket() {
        let dir = std::env::temp_dir().join(format!("tlsgate-control-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("control.sock");
        let learned = Arc::new(LearnedStore::new(LearnedSettings::default()));
        let clock = EngineClock::start();
        for (name, port) in [("bank.test", 443), ("bank.test", 8443), ("other.test", 443)] {
            let destination = Destination::new(name, "198.18.0.2".parse().unwrap(), port);
            learned.learn(destination, Learned::ClientAuth, clock.now()).unwrap();
        }
        let config = dir.join("tlsgate.toml");
        let server = serve(&path, instance(&learned, clock, &config)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            serve(&path, instance(&learned, clock, &config)).is_err(),
            "one instance per socket"
        );

        let listed = request(&path, "learned list").unwrap();
        let table = format_list(&listed);
        assert_eq!(listed["learned"].as_array().unwrap().len(), 3, "{listed}");
        assert!(
            table.contains("198.18.0.2:8443") && table.contains("client_auth"),
            "{table}"
        );
        assert!(table.contains("3599 s") || table.contains("3600 s"), "{table}");
        assert_eq!(request(&path, "learned clear BANK.test").unwrap()["cleared"], 2);
        let listed = request(&path, "learned list").unwrap();
        assert_eq!(listed["learned"][0]["name"], "other.test", "{listed}");
        assert_eq!(request(&path, "learned clear").unwrap()["cleared"], 1);
        assert_eq!(
            format_list(&request(&path, "learned list").unwrap()),
            "no learned bypasses\n"
        );
        assert_eq!(learned.totals().cleared, 3);
        let err = request(&path, "make coffee").unwrap_err().to_string();
        assert!(err.contains("unknown request"), "{err}");

        drop(server);
        assert!(!path.exists(), "the socket file goes with the server");
        assert!(request(&path, "learned list").is_err());
        // A stale socket file (an instance that died) is replaced.
        let stale = UnixListener::bind(&path).unwrap();
        drop(stale);
        let _server = serve(&path, instance(&learned, clock, &config)).unwrap();
        assert!(request(&path, "learned list").is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
