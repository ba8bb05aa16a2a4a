//! How an action learns that its bundle's probes settled after it ran: probes publish every
//! check here, actions ask them for a fresh check and wait for the verdict. A locked action keeps
//! its Lease until then, so the next node restarts its component only after this node's came back
//! serving the new generation.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::{sync::watch, time::Instant};

use crate::{
    audit::event::ProbeSettled,
    config::{pod_tokens::PSEUDO_BUNDLE, ProbeConfig},
};

/// One finished check of one probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Checked {
    /// The generation it was judged against.
    pub generation: u64,
    /// Whether the endpoint reflected it.
    pub converged: bool,
    /// When the check began: a verdict only counts for an action if the check began after the
    /// action's command ended (a check of the old process proves nothing).
    pub began: Instant,
}

struct ProbeFeed {
    bundle: String,
    deadline: Duration,
    checks: watch::Sender<Option<Checked>>,
}

/// Probes' verdicts for actions, and actions' requests for a fresh check. Built once from the
/// configuration; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct ConvergenceFeed {
    probes: Arc<BTreeMap<String, ProbeFeed>>,
    rechecks: Arc<BTreeMap<String, watch::Sender<u64>>>,
}

impl ConvergenceFeed {
    /// A feed for these probes (the tests' shorthand: the agent builds it with
    /// [`ConvergenceFeed::with_pod_tokens`]).
    #[cfg(test)]
    pub(crate) fn new(probes: &[ProbeConfig]) -> ConvergenceFeed {
        ConvergenceFeed::with_pod_tokens(probes, None)
    }

    /// A feed for these probes and, with `[pod_tokens]` (its `deadline` given), for the token
    /// tracker as the pseudo-probe `pod-tokens` of the pseudo-bundle `pod-tokens`: its scans are
    /// the verdicts an `on = "stale"` action of `pod-tokens` waits for before releasing its lock.
    pub(crate) fn with_pod_tokens(
        probes: &[ProbeConfig],
        pod_tokens: Option<Duration>,
    ) -> ConvergenceFeed {
        let mut feeds = BTreeMap::new();
        let mut rechecks = BTreeMap::new();
        let pseudo = pod_tokens.map(|deadline| (PSEUDO_BUNDLE, PSEUDO_BUNDLE, deadline));
        let probes = probes
            .iter()
            .map(|p| (p.name.as_str(), p.bundle.as_str(), p.deadline))
            .chain(pseudo);
        for (name, bundle, deadline) in probes {
            feeds.insert(
                name.to_string(),
                ProbeFeed {
                    bundle: bundle.to_string(),
                    deadline,
                    checks: watch::channel(None).0,
                },
            );
            rechecks
                .entry(bundle.to_string())
                .or_insert_with(|| watch::channel(0).0);
        }
        ConvergenceFeed {
            probes: Arc::new(feeds),
            rechecks: Arc::new(rechecks),
        }
    }

    /// A probe finished a check (called by the probe after every check).
    pub(crate) fn checked(&self, probe: &str, check: Checked) {
        if let Some(feed) = self.probes.get(probe) {
            feed.checks.send_replace(Some(check));
        }
    }

    /// Changes whenever an action of `bundle` asks its probes for a fresh check; `None` when the
    /// bundle has no probe.
    pub(crate) fn rechecks(&self, bundle: &str) -> Option<watch::Receiver<u64>> {
        self.rechecks.get(bundle).map(watch::Sender::subscribe)
    }

