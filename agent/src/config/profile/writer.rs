//! The profile's TOML writer: renders the kubeadm table's bundles, probes and actions, leaving out
//! (with one line saying why) each entry whose files or bundles are not on this node.

use std::{
    fmt,
    path::{Path, PathBuf},
    time::Duration,
};

/// The generated text so far, and what was left out of it.
pub(super) struct Writer<'a> {
    /// The host filesystem root every relative path is joined to.
    pub(super) root: &'a Path,
    /// The configuration text.
    pub(super) out: String,
    /// One line per entry left out or chosen from the node's files.
    pub(super) skipped: Vec<String>,
    /// The bundles written so far (probes and actions need theirs).
    bundles: Vec<&'static str>,
    /// The probes written so far (an action filtered on a probe needs it).
    probes: Vec<String>,
}

/// What runs a profile's action.
#[derive(Debug, Clone, Copy)]
pub(super) enum Trigger<'a> {
    /// Each newly accepted generation of the bundle.
    Accepted,
    /// Any probe of the bundle stale at its deadline.
    Stale,
    /// This probe of the bundle stale at its deadline (`probe = "NAME"`).
    StaleProbe(&'a str),
}

/// One `[[bundle]]`: files relative to the host root, by config field.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bundle<'a> {
    pub(super) name: &'static str,
    /// The config `kind`.
    pub(super) kind: &'static str,
    /// Fields that must all exist on the node, or the bundle is left out.
    pub(super) fields: &'a [(&'a str, &'a str)],
    /// Fields written only when their file exists (a CA's key).
    pub(super) optional: &'a [(&'a str, &'a str)],
    /// Extra lines (`signing = true`).
    pub(super) settings: &'a [&'a str],
}

impl<'a> Bundle<'a> {
    /// A bundle of required fields only.
    pub(super) const fn of(
        name: &'static str,
        kind: &'static str,
        fields: &'a [(&'a str, &'a str)],
    ) -> Self {
        Bundle {
            name,
            kind,
            fields,
            optional: &[],
            settings: &[],
        }
    }
}

/// What a probe checks after the handshake (the `check` and `request` keys of `[[probe]]`).
#[derive(Debug, Clone, Copy)]
pub(super) enum Check<'a> {
    /// The served leaf, and a client certificate refused in the handshake (etcd).
    Tls,
    /// One HTTP request over the mTLS connection: 401 means the client CA is not trusted.
    Http(&'a str),
    /// The API server's JWKS against the sa-keys bundle's key ids.
    Jwks,
    /// Every namespace's `kube-root-ca.crt` against the ca bundle, through the Kubernetes API
    /// (no endpoint, no server name, no client certificate).
    RootCaConfigMaps,
}

/// One `[[probe]]` of the profile.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe<'a> {
    pub(super) name: &'a str,
    pub(super) endpoint: &'a str,
    pub(super) server_name: &'a str,
    pub(super) bundle: &'a str,
    pub(super) client: Option<&'a str>,
    pub(super) check: Check<'a>,
    /// How long the component has to reflect a new generation (measured per component).
    pub(super) deadline: Duration,
    /// A token file sent as `Authorization: Bearer` with the probe's request.
    pub(super) bearer: Option<&'a Path>,
}

