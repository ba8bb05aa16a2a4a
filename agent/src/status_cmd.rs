//! `certreload status`: the admin endpoint's `/status` as a readable table.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, SystemTime},
};

use thiserror::Error;

use crate::{
    converge::probe::ProbeStatus,
    propagation::{board::SaKeysStatus, tracker::PodTokensStatus},
    status::{BundleStatus, LastChange, ListenerStatus, Status},
};

/// The status could not be fetched.
#[derive(Debug, Error)]
pub(crate) enum StatusError {
    /// No agent answering there.
    #[error("cannot reach the admin endpoint at {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// Something answered, but not with a status document.
    #[error("unexpected answer from {addr}: {detail}")]
    Answer {
        addr: SocketAddr,
        /// What was wrong.
        detail: String,
    },
}

/// GETs `/status` from the admin endpoint (our own loopback endpoint: a one-shot HTTP/1.1 request
/// with `Connection: close` is all it takes).
pub(crate) fn fetch(addr: SocketAddr) -> Result<Status, StatusError> {
    let connect = |source| StatusError::Connect { addr, source };
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(connect)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(connect)?;
    write!(
        stream,
        "GET /status HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(connect)?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(connect)?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| StatusError::Answer {
            addr,
            detail: "no HTTP body".into(),
        })?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(StatusError::Answer {
            addr,
            detail: head.lines().next().unwrap_or_default().to_string(),
        });
    }
    serde_json::from_str(body).map_err(|e| StatusError::Answer {
        addr,
        detail: e.to_string(),
    })
}

/// Renders the status document: bundles with their expiry countdown, listeners with stale counts,
/// probes with their verdicts.
pub(crate) fn render(status: &Status) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut out = format!(
        "monitor: {} (ring-buffer drops: {})\n",
        status.monitor.mode, status.monitor.ringbuf_drops
    );
    if !status.monitor.strategy.is_empty() {
        out.push_str(&format!(
            "hook strategy: {} ({})\n",
            status.monitor.strategy, status.monitor.strategy_reason
        ));
    }
    out.push('\n');
    render_bundles(&mut out, &status.bundles, now);
    render_listeners(&mut out, &status.listeners);
    render_probes(&mut out, &status.probes);
    if let Some(k) = &status.sa_keys {
        render_sa_keys(&mut out, k);
    }
    if let Some(t) = &status.pod_tokens {
        render_pod_tokens(&mut out, t);
    }
    out
}

/// The token tracker's last scan: the counts, then one line per token volume (stale ones say why
/// and for how long).
fn render_pod_tokens(out: &mut String, t: &PodTokensStatus) {
    out.push_str(&format!(
        "\npod tokens in {}: {} current, {} stale, {} unknown (signing kid {}, epoch {}, scanned {})\n",
        t.pods_dir,
        t.current,
        t.stale,
        t.unknown,
        t.signing_kid.as_deref().unwrap_or("not published"),
        t.epoch,
        t.scanned_at
    ));
    if t.tokens.is_empty() {
        return;
    }
    out.push_str(&format!(
        "{:<40} {:<24} {:<8} {:<16} {}\n",
        "POD", "VOLUME", "STATE", "KID", "REASON"
    ));
    for token in &t.tokens {
        let pod = match (&token.namespace, &token.pod) {
            (Some(ns), Some(pod)) => format!("{ns}/{pod}"),
            _ => token.uid.clone(),
        };
        let kid: String = token
            .kid
            .as_deref()
            .unwrap_or("-")
            .chars()
            .take(12)
            .collect();
        let reason = match (&token.reason, token.stale_for_s) {
            (Some(r), Some(s)) => format!("{r} for {}", countdown(s as i64)),
            (Some(r), None) => r.clone(),
            (None, _) => "-".into(),
        };
        out.push_str(&format!(
            "{pod:<40} {:<24} {:<8} {kid:<16} {reason}\n",
            token.volume,
            if token.state == "stale" {
                "STALE"
            } else {
                token.state.as_str()
            },
        ));
    }
}

/// `[sa_keys]`: what this agent published and what it follows (kids shortened to 12 characters,
/// as in the pod tokens' table), and whether the follower's watch is connected.
fn render_sa_keys(out: &mut String, k: &SaKeysStatus) {
    let watch = match k.watch_connected {
        Some(true) => "watch connected",
        Some(false) => "WATCH LOST",
        None => "not followed",
    };
    out.push_str(&format!("\nsa keys ({}): {watch}\n", k.configmap));
    for (what, o) in [("published", &k.published), ("followed", &k.followed)] {
        let Some(o) = o else { continue };
        let short = |kid: &str| kid.chars().take(12).collect::<String>();
        out.push_str(&format!(
            "  {what}: generation {} by {} at {} (resourceVersion {}): signing kid {}, kids {}\n",
            o.generation,
            o.publisher,
            o.published_at,
            o.resource_version,
            short(&o.signing_kid),
            o.kids
                .iter()
                .map(|k| short(k))
                .collect::<Vec<_>>()
                .join(" "),
        ));
    }
}

