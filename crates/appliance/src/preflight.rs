//! What `run` loads from its configuration besides EAL and the devices: the
//! intercept policy, the TLS material (CA and chain with its key, the leaf
//! key, the upstream trust bundle), every `[[service]]`'s certificates,
//! keys and ticket file, and the places the logs and the
//! decrypted capture are written. `Dataplane::open` (the `dataplane` crate)
//! runs [`preflight`] first and `tlsgate check` runs exactly it, so check and
//! run cannot disagree. Writability is probed with a file created and
//! removed at once; nothing else is written. With `[process] user`, those
//! files are opened after the privilege drop, as that user and inside
//! `process.chroot`: their directories are then checked against that
//! user's permission bits instead (the control socket's too), and the user
//! and group must exist.

use std::fs::OpenOptions;
use std::io;
use std::path::Path;

use crate::config::Config;
use crate::engine::InterceptPolicy;
use crate::privileges::RunAs;
use crate::service::Services;
use crate::setup::{OutputError, RunAsOutputError, SetupError};

/// What [`preflight`] loaded, for `run` to use as loaded.
pub struct Preflight {
    pub policy: InterceptPolicy,
    pub services: Services,
}

/// Loads and checks everything `run` would, short of the devices; returns
/// the intercept policy and the services.
pub fn preflight(config: &Config) -> Result<Preflight, SetupError> {
    preflight_over(config, None)
}

/// [`preflight`] for a reload over the `running` services (their ticket
/// keys are rotated, not replaced: see [`Services::reloaded`]).
pub fn preflight_over(config: &Config, running: Option<&Services>) -> Result<Preflight, SetupError> {
    let policy = InterceptPolicy::from_config(config).map_err(SetupError::Device)?;
    policy.tls_context()?;
    let services = match running {
        Some(running) => running.reloaded(&config.service)?,
        None => Services::from_config(&config.service)?,
    };
    if let Some(run_as) = RunAs::from_config(&config.process)? {
        writable_after_drop(config, &run_as)?;
        return Ok(Preflight { policy, services });
    }
    for (key, path) in [
        ("log.connections", config.log.connections.as_deref()),
        ("log.keylog", config.log.keylog.as_deref()),
    ] {
        if let Some(path) = path {
            appendable(key, path)?;
        }
    }
    if let Some(path) = config.capture.as_ref().and_then(|capture| capture.path.as_ref()) {
        // The capture creates its directory: the nearest one that exists
        // must take new entries.
        let dir = parent(path);
        let existing = dir.ancestors().find(|dir| dir.exists()).unwrap_or(Path::new("."));
        writable_dir("capture.path", path, existing)?;
    }
    Ok(Preflight { policy, services })
}

/// Every file `run` opens after the drop, against the permission bits
/// that apply to `run_as`: the directory (created by the capture if
/// missing: its nearest existing ancestor) takes new entries, since the
/// logs are reopened and the capture rotated there, and an existing file
/// is writable.
fn writable_after_drop(config: &Config, run_as: &RunAs) -> Result<(), RunAsOutputError> {
    for (key, path) in config.outputs_after_drop() {
        let error = |reason| RunAsOutputError {
            key,
            path: path.to_owned(),
            reason,
        };
        let host = config.process.host_path(path);
        let dir = parent(path);
        let dir = if key == "capture.path" {
            dir.ancestors()
                .find(|dir| config.process.host_path(dir).exists())
                .unwrap_or(Path::new("."))
        } else {
            dir
        };
        run_as.check_dir(dir).map_err(error)?;
        // A stale control socket is replaced, the capture moved aside.
        if key.starts_with("log.") && host.exists() {
            run_as.check_file(path).map_err(error)?;
        }
    }
    Ok(())
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A log opened for appending (and created if missing).
fn appendable(key: &'static str, path: &Path) -> Result<(), OutputError> {
    if path.exists() {
        return OpenOptions::new()
            .append(true)
            .open(path)
            .map(drop)
            .map_err(|source| OutputError {
                key,
                path: path.to_owned(),
                what: "cannot be opened for appending",
                source,
            });
    }
    writable_dir(key, path, parent(path))
}

/// `dir` takes a new file (created and removed at once).
fn writable_dir(key: &'static str, path: &Path, dir: &Path) -> Result<(), OutputError> {
    let error = |what, source| OutputError {
        key,
        path: path.to_owned(),
        what,
        source,
    };
    if !dir.is_dir() {
        let source = io::Error::new(io::ErrorKind::NotFound, format!("{} is not a directory", dir.display()));
        return Err(error("no directory to create it in", source));
    }
    let probe = dir.join(format!(".tlsgate-check-{}", std::process::id()));
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|source| error("its directory is not writable", source))?;
    std::fs::remove_file(&probe).map_err(|source| error("its directory is not writable", source))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_in_a_missing_directory_is_named() {
        let err = appendable("log.connections", Path::new("/nonexistent-tlsgate/conn.log")).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("log.connections") && text.contains("/nonexistent-tlsgate/conn.log"),
            "{text}"
        );
    }

    #[test]
    fn probing_a_directory_leaves_nothing_behind() {
        let dir = std::env::temp_dir().join(format!("tlsgate-preflight-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        appendable("log.keylog", &dir.join("keys.log")).unwrap();
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
