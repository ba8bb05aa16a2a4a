//! The set of watched paths and, for each, the names whose change can affect it.
//!
//! A watched path is affected not only by operations on its own basename but by any symlink on its
//! way to the real file: a Kubernetes Secret volume exposes `tls.crt → ..data/tls.crt`, and a
//! rotation renames a new `..data` symlink into place without touching `tls.crt` at all. The kernel
//! filter is therefore loaded with every basename met while resolving each path.

use std::{
    collections::{BTreeSet, HashMap},
    ffi::{OsStr, OsString},
    path::{Component, Path, PathBuf},
};

use super::hint::Scope;

/// Symlink hops followed before giving up, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINK_HOPS: usize = 40;

/// One watched path and the basenames that concern it.
#[derive(Debug, Clone)]
pub(crate) struct WatchedPath {
    /// The path as the user gave it (printed in every change).
    pub given: PathBuf,
    /// `given` made absolute against the agent's working directory at start.
    pub absolute: PathBuf,
    /// Basenames of the path, every symlink on the way, and the file it resolves to.
    pub names: BTreeSet<OsString>,
    /// Every path visited while resolving it, as last resolved ([`resolution_hops`]): the chain
    /// whose entries an operation must touch to be a change's writer (`monitor::attribution`).
    pub hops: Vec<PathBuf>,
}

/// All watched paths, indexed by trigger name.
#[derive(Debug, Default)]
pub(crate) struct WatchSet {
    paths: Vec<WatchedPath>,
    by_name: HashMap<OsString, Vec<usize>>,
}

impl WatchSet {
    /// Builds the set; relative paths are anchored at the current directory.
    pub(crate) fn new(given: &[PathBuf]) -> Self {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let mut set = WatchSet::default();
        for path in given {
            let absolute = lexical_absolute(&cwd, path);
            set.paths.push(WatchedPath {
                given: path.clone(),
                names: BTreeSet::new(),
                hops: Vec::new(),
                absolute,
            });
        }
        set.refresh();
        set
    }

    /// Recomputes every path's trigger names (after a change: a symlink may now point elsewhere).
    /// Returns true when the set of all names changed.
    pub(crate) fn refresh(&mut self) -> bool {
        let before = self.all_names();
        for p in &mut self.paths {
            p.hops = resolution_hops(&p.absolute);
            p.names = trigger_names(&p.hops);
        }
        self.by_name.clear();
        for (i, p) in self.paths.iter().enumerate() {
            for n in &p.names {
                self.by_name.entry(n.clone()).or_default().push(i);
            }
        }
        before != self.all_names()
    }

    /// Recomputes the trigger names of the paths `touched` only: after a pass over them, their
    /// symlinks may point elsewhere, while a path none of whose names the operations concerned
    /// resolves as before. Costs what was touched, not every watched path (with 10,000 paths a
    /// full refresh after each change made one change's detection take ~90 ms). Returns true when
    /// the set of all names changed.
    pub(crate) fn refresh_paths(&mut self, touched: &[usize]) -> bool {
        let mut changed = false;
        for &i in touched {
            let Some(path) = self.paths.get_mut(i) else {
                continue;
            };
            path.hops = resolution_hops(&path.absolute);
            let names = trigger_names(&path.hops);
            if names == path.names {
                continue;
            }
            let old = std::mem::replace(&mut path.names, names.clone());
            for gone in old.difference(&names) {
                if let Some(users) = self.by_name.get_mut(gone) {
                    users.retain(|&u| u != i);
                    if users.is_empty() {
                        self.by_name.remove(gone);
                        changed = true;
                    }
                }
            }
            for added in names.difference(&old) {
                let users = self.by_name.entry(added.clone()).or_default();
                changed |= users.is_empty();
                users.push(i);
            }
        }
        changed
    }

    /// Every distinct trigger name (what the kernel filter must hold).
    pub(crate) fn all_names(&self) -> BTreeSet<OsString> {
        self.paths
            .iter()
            .flat_map(|p| p.names.iter().cloned())
            .collect()
    }

