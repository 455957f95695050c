//! The privilege drop of `tlsgate run` (`[process] user`, `group`,
//! `chroot`). DPDK needs root to start (hugepages, device files, raw
//! sockets, promiscuous mode); once the ports are up and the TLS material
//! is in memory, nothing the data plane does needs it any more, so the
//! process becomes an unprivileged user:
//!
//! 1. [`RunAs::forbid_new_privileges`] before EAL starts: `no_new_privs`,
//!    inherited by every thread EAL and tlsgate create later;
//! 2. [`RunAs::enter`] once the ports are up: chroot (optional), then
//!    `setgroups([gid])`, `setgid`, `setuid` (glibc applies them to every
//!    thread of the process; the kernel clears every capability set of a
//!    thread whose user ids all leave 0), the ambient and inheritable sets
//!    cleared, and the result verified, not assumed: all user and group ids
//!    the target ones, no capability left, `no_new_privs` set.
//!
//! The kernel also makes the process non-dumpable on that switch, so the
//! unprivileged user cannot ptrace it or read its memory (the CA key).
//!
//! What `run` opens after the drop (the logs, the capture, the control
//! socket) is opened as that user, inside the chroot: the directories must
//! let it write, which [`RunAs::check_output`] verifies at `check` and at
//! start by the permission bits.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use caps::CapSet;
use nix::unistd::{Gid, Group, Uid, User};
use thiserror::Error;

use crate::config::Process;

/// Why the process could not switch, or refuses to.
#[derive(Debug, Error)]
pub enum PrivilegeError {
    #[error("`{key}` {name:?}: no such {what} on this system")]
    Unknown {
        key: &'static str,
        name: String,
        what: &'static str,
    },
    #[error("`{key}` {name:?}: cannot look it up")]
    Lookup {
        key: &'static str,
        name: String,
        #[source]
        source: nix::Error,
    },
    #[error("`process.user` {0:?} is root (uid 0): that drops nothing; give an unprivileged user")]
    Root(String),
    #[error(
        "`process.user` {user:?}: tlsgate must start as root to switch to it (it runs as uid {uid}); \
         start it as root and let it drop its privileges itself"
    )]
    NotRoot { user: String, uid: u32 },
    #[error("`process.chroot` {path}")]
    Chroot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot {what}")]
    Switch {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("cannot {what}")]
    Capabilities {
        what: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("the privilege drop did not take: {0}")]
    StillPrivileged(String),
}

/// The unprivileged identity `[process]` names, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunAs {
    pub user: String,
    pub uid: Uid,
    pub group: String,
    pub gid: Gid,
    /// Chrooted into before the switch.
    pub chroot: Option<PathBuf>,
}

impl RunAs {
    /// The identity of `process` (`None`: no `process.user`, no drop);
    /// an unknown user or group, or root, is an error naming the key.
    pub fn from_config(process: &Process) -> Result<Option<RunAs>, PrivilegeError> {
        let Some(user_name) = &process.user else {
            return Ok(None);
        };
        fn lookup<'a>(key: &'static str, name: &'a str) -> impl FnOnce(nix::Error) -> PrivilegeError + 'a {
            move |source| PrivilegeError::Lookup {
                key,
                name: name.to_owned(),
                source,
            }
        }
        let user = User::from_name(user_name)
            .map_err(lookup("process.user", user_name))?
            .ok_or_else(|| PrivilegeError::Unknown {
                key: "process.user",
                name: user_name.clone(),
                what: "user",
            })?;
        if user.uid.is_root() {
            return Err(PrivilegeError::Root(user_name.clone()));
        }
        let (group, gid) = match &process.group {
            Some(name) => {
                let group = Group::from_name(name)
                    .map_err(lookup("process.group", name))?
                    .ok_or_else(|| PrivilegeError::Unknown {
                        key: "process.group",
                        name: name.clone(),
                        what: "group",
                    })?;
                (group.name, group.gid)
            }
            None => {
                let name = Group::from_gid(user.gid)
                    .ok()
                    .flatten()
                    .map_or_else(|| user.gid.to_string(), |group| group.name);
                (name, user.gid)
            }
        };
        Ok(Some(RunAs {
            user: user.name,
            uid: user.uid,
            group,
            gid,
            chroot: process.chroot.clone(),
        }))
    }

    /// Sets `no_new_privs` on the calling thread, which every thread it
    /// starts later inherits (call it before EAL starts its own); refuses
    /// to go on unless the process runs as root, since only root can switch.
    pub fn forbid_new_privileges(&self) -> Result<(), PrivilegeError> {
        let uid = nix::unistd::geteuid();
        if !uid.is_root() {
            return Err(PrivilegeError::NotRoot {
                user: self.user.clone(),
                uid: uid.as_raw(),
            });
        }
        nix::sys::prctl::set_no_new_privs().map_err(|source| PrivilegeError::Switch {
            what: "set no_new_privs",
            source,
        })
    }

