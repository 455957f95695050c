//! The DPDK Environment Abstraction Layer: initialised once per process from
//! an argument list, cleaned up when the last handle is dropped.

use std::ffi::{c_char, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{describe_errno, last_error, DpdkError};

static EAL_INITIALISED: AtomicBool = AtomicBool::new(false);

/// Proof that the EAL is up. Pools and devices hold an `Arc<Eal>` so that
/// `rte_eal_cleanup` runs only after all of them are gone.
#[derive(Debug)]
pub struct Eal {
    _private: (),
}

impl Eal {
    /// Initialises the EAL with `args` (without the program name). Fails if
    /// the EAL was already initialised in this process, even if that attempt
    /// failed: DPDK does not allow a second `rte_eal_init`.
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Arc<Eal>, DpdkError> {
        let mut owned = Vec::with_capacity(args.len() + 1);
        owned.push(CString::new("tlsgate").map_err(|_| DpdkError::InvalidArgument("tlsgate".into()))?);
        for arg in args {
            let arg = arg.as_ref();
            owned.push(CString::new(arg).map_err(|_| DpdkError::InvalidArgument(arg.to_owned()))?);
        }
        if EAL_INITIALISED.swap(true, Ordering::SeqCst) {
            return Err(DpdkError::EalAlreadyInitialized);
        }
        // EAL may keep pointers into argv (device arguments) and permutes the
        // array, so both the strings and the array live for the process.
        let strings: &'static [CString] = Box::leak(owned.into_boxed_slice());
        let argv: &'static mut [*mut c_char] = Box::leak(
            strings
                .iter()
                .map(|s| s.as_ptr().cast_mut())
                .collect::<Vec<_>>()
                .into_boxed_slice(),
        );
        let argc = i32::try_from(argv.len()).map_err(|_| DpdkError::InvalidArgument("too many arguments".into()))?;
        // SAFETY: argv holds argc valid NUL-terminated strings that are never
        // freed; EAL is called once per process (guarded by EAL_INITIALISED).
        let rc = unsafe { dpdk_sys::rte_eal_init(argc, argv.as_mut_ptr()) };
        if rc < 0 {
            return Err(DpdkError::EalInit {
                reason: last_error(),
                args: args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" "),
            });
        }
        Ok(Arc::new(Eal { _private: () }))
    }

    /// Registers the calling (non-EAL) thread with DPDK so that it gets an
    /// lcore id and per-lcore mempool caches. Needs a free lcore in `-l`.
    pub fn register_thread(&self) -> Result<(), DpdkError> {
        // SAFETY: EAL is initialised (self exists); registering an already
        // registered thread is a no-op in DPDK.
        let rc = unsafe { dpdk_sys::rte_thread_register() };
        if rc < 0 {
            return Err(DpdkError::Port {
                port: u16::MAX,
                name: "eal".into(),
                operation: "rte_thread_register",
                reason: last_error(),
            });
        }
        Ok(())
    }
}

impl Eal {
    /// The EAL worker lcores of the `-l` list (the main lcore excluded), in
    /// order: the cores workers may be pinned to.
    pub fn worker_lcores(&self) -> Vec<u32> {
        let mut lcores = Vec::new();
        let mut previous = u32::MAX; // -1: start from the first lcore
        loop {
            // SAFETY: EAL is initialised; the call only reads its lcore table.
            let next = unsafe { dpdk_sys::rte_get_next_lcore(previous, 1, 0) };
            if next >= dpdk_sys::RTE_MAX_LCORE {
                return lcores;
            }
            lcores.push(next);
            previous = next;
        }
    }

    /// Pins the calling thread to the CPUs of `lcore` (from
    /// [`Eal::worker_lcores`]: its cpuset, e.g. CPU 0 for lcore 1 of
    /// `--lcores 0@0,1@0,2@1`), so a worker owns its core. The CPUs can be
    /// read back with [`current_thread_cpus`].
    pub fn pin_current_thread(&self, lcore: u32) -> Result<(), DpdkError> {
        // SAFETY: EAL is initialised; the shim reads the lcore's cpuset and
        // sets the calling thread's affinity.
        let rc = unsafe { dpdk_sys::tg_pin_thread_to_lcore(lcore) };
        if rc != 0 {
            return Err(DpdkError::Port {
                port: u16::MAX,
                name: "eal".into(),
                operation: "pin worker thread",
                reason: format!("lcore {lcore}: {}", describe_errno(rc)),
            });
        }
        Ok(())
    }
}

/// The CPUs the calling thread may run on, as the kernel lists them (`0`,
/// `2-3`, `0,4`): its affinity, from `/proc/thread-self/status`. After
/// [`Eal::pin_current_thread`] this is the lcore's cpuset, which
/// `rte_lcore_to_cpu_id` does not give (it returns the topology core id of
/// the CPU numbered like the lcore, whatever `--lcores` mapped it to).
pub fn current_thread_cpus() -> Option<String> {
    let status = std::fs::read_to_string("/proc/thread-self/status").ok()?;
    cpus_allowed_list(&status).map(str::to_owned)
}

/// The `Cpus_allowed_list` of a `/proc/<pid>/status` text.
fn cpus_allowed_list(status: &str) -> Option<&str> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Cpus_allowed_list:"))
        .map(str::trim)
        .filter(|list| !list.is_empty())
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: the last Arc<Eal> is gone, so every pool and device (which
        // hold one) has been released already.
        unsafe {
            dpdk_sys::rte_eal_cleanup();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_allowed_cpu_list_is_read_from_the_status_text() {
        let status = "Name:\ttlsgate-worker\nCpus_allowed:\t5\nCpus_allowed_list:\t0,2\nMems_allowed:\t1\n";
        assert_eq!(cpus_allowed_list(status), Some("0,2"));
        assert_eq!(cpus_allowed_list("Name:\tx\n"), None);
        assert_eq!(cpus_allowed_list("Cpus_allowed_list:\t\n"), None);
        assert!(current_thread_cpus().is_some_and(|cpus| cpus.starts_with(|c: char| c.is_ascii_digit())));
    }
}
