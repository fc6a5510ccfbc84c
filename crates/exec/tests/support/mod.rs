//! Helpers shared by the exec crate's integration tests.

use std::sync::Mutex;

use refit_exec::OutputLine;

/// Collects every line an action hands to its `on_line` callback, in arrival order.
#[derive(Default)]
pub struct Lines(Mutex<Vec<OutputLine>>);

impl Lines {
    /// The callback to pass to an action.
    pub fn cb(&self) -> impl Fn(OutputLine) + Send + Sync + '_ {
        |l| self.0.lock().unwrap().push(l)
    }

    /// The lines collected so far (and forgets them).
    pub fn take(&self) -> Vec<OutputLine> {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}