    /// Chroots (if configured), switches every thread of the process to
    /// the user and group, and verifies that no privilege is left.
    pub fn enter(&self) -> Result<(), PrivilegeError> {
        if let Some(root) = &self.chroot {
            let at = |source| PrivilegeError::Chroot {
                path: root.clone(),
                source,
            };
            std::os::unix::fs::chroot(root).map_err(at)?;
            std::env::set_current_dir("/").map_err(at)?;
        }
        let switch = |what| move |source| PrivilegeError::Switch { what, source };
        nix::unistd::setgroups(&[self.gid]).map_err(switch("drop the supplementary groups"))?;
        nix::unistd::setgid(self.gid).map_err(switch("switch to process.group"))?;
        nix::unistd::setuid(self.uid).map_err(switch("switch to process.user"))?;
        for (set, what) in [
            (CapSet::Ambient, "clear the ambient capabilities"),
            (CapSet::Inheritable, "clear the inheritable capabilities"),
        ] {
            caps::clear(None, set).map_err(|source| PrivilegeError::Capabilities { what, source })?;
        }
        self.verify()
    }

    /// What the kernel says now, against what was asked.
    fn verify(&self) -> Result<(), PrivilegeError> {
        let read = |what| move |source| PrivilegeError::Switch { what, source };
        let uids = nix::unistd::getresuid().map_err(read("read the user ids"))?;
        let gids = nix::unistd::getresgid().map_err(read("read the group ids"))?;
        let groups = nix::unistd::getgroups().map_err(read("read the groups"))?;
        if [uids.real, uids.effective, uids.saved] != [self.uid; 3] {
            return Err(PrivilegeError::StillPrivileged(format!(
                "user ids {}/{}/{} instead of {}",
                uids.real, uids.effective, uids.saved, self.uid
            )));
        }
        if [gids.real, gids.effective, gids.saved] != [self.gid; 3] || groups.iter().any(|gid| *gid != self.gid) {
            return Err(PrivilegeError::StillPrivileged(format!(
                "group ids {}/{}/{} and groups {groups:?} instead of {} only",
                gids.real, gids.effective, gids.saved, self.gid
            )));
        }
        for set in [CapSet::Effective, CapSet::Permitted, CapSet::Ambient] {
            let held = caps::read(None, set).map_err(|source| PrivilegeError::Capabilities {
                what: "read the capabilities",
                source,
            })?;
            if !held.is_empty() {
                return Err(PrivilegeError::StillPrivileged(format!(
                    "{set:?} capabilities {held:?}"
                )));
            }
        }
        if !nix::sys::prctl::get_no_new_privs().map_err(read("read no_new_privs"))? {
            return Err(PrivilegeError::StillPrivileged("no_new_privs is not set".into()));
        }
        Ok(())
    }

    /// Whether this user may create, rename and remove entries in `dir`
    /// (as the process sees it after the drop) and reach it: every
    /// directory on the way searchable, `dir` writable too; judged by the
    /// permission bits (ACLs are not read). `Err` says which is not.
    pub fn check_dir(&self, dir: &Path) -> Result<(), String> {
        let host = self.host_path(dir);
        let meta = std::fs::metadata(&host).map_err(|err| format!("{}: {err}", host.display()))?;
        if !meta.is_dir() {
            return Err(format!("{} is not a directory", host.display()));
        }
        // Outside a chroot symlinks are resolved as the kernel will; inside
        // one, from its root, which the path as written already is.
        let inner = match self.chroot {
            Some(_) => dir.to_owned(),
            None => host
                .canonicalize()
                .map_err(|err| format!("{}: {err}", host.display()))?,
        };
        for ancestor in inner.ancestors() {
            let host = self.host_path(ancestor);
            let meta = std::fs::metadata(&host).map_err(|err| format!("{}: {err}", host.display()))?;
            let wanted = if ancestor == inner.as_path() {
                WRITE | SEARCH
            } else {
                SEARCH
            };
            if !self.permits(&meta, wanted) {
                return Err(format!(
                    "{} is not {} by {}",
                    host.display(),
                    if wanted == SEARCH { "searchable" } else { "writable" },
                    self.who()
                ));
            }
        }
        Ok(())
    }