    /// Asks every probe of `bundle` to check now (an action just ran).
    pub(crate) fn request_recheck(&self, bundle: &str) {
        if let Some(tx) = self.rechecks.get(bundle) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Waits until every probe of `bundle` reported, from a check that began at or after `since`,
    /// that the endpoint reflects `generation` or a newer one, each bounded by its own deadline
    /// counted from `since`. Returns each probe's outcome (empty when the bundle has no probe).
    pub(crate) async fn settled(
        &self,
        bundle: &str,
        generation: u64,
        since: Instant,
    ) -> Vec<ProbeSettled> {
        let waits: Vec<_> = self
            .probes
            .iter()
            .filter(|(_, f)| f.bundle == bundle)
            .map(|(name, f)| {
                let mut rx = f.checks.subscribe();
                let deadline = crate::clock::later(since, f.deadline);
                let probe = name.clone();
                tokio::spawn(async move {
                    let good = |c: &Option<Checked>| {
                        c.is_some_and(|c| {
                            c.converged && c.generation >= generation && c.began >= since
                        })
                    };
                    let converged = tokio::time::timeout_at(deadline, rx.wait_for(good))
                        .await
                        .is_ok_and(|r| r.is_ok());
                    ProbeSettled {
                        probe,
                        converged,
                        seconds: Instant::now().duration_since(since).as_secs_f64(),
                    }
                })
            })
            .collect();
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            // A wait only ends by its deadline or a verdict; it cannot panic.
            if let Ok(settled) = w.await {
                out.push(settled);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A probe as the configuration makes it (so new probe fields need no change here).
    fn probe(name: &str, bundle: &str, deadline_ms: u64) -> ProbeConfig {
        let text = format!(
            "[[bundle]]\nname = \"{bundle}\"\nkind = \"server\"\ncert = \"/c\"\nkey = \"/k\"\n[[probe]]\nname = \"{name}\"\nendpoint = \"127.0.0.1:1\"\nbundle = \"{bundle}\"\n"
        );
        let mut config = crate::config::Config::parse(std::path::Path::new("t.toml"), &text)
            .expect("valid probe");
        // Below the configurable minimum (1s), so the tests stay fast: settling only compares
        // instants.
        config.probes[0].deadline = Duration::from_millis(deadline_ms);
        config.probes.remove(0)
    }

    #[tokio::test]
    async fn only_a_converged_check_begun_after_the_command_counts() {
        let feed = ConvergenceFeed::new(&[probe("a", "b", 10_000), probe("other", "x", 10_000)]);
        let before = Instant::now();
        let since = before + Duration::from_millis(1);
        let waiting = tokio::spawn({
            let feed = feed.clone();
            async move { feed.settled("b", 3, since).await }
        });
        let check = |generation, converged, began| Checked {
            generation,
            converged,
            began,
        };
        // A check of the old process, one of an older generation, one not converged: none count.
        feed.checked("a", check(3, true, before));
        feed.checked("a", check(2, true, since));
        feed.checked("a", check(3, false, since));
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "settled on a check that proves nothing"
        );
        feed.checked("a", check(4, true, since + Duration::from_millis(5)));
        let settled = waiting.await.expect("join");
        assert_eq!(settled.len(), 1, "only the bundle's probes: {settled:?}");
        assert!(settled[0].converged && settled[0].probe == "a");
    }

    #[tokio::test]
    async fn a_probe_that_never_converges_ends_at_its_deadline() {
        let feed = ConvergenceFeed::new(&[probe("fast", "b", 50), probe("slow", "b", 10_000)]);
        let since = Instant::now();
        let waiting = tokio::spawn({
            let feed = feed.clone();
            async move { feed.settled("b", 1, since).await }
        });
        feed.checked(
            "slow",
            Checked {
                generation: 1,
                converged: true,
                began: since,
            },
        );
        let settled = waiting.await.expect("join");
        let by_name: BTreeMap<_, _> = settled.iter().map(|s| (s.probe.as_str(), s)).collect();
        assert!(by_name["slow"].converged);
        assert!(!by_name["fast"].converged, "{settled:?}");
        assert!(by_name["fast"].seconds >= 0.05, "{settled:?}");
    }

    #[tokio::test]
    async fn the_token_tracker_is_the_pseudo_bundles_probe() {
        let feed = ConvergenceFeed::with_pod_tokens(
            &[probe("a", "b", 1000)],
            Some(Duration::from_millis(50)),
        );
        let rechecks = feed
            .rechecks(PSEUDO_BUNDLE)
            .expect("pod-tokens has a probe");
        feed.request_recheck(PSEUDO_BUNDLE);
        assert!(rechecks.has_changed().expect("open"));
        let since = Instant::now();
        feed.checked(
            PSEUDO_BUNDLE,
            Checked {
                generation: 2,
                converged: true,
                began: since,
            },
        );
        let settled = feed.settled(PSEUDO_BUNDLE, 2, since).await;
        assert_eq!(settled.len(), 1);
        assert!(settled[0].converged && settled[0].probe == PSEUDO_BUNDLE);
        // Still stale at the deadline: the lock is given back then.
        let settled = feed.settled(PSEUDO_BUNDLE, 3, since).await;
        assert!(!settled[0].converged, "{settled:?}");
        assert!(ConvergenceFeed::new(&[]).rechecks(PSEUDO_BUNDLE).is_none());
    }

    #[tokio::test]
    async fn a_recheck_request_reaches_the_bundles_probes_only() {
        let feed = ConvergenceFeed::new(&[probe("a", "b", 1000), probe("c", "x", 1000)]);
        let mut b = feed.rechecks("b").expect("b has a probe");
        let mut x = feed.rechecks("x").expect("x has a probe");
        assert!(feed.rechecks("none").is_none());
        feed.request_recheck("b");
        assert!(b.has_changed().expect("open"));
        assert!(!x.has_changed().expect("open"));
        b.mark_unchanged();
        x.mark_unchanged();
        assert!(feed.settled("none", 1, Instant::now()).await.is_empty());
    }
}
