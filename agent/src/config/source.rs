//! Where a configuration comes from: a file, or a built-in profile extended by a file.

use std::path::PathBuf;

use super::{
    profile::{self, Profile},
    Config, ConfigError,
};

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub(crate) enum ConfigSource {
    /// A TOML file.
    File(PathBuf),
    /// A built-in profile for the host filesystem at `root`, optionally extended by a file.
    Profile {
        /// Which.
        profile: Profile,
        /// The host's filesystem root (`/`, or where a container mounts it).
        root: PathBuf,
        /// A config file overlaid on the profile.
        file: Option<PathBuf>,
    },
    /// TOML text already in memory: `certreload demo` hands over the configuration it generated
    /// rather than have root re-read a file something else could have replaced; `path` (where
    /// the text was also written) names it in messages.
    Text {
        /// Where the text was written, for messages.
        path: PathBuf,
        text: String,
    },
}

impl ConfigSource {
    /// The source `--profile`, `--config` and `--host-root` name: the profile (overlaid by the
    /// file, if given), else the file alone; `None` when neither is given.
    pub(crate) fn from_args(
        profile: Option<Profile>,
        file: Option<PathBuf>,
        root: PathBuf,
    ) -> Option<Self> {
        match (profile, file) {
            (Some(profile), file) => Some(ConfigSource::Profile {
                profile,
                root,
                file,
            }),
            (None, Some(file)) => Some(ConfigSource::File(file)),
            (None, None) => None,
        }
    }

    /// Loads it; a profile logs one info line per file missing on this node.
    pub(crate) fn load(&self) -> Result<Config, ConfigError> {
        match self {
            ConfigSource::File(path) => Config::load(path),
            ConfigSource::Text { path, text } => Config::parse(path, text),
            ConfigSource::Profile {
                profile,
                root,
                file,
            } => {
                let (config, skipped) = profile::load(*profile, root, file.as_deref())?;
                for line in skipped {
                    tracing::info!("{line}");
                }
                Ok(config)
            }
        }
    }
}
