//! Sampled drops after the datapath: the engine reads them from the
//! sample ring ([`crate::dpstats`]) when it signals, keeps the last few
//! for `daolinet-agent status`, and passes them on to the controllers
//! that asked for them.

use std::collections::VecDeque;

use crate::dpstats::Dropped;

/// Samples kept for the status.
pub const RECENT: usize = 64;

/// The last sampled drops.
#[derive(Debug, Default)]
pub struct DropLog {
    recent: VecDeque<Dropped>,
}

impl DropLog {
    /// Remember `d` (the oldest goes when full).
    pub fn push(&mut self, d: Dropped) {
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(d);
    }

    /// The samples kept, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &Dropped> {
        self.recent.iter()
    }
}