/// Components whose restarts take turns across control-plane nodes (an action named
/// `<component>-...` gets `lock = "<component>"`; the Lease names are in deploy/rbac.yaml). The
/// kubelet is not among them: its restart is node-local, and serialising it over every node of a
/// large cluster would take hours.
const CONTROL_PLANE_LOCKS: [&str; 4] = [
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

impl<'a> Writer<'a> {
    /// Starts the profile for the host at `root` with its header and `[audit]` table.
    pub(super) fn new(root: &'a Path, audit: &str) -> Self {
        Writer {
            root,
            out: format!(
                "# certreload kubeadm profile (generated for {}).\n[audit]\npath = \"{audit}\"\n",
                root.display()
            ),
            skipped: Vec::new(),
            bundles: Vec::new(),
            probes: Vec::new(),
        }
    }

    /// `rel` under the host root.
    pub(super) fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Appends one line to the text (a `String` takes every write, so nothing can fail).
    fn line(&mut self, text: fmt::Arguments<'_>) {
        self.out.push_str(&fmt::format(text));
        self.out.push('\n');
    }

    /// Adds a bundle if every one of its `fields` exists; otherwise records one skip line.
    pub(super) fn bundle(&mut self, b: &Bundle<'_>) {
        for (_, rel) in b.fields {
            let path = self.path(rel);
            if !path.exists() {
                self.skipped.push(format!(
                    "bundle {}: {} not on this node, skipped",
                    b.name,
                    path.display()
                ));
                return;
            }
        }
        self.line(format_args!(
            "\n[[bundle]]\nname = \"{}\"\nkind = \"{}\"",
            b.name, b.kind
        ));
        let present: Vec<_> = b
            .optional
            .iter()
            .filter(|(_, rel)| self.path(rel).exists())
            .collect();
        for (field, rel) in b.fields.iter().chain(present) {
            let path = self.path(rel);
            if *field == "public_keys" {
                self.line(format_args!("public_keys = [{path:?}]"));
            } else {
                self.line(format_args!("{field} = {path:?}"));
            }
        }
        for line in b.settings {
            self.line(format_args!("{line}"));
        }
        self.bundles.push(b.name);
    }

    /// Whether `bundle` was written.
    pub(super) fn has(&self, bundle: &str) -> bool {
        self.bundles.contains(&bundle)
    }

    /// Adds a probe when its bundles are present.
    pub(super) fn probe(&mut self, p: &Probe<'_>) {
        let missing = [Some(p.bundle), p.client]
            .into_iter()
            .flatten()
            .find(|b| !self.has(b));
        if let Some(b) = missing {
            self.skipped.push(format!(
                "probe {}: bundle {b} is not on this node, skipped",
                p.name
            ));
            return;
        }
        self.probes.push(p.name.to_string());
        if let Check::RootCaConfigMaps = p.check {
            self.line(format_args!(
                "\n[[probe]]\nname = \"{}\"\nbundle = \"{}\"",
                p.name, p.bundle
            ));
        } else {
            self.line(format_args!(
                "\n[[probe]]\nname = \"{}\"\nendpoint = \"{}\"\nserver_name = \"{}\"\nbundle = \"{}\"",
                p.name, p.endpoint, p.server_name, p.bundle
            ));
        }
        if let Some(c) = p.client {
            self.line(format_args!("client_bundle = \"{c}\""));
        }
        if let Some(token) = p.bearer {
            self.line(format_args!("bearer_token_file = {token:?}"));
        }
        match p.check {
            Check::Tls => self.line(format_args!("check = \"tls\"")),
            Check::Http(request) => {
                self.line(format_args!("check = \"http\"\nrequest = \"{request}\""))
            }
            Check::Jwks => self.line(format_args!("check = \"jwks\"")),
            Check::RootCaConfigMaps => self.line(format_args!("check = \"root-ca-configmaps\"")),
        }
        self.line(format_args!(
            "deadline = \"{}s\"\ninterval = \"30s\"",
            p.deadline.as_secs()
        ));
    }

    /// Adds a disabled action (enable it by name from a config file). A control-plane component
    /// restart names the component as its `lock`: every control-plane node's agent sees a
    /// cluster-wide rotation at once, and restarting etcd or kube-apiserver everywhere together
    /// loses quorum or the API, so enabled restarts take turns through a Lease.
    pub(super) fn action(
        &mut self,
        name: &str,
        bundle: &str,
        trigger: Trigger<'_>,
        why: &str,
        argv: &[String],
    ) {
        if !self.has(bundle) {
            return;
        }
        if let Trigger::StaleProbe(probe) = trigger {
            if !self.probes.iter().any(|p| p == probe) {
                self.skipped.push(format!(
                    "action {name}: runs on probe {probe}'s stale verdicts, and that probe is not written here, skipped"
                ));
                return;
            }
        }
        let on = match trigger {
            Trigger::Accepted => "accepted",
            Trigger::Stale | Trigger::StaleProbe(_) => "stale",
        };
        self.line(format_args!("\n# {why}\n[[action]]\nname = \"{name}\"\nenabled = false\nbundle = \"{bundle}\"\non = \"{on}\"\nexec = {argv:?}\ntimeout = \"120s\"\nmin_interval = \"10m\""
        ));
        if let Trigger::StaleProbe(probe) = trigger {
            self.line(format_args!("probe = \"{probe}\""));
        }
        if let Some(lock) = CONTROL_PLANE_LOCKS
            .iter()
            .find(|l| name.starts_with(&format!("{l}-")))
        {
            self.line(format_args!("lock = \"{lock}\""));
        }
    }
}
