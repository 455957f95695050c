//! What the CLI prints: standard output through [`say!`], which turns a
//! reader that went away (EPIPE, e.g. `tlsgate ca show | head -1`) into
//! [`StdoutClosed`] instead of the panic of `println!`; and the final error
//! on standard error with each cause once.

use std::fmt;
use std::io::Write;

/// Standard output was closed by its reader; the command ends quietly.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes `args` to standard output.
pub fn write(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(err) => Err(anyhow::Error::new(err).context("cannot write to standard output")),
    }
}

/// `println!` that returns an error instead of panicking (use with `?`).
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use say;

/// The message of `err` followed by its causes, each once: a cause whose
/// text the message already holds is not repeated.
pub fn describe(err: &anyhow::Error) -> String {
    let err: &(dyn std::error::Error + 'static) = err.as_ref();
    appliance::error_text(err)
}

/// Prints `err` on standard error (never panics, even if that is closed).
pub fn error(err: &anyhow::Error) {
    let _ = writeln!(std::io::stderr().lock(), "tlsgate: error: {}", describe(err));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An error that prints its source in its own message too.
    #[derive(Debug)]
    struct RepeatsItsSource(std::io::Error);

    impl fmt::Display for RepeatsItsSource {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "cannot read /x: {}", self.0)
        }
    }

    impl std::error::Error for RepeatsItsSource {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let text = io.to_string();
        let err = anyhow::Error::new(RepeatsItsSource(io)).context("loading");
        assert_eq!(describe(&err), format!("loading: cannot read /x: {text}"));
    }
}
