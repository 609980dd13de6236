//! The client configuration file (`--config FILE` of `twophase tx` and `twophase bench`),
//! and the one `twophase cluster` writes as `DATA_DIR/client.toml`: where the coordinator
//! is, the cluster's name, and the TLS files of a client certificate (and of an admin
//! certificate, which `bench` needs to read the participants' state for its audit).
//!
//! Keys are the flags' long names with `_` for `-`; a flag given on the command line wins.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::security::{SecurityKeys, TlsFiles};

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// One coordinator's address, or every node of a group as a comma list.
    pub coordinator: Option<String>,
    pub cluster: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_plaintext: Option<bool>,
    /// The admin certificate and key (signed by the same CA) for `bench`'s state reads.
    pub admin_cert: Option<PathBuf>,
    pub admin_key: Option<PathBuf>,
}

impl ClientFile {
    /// The file at `path`, or an empty one when there is none.
    pub fn read(path: Option<&Path>) -> anyhow::Result<ClientFile> {
        let Some(path) = path else { return Ok(ClientFile::default()) };
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("{} is not a valid client config file", path.display()))
    }

    /// A file that reaches `coordinators` (one, or every member of a group: a client finds
    /// the leader among them) of `cluster` as `client`, reading state as `admin`.
    pub fn for_cluster(coordinators: &[SocketAddr], cluster: &str, client: &TlsFiles, admin: &TlsFiles) -> ClientFile {
        assert!(!coordinators.is_empty(), "a client file names at least one coordinator");
        let list: Vec<String> = coordinators.iter().map(SocketAddr::to_string).collect();
        let mut file = ClientFile {
            coordinator: Some(list.join(",")),
            cluster: Some(cluster.to_string()),
            ..ClientFile::default()
        };
        match (client, admin) {
            (TlsFiles::Tls { ca, cert, key }, admin) => {
                (file.ca, file.cert, file.key) = (Some(ca.clone()), Some(cert.clone()), Some(key.clone()));
                if let TlsFiles::Tls { cert, key, .. } = admin {
                    (file.admin_cert, file.admin_key) = (Some(cert.clone()), Some(key.clone()));
                }
            }
            (TlsFiles::InsecurePlaintext, _) => file.insecure_plaintext = Some(true),
        }
        file
    }

    /// Writes the file (replacing one there).
    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        let text = toml::to_string(self).context("encoding the client config")?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// The keys that choose the client connection's TLS files.
    pub fn security(&self) -> SecurityKeys {
        SecurityKeys {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            insecure_plaintext: self.insecure_plaintext,
        }
    }

    /// The keys that choose the admin connection's TLS files (same CA).
    pub fn admin_security(&self) -> SecurityKeys {
        SecurityKeys {
            ca: self.ca.clone(),
            cert: self.admin_cert.clone(),
            key: self.admin_key.clone(),
            insecure_plaintext: self.insecure_plaintext,
        }
    }
}

