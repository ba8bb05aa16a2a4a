//! The last confirmed change of each bundle: written by the reloader as changes arrive, read by
//! `/status` (the way `converge::ProbeBoard` carries probe verdicts), so the reload pipeline never
//! writes into the admin endpoint's state.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use crate::{monitor::ConfirmedChange, sync::LockExt};

/// Each bundle's last confirmed change, by bundle name. Cloning shares the board.
#[derive(Clone, Debug, Default)]
pub(crate) struct ChangeBoard(Arc<Mutex<HashMap<String, ConfirmedChange>>>);

impl ChangeBoard {
    /// Records `change` as `bundle`'s last one.
    pub(crate) fn record(&self, bundle: &str, change: &ConfirmedChange) {
        self.0
            .lock_or_recover()
            .insert(bundle.to_string(), change.clone());
    }

    /// `bundle`'s last confirmed change, if any has been seen since start-up.
    pub(crate) fn last(&self, bundle: &str) -> Option<ConfirmedChange> {
        self.0.lock_or_recover().get(bundle).cloned()
    }
}
