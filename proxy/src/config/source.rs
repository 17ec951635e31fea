//! Reading the inputs: a configuration file, or the mounted ConfigMap volume and the pod's
//! labels file, retried while kubelet swaps `..data` so one read never mixes two versions. The
//! document is then picked and decoded by [`super::document`].

use std::io::Read;
use std::path::{Path, PathBuf};

use super::MAX_CONFIG_BYTES;
use super::document::{Document, Keys, hash_of, select_document};
use crate::{Error, Result};
use rustmesh_xds::scope::ProxyRole;

/// Where to read the configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigSource {
    /// One JSON file.
    File(PathBuf),
    /// A mounted ConfigMap, and the pod's labels file.
    Dir {
        /// The mount.
        dir: PathBuf,
        /// Downward-API labels (`key="value"` lines); a missing file means no labels.
        pod_labels: PathBuf,
        /// What this proxy is: a router reads only gateway scopes, a sidecar only the others.
        role: ProxyRole,
    },
}

impl ConfigSource {
    /// Reads the current document.
    pub fn read(&self) -> Result<Document> {
        match self {
            ConfigSource::File(path) => {
                let raw = read_file(path)?;
                let hash = hash_of(&[&raw]);
                Ok(Document {
                    raw,
                    gzip: false,
                    origin: path.display().to_string(),
                    hash,
                    split: None,
                })
            }
            ConfigSource::Dir {
                dir,
                pod_labels,
                role,
            } => {
                // Retry while kubelet swaps `..data` under us.
                let data_link = dir.join("..data");
                let mut last = None;
                for _ in 0..5 {
                    let before = std::fs::read_link(&data_link).ok();
                    let result = read_dir(dir, pod_labels, *role);
                    let after = std::fs::read_link(&data_link).ok();
                    if before == after {
                        return result;
                    }
                    last = Some(result);
                }
                last.unwrap_or_else(|| read_dir(dir, pod_labels, *role))
            }
        }
    }
}

pub(crate) fn read_file(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|source| Error::ConfigRead {
        path: path.to_path_buf(),
        source,
    })?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| Error::ConfigRead {
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Error::ConfigRead {
            path: path.to_path_buf(),
            source: std::io::Error::other(format!("larger than {MAX_CONFIG_BYTES} bytes")),
        });
    }
    Ok(bytes)
}

/// The mounted ConfigMap volume: one file per key.
struct MountedKeys<'a>(&'a Path);

impl Keys for MountedKeys<'_> {
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let path = self.0.join(key);
        match read_file(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(Error::ConfigRead { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn origin(&self, key: &str) -> String {
        self.0.join(key).display().to_string()
    }
}

/// Reads the pod's labels file (downward API); a missing file means no labels.
pub(crate) fn read_labels(labels_path: &Path) -> Result<Vec<u8>> {
    match std::fs::read(labels_path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(Error::ConfigRead {
            path: labels_path.to_path_buf(),
            source,
        }),
    }
}

fn read_dir(dir: &Path, labels_path: &Path, role: ProxyRole) -> Result<Document> {
    let labels = read_labels(labels_path)?;
    select_document(&MountedKeys(dir), &labels, labels_path, role)
}