/// `n`, or `-` when there is none.
fn or_dash<T: ToString>(n: Option<T>) -> String {
    n.map(|n| n.to_string()).unwrap_or_else(|| "-".into())
}

fn render_bundles(out: &mut String, bundles: &[BundleStatus], now: i64) {
    out.push_str(&format!(
        "{:<20} {:>4} {:<18} {:<22} {}\n",
        "BUNDLE", "GEN", "EXPIRES IN", "SERIAL", "LAST CHANGE"
    ));
    for b in bundles {
        let g = b.generation.as_ref();
        let expires = match g {
            None => "NOT READY".into(),
            Some(g) => or_dash(g.not_after.map(|t| countdown(t - now))),
        };
        let serial: String = g
            .and_then(|g| g.serial.as_deref())
            .unwrap_or("-")
            .chars()
            .take(20)
            .collect();
        out.push_str(&format!(
            "{:<20} {:>4} {:<18} {:<22} {}\n",
            b.name,
            or_dash(g.map(|g| g.number)),
            expires,
            serial,
            last_change(b.last_change.as_ref())
        ));
    }
}

/// `TS PATH by COMM[TGID]`, or `-` when no change has been seen.
fn last_change(last: Option<&LastChange>) -> String {
    let Some(last) = last else {
        return "-".to_string();
    };
    let writer = match &last.writer {
        None => "unknown writer".to_string(),
        Some(who) => format!("{}[{}]", who.comm, who.tgid),
    };
    format!("{} {} by {}", last.ts, last.path, writer)
}

fn render_listeners(out: &mut String, listeners: &[ListenerStatus]) {
    if listeners.is_empty() {
        return;
    }
    out.push_str(&format!(
        "\n{:<20} {:<22} {:>4} {:>6} {:>6} {:>14}\n",
        "LISTENER", "ADDRESS", "GEN", "LIVE", "STALE", "OLDEST STALE"
    ));
    for l in listeners {
        let c = &l.connections;
        out.push_str(&format!(
            "{:<20} {:<22} {:>4} {:>6} {:>6} {:>14}\n",
            l.name,
            l.listen,
            or_dash(l.server_generation),
            c.live.to_string(),
            c.stale.to_string(),
            or_dash(c.oldest_stale_s.map(|s| countdown(s as i64)))
        ));
    }
}

fn render_probes(out: &mut String, probes: &[ProbeStatus]) {
    if probes.is_empty() {
        return;
    }
    out.push_str(&format!(
        "\n{:<26} {:<22} {:<22} {:>4} {:<9} {}\n",
        "PROBE", "ENDPOINT", "BUNDLE", "GEN", "VERDICT", "OBSERVED"
    ));
    for p in probes {
        out.push_str(&format!(
            "{:<26} {:<22} {:<22} {:>4} {:<9} {}\n",
            p.name,
            p.endpoint,
            p.bundle,
            p.generation.to_string(),
            if p.converged { "converged" } else { "STALE" },
            p.observed
        ));
        if let Some(t) = &p.namespaces {
            render_namespaces(out, t);
        }
    }
}

/// A `root-ca-configmaps` probe's namespaces: the counts, then each stale one listed.
fn render_namespaces(out: &mut String, t: &crate::converge::root_ca::NamespaceTally) {
    out.push_str(&format!(
        "  namespaces: {} total, {} current, {} stale, {} unknown\n",
        t.total, t.current, t.stale, t.unknown
    ));
    for s in &t.stale_namespaces {
        out.push_str(&format!(
            "    STALE {:<40} {}\n",
            s.namespace,
            s.reason.as_str()
        ));
    }
    if t.stale > t.stale_namespaces.len() {
        out.push_str(&format!(
            "    ... and {} more\n",
            t.stale - t.stale_namespaces.len()
        ));
    }
}

