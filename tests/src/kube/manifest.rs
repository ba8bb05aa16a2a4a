//! kubeadm's static-pod manifests, read the way the kubelet reads them: the container's command and
//! arguments, its hostPath mounts (which say where a path inside the container lives on the host)
//! and the probe that says when it is ready.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Pod {
    spec: PodSpec,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    containers: Vec<Container>,
    #[serde(default)]
    volumes: Vec<Volume>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Container {
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    volume_mounts: Vec<VolumeMount>,
    #[serde(default)]
    ports: Vec<ContainerPort>,
    readiness_probe: Option<Probe>,
    startup_probe: Option<Probe>,
    liveness_probe: Option<Probe>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ContainerPort {
    container_port: u16,
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct VolumeMount {
    name: String,
    mount_path: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Volume {
    name: String,
    host_path: Option<HostPath>,
}

#[derive(Debug, Deserialize)]
struct HostPath {
    path: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    http_get: Option<HttpGet>,
}

#[derive(Debug, Deserialize)]
struct HttpGet {
    host: Option<String>,
    path: String,
    port: Port,
    scheme: Option<String>,
}

/// A probe's port: a number, or the name of one of the container's ports (kubeadm writes
/// `probe-port`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Port {
    Number(u16),
    Name(String),
}

/// The HTTP(S) check that tells the kubelet a static pod is ready (readinessProbe, else
/// startupProbe, else livenessProbe), as kubeadm wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyCheck {
    /// Host the kubelet connects to (kubeadm sets it; the kubelet would use the pod IP).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Request path (`/readyz`, `/healthz`, ...).
    pub path: String,
    /// HTTPS (certificate not verified, as the kubelet's probes do) or plain HTTP.
    pub https: bool,
}

/// What to run for one static pod on this host: the peer binary, its arguments with every path
/// moved to where the hostPath mount puts it on the host, and its ready check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The binary (from `CERTRELOAD_PEERS`, standing in for the image's).
    pub program: PathBuf,
    /// Arguments after the program.
    pub args: Vec<String>,
    /// When it is ready.
    pub ready: ReadyCheck,
}

/// Reads the manifest at `path`: the first container's command (its program looked up in
/// `peers`), arguments with container paths mapped into `root` through the pod's hostPath
/// volumes (kubeadm runs with `--rootfs root`, so a hostPath `/etc/kubernetes/pki` is
/// `root/etc/kubernetes/pki` on this machine), and the ready check.
pub fn launch(path: &Path, root: &Path, peers: &Path) -> Result<Launch> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&text, root, peers).with_context(|| format!("static-pod manifest {}", path.display()))
}

fn parse(text: &str, root: &Path, peers: &Path) -> Result<Launch> {
    let pod: Pod = serde_saphyr::from_str(text).context("not a Pod")?;
    let Some(container) = pod.spec.containers.first() else {
        bail!("spec.containers is empty");
    };
    let Some((program, rest)) = container.command.split_first() else {
        bail!("spec.containers[0].command is empty");
    };
    let binary = Path::new(program)
        .file_name()
        .with_context(|| format!("command {program:?} names no binary"))?;
    // Container path prefix -> host path (inside root), longest prefix first.
    let mut mounts: Vec<(String, PathBuf)> = Vec::new();
    for m in &container.volume_mounts {
        let volume = pod
            .spec
            .volumes
            .iter()
            .find(|v| v.name == m.name)
            .with_context(|| format!("volumeMount {:?} has no volume", m.name))?;
        if let Some(h) = &volume.host_path {
            mounts.push((m.mount_path.clone(), under(root, &h.path)));
        }
    }
    mounts.sort_by_key(|(prefix, _)| std::cmp::Reverse(prefix.len()));
    let args = rest
        .iter()
        .chain(&container.args)
        .map(|a| map_arg(a, &mounts))
        .collect::<Result<Vec<_>>>()?;
    let probe = [
        &container.readiness_probe,
        &container.startup_probe,
        &container.liveness_probe,
    ]
    .into_iter()
    .flatten()
    .find_map(|p| p.http_get.as_ref())
    .context("no httpGet readiness, startup or liveness probe")?;
    let port = match &probe.port {
        Port::Number(n) => *n,
        Port::Name(name) => container
            .ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .with_context(|| format!("the probe's port {name:?} is not a container port"))?,
    };
    Ok(Launch {
        program: peers.join(binary),
        args,
        ready: ReadyCheck {
            host: probe.host.clone().unwrap_or_else(|| "127.0.0.1".into()),
            port,
            path: probe.path.clone(),
            https: probe
                .scheme
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("https")),
        },
    })
}

/// `root` joined with an absolute host path.
fn under(root: &Path, host_path: &str) -> PathBuf {
    root.join(host_path.trim_start_matches('/'))
}