/// The coordinator nodes `--coordinator` flags (repeated, each `HOST:PORT` or a comma
/// list of them) or a config file's `coordinator` key name: every address each resolves
/// to, in order, without repeats. A client connects to whichever of them leads (one
/// reachable member of a group is enough). Empty entries and unresolvable names are errors.
pub fn resolve_coordinators<S: AsRef<str>>(values: &[S]) -> anyhow::Result<Vec<SocketAddr>> {
    let mut addrs = Vec::new();
    for entry in values.iter().flat_map(|value| value.as_ref().split(',')) {
        let entry = entry.trim();
        anyhow::ensure!(!entry.is_empty(), "an empty coordinator address (in {:?})", joined(values));
        let resolved: Vec<SocketAddr> =
            entry.to_socket_addrs().with_context(|| format!("resolving the coordinator address {entry:?}"))?.collect();
        anyhow::ensure!(!resolved.is_empty(), "the coordinator address {entry:?} resolves to nothing");
        for addr in resolved {
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    anyhow::ensure!(!addrs.is_empty(), "no coordinator address given");
    Ok(addrs)
}

fn joined<S: AsRef<str>>(values: &[S]) -> String {
    values.iter().map(|value| value.as_ref()).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coordinators_come_from_repeated_flags_and_comma_lists() {
        let addrs =
            resolve_coordinators(&["127.0.0.1:7000", "127.0.0.1:7001,127.0.0.1:7002", "127.0.0.1:7000"]).unwrap();
        let expected: Vec<SocketAddr> =
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"].iter().map(|a| a.parse().unwrap()).collect();
        assert_eq!(addrs, expected);
        assert_eq!(resolve_coordinators(&[" 127.0.0.1:7003 "]).unwrap(), vec!["127.0.0.1:7003".parse().unwrap()]);
    }

    #[test]
    fn empty_and_bad_coordinator_addresses_are_refused() {
        let err = format!("{:#}", resolve_coordinators(&["127.0.0.1:7000,"]).unwrap_err());
        assert!(err.contains("an empty coordinator address"), "{err}");
        let err = format!("{:#}", resolve_coordinators(&["127.0.0.1"]).unwrap_err());
        assert!(err.contains("resolving the coordinator address \"127.0.0.1\""), "{err}");
        let none: [&str; 0] = [];
        assert!(format!("{:#}", resolve_coordinators(&none).unwrap_err()).contains("no coordinator address given"));
    }
    use crate::security::SecurityArgs;

    #[test]
    fn a_written_file_reads_back_as_the_same_choice() {
        let dir = tempfile::tempdir().unwrap();
        let client =
            TlsFiles::Tls { ca: "/c/ca.pem".into(), cert: "/c/client.pem".into(), key: "/c/client.key".into() };
        let admin = TlsFiles::Tls { ca: "/c/ca.pem".into(), cert: "/c/admin.pem".into(), key: "/c/admin.key".into() };
        let written = ClientFile::for_cluster(&["127.0.0.1:7000".parse().unwrap()], "prod", &client, &admin);
        let path = dir.path().join("client.toml");
        written.write(&path).unwrap();
        let read = ClientFile::read(Some(&path)).unwrap();
        assert_eq!(read, written);
        assert_eq!(read.coordinator.as_deref(), Some("127.0.0.1:7000"));
        assert_eq!(SecurityArgs::default().resolve(read.security()).unwrap(), client);
        assert_eq!(SecurityArgs::default().resolve(read.admin_security()).unwrap(), admin);

        let plain = ClientFile::for_cluster(
            &["127.0.0.1:7000".parse().unwrap()],
            "local",
            &TlsFiles::InsecurePlaintext,
            &TlsFiles::InsecurePlaintext,
        );
        plain.write(&path).unwrap();
        let read = ClientFile::read(Some(&path)).unwrap();
        assert_eq!(SecurityArgs::default().resolve(read.admin_security()).unwrap(), TlsFiles::InsecurePlaintext);
    }

    #[test]
    fn a_groups_file_lists_every_member_and_reads_back_as_their_addresses() {
        let members: Vec<SocketAddr> =
            ["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"].iter().map(|a| a.parse().unwrap()).collect();
        let file = ClientFile::for_cluster(&members, "g", &TlsFiles::InsecurePlaintext, &TlsFiles::InsecurePlaintext);
        assert_eq!(file.coordinator.as_deref(), Some("127.0.0.1:7000,127.0.0.1:7001,127.0.0.1:7002"));
        assert_eq!(resolve_coordinators(&[file.coordinator.unwrap()]).unwrap(), members);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client.toml");
        std::fs::write(&path, "coordinator = \"127.0.0.1:7000\"\ncertificate = \"x\"\n").unwrap();
        let err = format!("{:#}", ClientFile::read(Some(&path)).unwrap_err());
        assert!(err.contains("not a valid client config file") && err.contains("certificate"), "{err}");
    }
}
