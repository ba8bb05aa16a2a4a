//! Two small waiting-and-locking habits the whole agent shares, kept in one leaf module that
//! imports nothing from the crate.
//!
//! - A poisoned lock is recovered, not propagated: a panic in one connection or probe task must not
//!   take down every later user of the same registry or board ([`LockExt::lock_or_recover`]).
//! - A `select!` arm whose event source may be absent (no client CA, no deadline, no signal
//!   handler) waits forever instead ([`or_pending`]).

use std::{
    future::Future,
    sync::{Mutex, MutexGuard, PoisonError},
};

/// `Mutex::lock` that takes over a poisoned lock.
///
/// Every mutex in the agent guards state that stays consistent between statements (a map, a list,
/// an `Option`), so the data a panicking holder left is still usable; refusing it would turn one
/// task's panic into a failure of every connection, probe or request after it.
pub(crate) trait LockExt<T: ?Sized> {
    /// Locks, recovering the guard if a previous holder panicked.
    fn lock_or_recover(&self) -> MutexGuard<'_, T>;
}

impl<T: ?Sized> LockExt<T> for Mutex<T> {
    fn lock_or_recover(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Awaits `future` when there is one; without one, never resolves. For a `select!` arm whose
/// source is optional: `_ = or_pending(client_ca.as_mut().map(|rx| rx.changed())) => ...`.
pub(crate) async fn or_pending<F: Future>(future: Option<F>) -> F::Output {
    match future {
        Some(future) => future.await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_over_with_its_data() {
        let shared = Arc::new(Mutex::new(vec![1]));
        let holder = shared.clone();
        let panicked = std::thread::spawn(move || {
            let mut v = holder.lock_or_recover();
            v.push(2);
            panic!("a task panics while holding the lock");
        })
        .join();
        assert!(panicked.is_err());
        assert!(shared.is_poisoned());
        assert_eq!(*shared.lock_or_recover(), vec![1, 2]);
    }

    #[tokio::test]
    async fn or_pending_awaits_a_present_future_and_never_resolves_without_one() {
        assert_eq!(or_pending(Some(async { 7 })).await, 7);
        let absent: Option<std::future::Ready<u8>> = None;
        assert!(
            tokio::time::timeout(Duration::from_millis(20), or_pending(absent))
                .await
                .is_err(),
            "no future: pending"
        );
    }
}
