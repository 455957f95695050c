//! An event a watcher reports once, in the first step no weightier event
//! takes (a step carries one event).

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sighting {
    Unseen,
    Seen,
    Reported,
}

impl Sighting {
    pub(crate) fn see(&mut self) {
        if *self == Sighting::Unseen {
            *self = Sighting::Seen;
        }
    }

    /// Whether it is to be reported now (it is then marked reported).
    pub(crate) fn report(&mut self) -> bool {
        let due = *self == Sighting::Seen;
        if due {
            *self = Sighting::Reported;
        }
        due
    }
}