    /// Whether this user may write the existing file `path` (as seen after
    /// the drop).
    pub fn check_file(&self, path: &Path) -> Result<(), String> {
        let host = self.host_path(path);
        let meta = std::fs::metadata(&host).map_err(|err| format!("{}: {err}", host.display()))?;
        if self.permits(&meta, WRITE) {
            Ok(())
        } else {
            Err(format!("{} is not writable by {}", host.display(), self.who()))
        }
    }

    fn host_path(&self, path: &Path) -> PathBuf {
        crate::config::host_path(self.chroot.as_deref(), path)
    }

    /// The owner, group or other bits that apply to this user (the
    /// kernel's order: the first class that matches decides).
    fn permits(&self, meta: &std::fs::Metadata, wanted: u32) -> bool {
        let mode = meta.mode();
        let bits = if meta.uid() == self.uid.as_raw() {
            mode >> 6
        } else if meta.gid() == self.gid.as_raw() {
            mode >> 3
        } else {
            mode
        };
        bits & wanted == wanted
    }

    /// "user tlsgate (uid 105, group tlsgate)".
    pub fn who(&self) -> String {
        format!(
            "user {} (uid {}, group {} gid {})",
            self.user, self.uid, self.group, self.gid
        )
    }
}

/// Whether the process runs with root's effective user id.
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

const WRITE: u32 = 0o2;
const SEARCH: u32 = 0o1;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn process(user: &str, group: Option<&str>) -> Process {
        Process {
            user: Some(user.into()),
            group: group.map(str::to_owned),
            chroot: None,
        }
    }

    #[test]
    fn no_user_means_no_drop() {
        assert_eq!(RunAs::from_config(&Process::default()).unwrap(), None);
    }

    #[test]
    fn an_unknown_user_or_group_is_named_with_its_key() {
        let err = RunAs::from_config(&process("tlsgate-no-such-user", None)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`process.user` \"tlsgate-no-such-user\": no such user on this system"
        );
        let err = RunAs::from_config(&process("nobody", Some("tlsgate-no-such-group"))).unwrap_err();
        assert_eq!(
            err.to_string(),
            "`process.group` \"tlsgate-no-such-group\": no such group on this system"
        );
    }

    #[test]
    fn root_is_refused() {
        let err = RunAs::from_config(&process("root", None)).unwrap_err();
        assert!(err.to_string().contains("`process.user` \"root\" is root"), "{err}");
    }

    #[test]
    fn a_user_resolves_with_its_primary_group_or_the_one_given() {
        let nobody = RunAs::from_config(&process("nobody", None)).unwrap().unwrap();
        let entry = User::from_name("nobody").unwrap().unwrap();
        assert_eq!((nobody.uid, nobody.gid), (entry.uid, entry.gid));
        let root_group = RunAs::from_config(&process("nobody", Some("root"))).unwrap().unwrap();
        assert_eq!(root_group.gid, Gid::from_raw(0));
        assert_eq!(root_group.group, "root");
    }

    /// The permission bits decide, as the kernel applies them: owner, then
    /// group, then others; every directory on the way must be searchable.
    #[test]
    fn directories_are_judged_by_the_bits_that_apply_to_the_user() {
        let nobody = RunAs::from_config(&process("nobody", None)).unwrap().unwrap();
        let scratch = std::env::temp_dir().join(format!("tlsgate-privileges-{}", std::process::id()));
        let dir = scratch.join("logs");
        std::fs::create_dir_all(&dir).unwrap();
        let mode = |path: &Path, mode| std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        mode(&scratch, 0o755);
        mode(&dir, 0o755);
        let err = nobody.check_dir(&dir).unwrap_err();
        assert!(err.contains("logs is not writable by user nobody"), "{err}");
        mode(&dir, 0o777);
        nobody.check_dir(&dir).unwrap();
        // A directory on the way it cannot search.
        mode(&scratch, 0o700);
        let err = nobody.check_dir(&dir).unwrap_err();
        assert!(err.contains("is not searchable by user nobody"), "{err}");
        mode(&scratch, 0o755);
        let file = dir.join("connections.jsonl");
        std::fs::write(&file, b"").unwrap();
        mode(&file, 0o644);
        assert!(nobody.check_file(&file).unwrap_err().contains("not writable"));
        mode(&file, 0o666);
        nobody.check_file(&file).unwrap();
        // Inside a chroot, the path is read from the chroot's root.
        let chrooted = RunAs {
            chroot: Some(scratch.clone()),
            ..nobody.clone()
        };
        chrooted.check_dir(Path::new("/logs")).unwrap();
        assert!(chrooted.check_dir(Path::new("/missing")).is_err());
        std::fs::remove_dir_all(&scratch).unwrap();
    }
}