    /// Indexes of the paths concerned by an operation on `name` (any path; its basename is used).
    pub(crate) fn concerned_by(&self, name: &OsStr) -> &[usize] {
        let base = Path::new(name).file_name().unwrap_or(name);
        self.by_name.get(base).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Indexes of the paths a hint's scope covers, sorted and distinct.
    pub(crate) fn resolve(&self, scope: &Scope) -> Vec<usize> {
        match scope {
            Scope::All => (0..self.paths.len()).collect(),
            Scope::Names(names) => {
                let mut v: Vec<usize> = names
                    .iter()
                    .flat_map(|n| self.concerned_by(n))
                    .copied()
                    .collect();
                v.sort_unstable();
                v.dedup();
                v
            }
        }
    }

    /// The watched paths, in the order given.
    pub(crate) fn paths(&self) -> &[WatchedPath] {
        &self.paths
    }

    /// The distinct parent directories of every path and of every symlink on the way: what the
    /// inotify fallback must watch to see renames and symlink swaps.
    pub(crate) fn directories(&self) -> BTreeSet<PathBuf> {
        let mut dirs = BTreeSet::new();
        for p in &self.paths {
            for hop in resolution_hops(&p.absolute) {
                if let Some(parent) = hop.parent() {
                    dirs.insert(parent.to_path_buf());
                }
            }
        }
        dirs
    }
}

/// `path` made absolute and normalised without touching the filesystem (`..` is kept for the
/// kernel to resolve, since it may cross a symlink).
fn lexical_absolute(cwd: &Path, path: &Path) -> PathBuf {
    let joined = if path.is_absolute() {
        path.to_path_buf()
    } else {
        cwd.join(path)
    };
    joined
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect()
}

/// Every path visited while resolving `path`: the path itself, each symlink met (as the absolute
/// path of the link) and the final target. Stops quietly at missing components or loops.
pub(crate) fn resolution_hops(path: &Path) -> Vec<PathBuf> {
    let mut hops = vec![path.to_path_buf()];
    let mut pending: Vec<OsString> = path
        .components()
        .rev()
        .map(|c| c.as_os_str().to_os_string())
        .collect();
    let mut resolved = PathBuf::new();
    let mut budget = MAX_SYMLINK_HOPS;
    while let Some(comp) = pending.pop() {
        let comp_path = Path::new(&comp);
        if comp_path == Path::new("/") {
            resolved = PathBuf::from("/");
            continue;
        }
        if comp == ".." {
            resolved.pop();
            continue;
        }
        if comp == "." {
            continue;
        }
        let candidate = resolved.join(&comp);
        match std::fs::symlink_metadata(&candidate) {
            Ok(meta) if meta.file_type().is_symlink() && budget > 0 => {
                budget -= 1;
                hops.push(candidate.clone());
                let Ok(target) = std::fs::read_link(&candidate) else {
                    resolved = candidate;
                    continue;
                };
                if target.is_absolute() {
                    resolved = PathBuf::from("/");
                }
                for c in target.components().rev() {
                    pending.push(c.as_os_str().to_os_string());
                }
            }
            _ => resolved = candidate,
        }
    }
    if resolved != *path {
        hops.push(resolved);
    }
    hops
}

/// The basenames of every hop of a path's resolution.
fn trigger_names(hops: &[PathBuf]) -> BTreeSet<OsString> {
    hops.iter()
        .filter_map(|hop| hop.file_name().map(OsStr::to_os_string))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;

    use super::*;

    #[test]
    fn secret_volume_paths_are_triggered_by_data_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ts = dir.path().join("..2026_11_28_23_00_00.1");
        std::fs::create_dir(&ts).expect("mkdir");
        std::fs::write(ts.join("tls.crt"), "x").expect("write");
        symlink("..2026_11_28_23_00_00.1", dir.path().join("..data")).expect("symlink");
        symlink("..data/tls.crt", dir.path().join("tls.crt")).expect("symlink");

        let set = WatchSet::new(&[dir.path().join("tls.crt")]);
        let names: Vec<_> = set.paths()[0]
            .names
            .iter()
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"..data".to_string()), "{names:?}");
        assert!(names.contains(&"tls.crt".to_string()), "{names:?}");
        assert_eq!(set.concerned_by(OsStr::new("/elsewhere/..data")), &[0]);
        assert_eq!(set.concerned_by(OsStr::new("ca.crt")), &[] as &[usize]);
        assert!(set.directories().contains(dir.path()));
        assert!(set.directories().contains(&ts));
    }

    #[test]
    fn missing_paths_are_still_watched_by_basename() {
        let set = WatchSet::new(&[PathBuf::from("/nonexistent/dir/server.pem")]);
        assert_eq!(set.concerned_by(OsStr::new("server.pem")), &[0]);
        assert!(set.all_names().contains(OsStr::new("server.pem")));
    }

    #[test]
    fn relative_paths_are_anchored_at_the_working_directory() {
        let set = WatchSet::new(&[PathBuf::from("./a/b.crt")]);
        assert!(set.paths()[0].absolute.is_absolute());
        assert_eq!(set.paths()[0].given, PathBuf::from("./a/b.crt"));
    }

    /// A symlink re-pointed in one directory re-resolves that path only, and leaves the names and
    /// the index exactly as a full refresh would.
    #[test]
    fn refreshing_the_touched_paths_matches_a_full_refresh() {
        let point = |dir: &Path, version: &str| {
            std::fs::write(dir.join(version), version).expect("write");
            symlink(version, dir.join("tls.crt.tmp")).expect("symlink");
            std::fs::rename(dir.join("tls.crt.tmp"), dir.join("tls.crt")).expect("swap");
        };
        let (a, b) = (
            tempfile::tempdir().expect("a"),
            tempfile::tempdir().expect("b"),
        );
        point(a.path(), "cert-1.pem");
        point(b.path(), "cert-1.pem");
        let given = [a.path().join("tls.crt"), b.path().join("tls.crt")];
        let mut touched = WatchSet::new(&given);
        assert_eq!(touched.concerned_by(OsStr::new("cert-1.pem")), &[0, 1]);

        point(a.path(), "cert-2.pem");
        assert!(
            touched.refresh_paths(&[0]),
            "a new name must reach the kernel filter"
        );
        let mut full = WatchSet::new(&given);
        assert!(!full.refresh());
        assert_eq!(touched.all_names(), full.all_names());
        for name in full.all_names() {
            assert_eq!(
                touched.concerned_by(&name),
                full.concerned_by(&name),
                "{name:?}"
            );
        }
        assert_eq!(touched.concerned_by(OsStr::new("cert-2.pem")), &[0]);
        assert_eq!(touched.concerned_by(OsStr::new("cert-1.pem")), &[1]);

        point(b.path(), "cert-2.pem");
        assert!(
            touched.refresh_paths(&[1]),
            "cert-1.pem is no longer a trigger name"
        );
        assert!(!touched.all_names().contains(OsStr::new("cert-1.pem")));
        assert!(!touched.refresh_paths(&[0, 1]), "nothing changed since");
    }
}