/// `--flag=/container/path` -> `--flag=<host path>`; other arguments unchanged. A path that no
/// hostPath mount covers would live in the image, which the harness does not have: an error.
fn map_arg(arg: &str, mounts: &[(String, PathBuf)]) -> Result<String> {
    let Some((flag, value)) = arg.split_once('=') else {
        return Ok(arg.to_string());
    };
    if !value.starts_with('/') {
        return Ok(arg.to_string());
    }
    for (prefix, host) in mounts {
        let rest = match value.strip_prefix(prefix.as_str()) {
            Some("") => "",
            Some(r) if r.starts_with('/') || prefix.ends_with('/') => r.trim_start_matches('/'),
            _ => continue,
        };
        let mapped = if rest.is_empty() {
            host.clone()
        } else {
            host.join(rest)
        };
        return Ok(format!("{flag}={}", mapped.display()));
    }
    bail!("{arg}: {value} is under no hostPath volume mount")
}

/// The value of `--flag` in the manifest text (as written, a container path).
pub fn flag(text: &str, flag: &str) -> Option<String> {
    let needle = format!("--{flag}=");
    text.lines().find_map(|l| {
        l.trim_start()
            .strip_prefix("- ")
            .and_then(|a| a.trim().strip_prefix(needle.as_str()))
            .map(str::to_string)
    })
}

/// The manifest text with `--flag`'s value replaced (the line kubeadm wrote keeps its place and
/// indentation). The flag must be present.
pub fn with_flag(text: &str, flag: &str, value: &str) -> Result<String> {
    let needle = format!("--{flag}=");
    let mut found = false;
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        match trimmed.strip_prefix("- ") {
            Some(a) if a.trim().starts_with(needle.as_str()) => {
                found = true;
                out.push_str(&format!("{indent}- {needle}{value}\n"));
            }
            _ => out.push_str(line),
        }
    }
    if !found {
        bail!("no --{flag}= argument in the manifest");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KCM: &str = r#"apiVersion: v1
kind: Pod
metadata:
  name: kube-controller-manager
  namespace: kube-system
spec:
  containers:
  - command:
    - kube-controller-manager
    - --bind-address=127.0.0.1
    - --client-ca-file=/etc/kubernetes/pki/ca.crt
    - --kubeconfig=/etc/kubernetes/controller-manager.conf
    - --leader-elect=true
    image: registry.k8s.io/kube-controller-manager:v1.37.2
    livenessProbe:
      httpGet:
        host: 127.0.0.1
        path: /livez
        port: 10257
        scheme: HTTPS
    ports:
    - containerPort: 10257
      name: probe-port
      protocol: TCP
    startupProbe:
      httpGet:
        host: 127.0.0.1
        path: /healthz
        port: probe-port
        scheme: HTTPS
    volumeMounts:
    - mountPath: /etc/kubernetes/pki
      name: k8s-certs
      readOnly: true
    - mountPath: /etc/kubernetes/controller-manager.conf
      name: kubeconfig
      readOnly: true
  volumes:
  - hostPath:
      path: /etc/kubernetes/pki
      type: DirectoryOrCreate
    name: k8s-certs
  - hostPath:
      path: /etc/kubernetes/controller-manager.conf
      type: FileOrCreate
    name: kubeconfig
"#;

    #[test]
    fn paths_move_into_the_root_through_host_path_mounts() {
        let l = parse(KCM, Path::new("/r"), Path::new("/peers")).expect("parses");
        assert_eq!(l.program, Path::new("/peers/kube-controller-manager"));
        assert_eq!(
            l.args,
            [
                "--bind-address=127.0.0.1",
                "--client-ca-file=/r/etc/kubernetes/pki/ca.crt",
                "--kubeconfig=/r/etc/kubernetes/controller-manager.conf",
                "--leader-elect=true",
            ]
        );
        assert_eq!(
            l.ready,
            ReadyCheck {
                host: "127.0.0.1".into(),
                port: 10257,
                path: "/healthz".into(),
                https: true
            }
        );
    }

    #[test]
    fn a_path_outside_every_mount_is_refused() {
        let text = with_flag(KCM, "client-ca-file", "/srv/ca.crt").expect("flag present");
        let err = parse(&text, Path::new("/r"), Path::new("/p")).expect_err("unmapped");
        assert!(err.to_string().contains("/srv/ca.crt"), "{err}");
        // A sibling whose name merely starts like a mount is not under it.
        let text = with_flag(KCM, "client-ca-file", "/etc/kubernetes/pki-old/ca.crt")
            .expect("flag present");
        assert!(parse(&text, Path::new("/r"), Path::new("/p")).is_err());
    }

    #[test]
    fn a_flag_is_read_and_replaced_in_place() {
        assert_eq!(
            flag(KCM, "client-ca-file").as_deref(),
            Some("/etc/kubernetes/pki/ca.crt")
        );
        let text =
            with_flag(KCM, "client-ca-file", "/etc/kubernetes/pki/old-ca.crt").expect("present");
        assert_eq!(
            flag(&text, "client-ca-file").as_deref(),
            Some("/etc/kubernetes/pki/old-ca.crt")
        );
        assert_eq!(text.lines().count(), KCM.lines().count());
        assert!(with_flag(KCM, "no-such-flag", "x").is_err());
        assert_eq!(flag(KCM, "no-such-flag"), None);
    }
}