fn countdown(secs: i64) -> String {
    if secs < 0 {
        return format!("EXPIRED {}", countdown(-secs));
    }
    let (d, h, m) = (secs / 86400, secs % 86400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {}s", secs % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_sa_keys_section() {
        let kid = |c: char| std::iter::repeat_n(c, 43).collect::<String>();
        let object = |generation: u64| {
            serde_json::json!({"kids": [kid('a'), kid('b')], "signing_kid": kid('b'),
                "generation": generation, "publisher": "cp-1", "published_at": "t",
                "resource_version": "42"})
        };
        let doc = serde_json::json!({
            "monitor": {"mode": "ebpf", "ringbuf_drops": 0},
            "bundles": [], "listeners": [], "probes": [],
            "sa_keys": {"configmap": "kube-system/certreload-sa-keys", "published": object(3),
                "followed": object(3), "watch_connected": false}
        });
        let doc: Status = serde_json::from_value(doc).expect("a status document");
        let text = render(&doc);
        assert!(
            text.contains("sa keys (kube-system/certreload-sa-keys): WATCH LOST")
                && text.contains("  published: generation 3 by cp-1")
                && text.contains("  followed: generation 3 by cp-1 at t (resourceVersion 42): signing kid bbbbbbbbbbbb, kids aaaaaaaaaaaa bbbbbbbbbbbb"),
            "{text}"
        );
    }

    #[test]
    fn renders_bundles_and_listeners() {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("clock")
            .as_secs() as i64;
        let doc = serde_json::json!({
            "monitor": {"mode": "ebpf", "ringbuf_drops": 0},
            "bundles": [
                {"name": "web", "files": [], "generation": {"number": 2, "certificates": [], "not_after": now + 3 * 86400 + 7200 + 1800, "serial": "0a"},
                 "last_change": {"ts": "t", "path": "/p/tls.crt", "writer": {"comm": "mv", "tgid": 42, "pid": 42, "uid": 0, "gid": 0, "cgroup_id": 1}}},
                {"name": "broken", "files": [], "generation": null, "last_change": null}
            ],
            "listeners": [{"name": "front", "listen": "127.0.0.1:9443", "server_generation": 2,
                           "connections": {"live": 3, "stale": 1, "oldest_stale_s": 65.0}}],
            "probes": [{"name": "etcd-client", "endpoint": "127.0.0.1:2379", "bundle": "etcd-server",
                        "generation": 3, "converged": false, "observed": "serves another certificate",
                        "checked_at": "t"},
                       {"name": "kube-root-ca-configmaps", "endpoint": "*/kube-root-ca.crt", "bundle": "kubernetes-ca",
                        "generation": 2, "converged": false, "observed": "1 of 4 namespaces stale: team-a (outdated)",
                        "checked_at": "t", "namespaces": {"total": 4, "current": 3, "stale": 1, "unknown": 0,
                        "stale_namespaces": [{"namespace": "team-a", "reason": "outdated"}]}}]
        });
        let doc: Status = serde_json::from_value(doc).expect("a status document");
        let text = render(&doc);
        assert!(
            text.contains("web") && text.contains("3d 2h") && text.contains("mv[42]"),
            "{text}"
        );
        assert!(text.contains("NOT READY"), "{text}");
        assert!(text.contains("front") && text.contains("1m 5s"), "{text}");
        assert!(
            text.contains("etcd-client") && text.contains("STALE"),
            "{text}"
        );
        assert!(
            text.contains("namespaces: 4 total, 3 current, 1 stale, 0 unknown")
                && text.contains("STALE team-a"),
            "{text}"
        );
        assert_eq!(countdown(-90), "EXPIRED 1m 30s");
        assert!(
            !text.contains("pod tokens"),
            "no [pod_tokens], no section: {text}"
        );
    }

    #[test]
    fn renders_the_pod_tokens_section() {
        let doc = serde_json::json!({
            "monitor": {"mode": "ebpf", "ringbuf_drops": 0},
            "bundles": [], "listeners": [], "probes": [],
            "pod_tokens": {"pods_dir": "/var/lib/kubelet/pods", "scanned_at": "t", "epoch": 2,
                "signing_kid": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "cluster_ca_generation": 1,
                "current": 1, "stale": 1, "unknown": 0,
                "tokens": [
                    {"namespace": "default", "pod": "web-0", "uid": "u0", "volume": "kube-api-access-x",
                     "kid": "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG", "age_s": 5, "state": "current",
                     "reason": null, "stale_for_s": null},
                    {"namespace": "default", "pod": "web-1", "uid": "u1", "volume": "kube-api-access-y",
                     "kid": "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210abcdefg", "age_s": 3600, "state": "stale",
                     "reason": "outgoing_key", "stale_for_s": 75.0}
                ]}
        });
        let doc: Status = serde_json::from_value(doc).expect("a status document");
        let text = render(&doc);
        assert!(
            text.contains("pod tokens in /var/lib/kubelet/pods: 1 current, 1 stale, 0 unknown"),
            "{text}"
        );
        assert!(
            text.contains("default/web-1")
                && text.contains("STALE")
                && text.contains("outgoing_key for 1m 15s"),
            "{text}"
        );
    }
}
