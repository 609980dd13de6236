//! How a command secures its connections: the cluster's CA, its own certificate and key
//! (`--ca FILE --cert FILE --key FILE`, or the same keys in its `--config` file), or
//! `--insecure-plaintext`. Neither is an error at start: no command falls back to
//! plaintext by itself.
//!
//! Owns the flags, their config-file keys, the choice between them and the arguments that
//! pass the choice on to child processes. Must not: read certificates itself (the net
//! crate's `TlsMaterial` does).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use serde::Deserialize;
use twophase_net::{Security, TlsMaterial};

/// The flags every server and client command takes.
#[derive(Args, Clone, Debug, Default)]
pub struct SecurityArgs {
    /// The cluster CA's certificate (PEM): every peer must present a certificate it signed.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// This process's certificate (PEM), signed by the CA; `twophase certs` makes them.
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Run without TLS: nothing is encrypted and every peer is believed whatever it claims
    /// to be. Only on a machine where every process is trusted (tests).
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// The same keys in a `--config` file (each command's file struct holds these fields, as
/// `deny_unknown_fields` cannot be combined with `#[serde(flatten)]`).
#[derive(Deserialize, Clone, Debug, Default)]
pub struct SecurityKeys {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub insecure_plaintext: Option<bool>,
}

/// What a command's connections use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsFiles {
    /// Mutual TLS with these PEM files.
    Tls { ca: PathBuf, cert: PathBuf, key: PathBuf },
    /// No TLS at all.
    InsecurePlaintext,
}

impl SecurityArgs {
    /// The flags, each falling back to the file's key of the same name.
    pub fn resolve(self, file: SecurityKeys) -> anyhow::Result<TlsFiles> {
        let plaintext = self.insecure_plaintext || file.insecure_plaintext.unwrap_or(false);
        let ca = self.ca.or(file.ca);
        let cert = self.cert.or(file.cert);
        let key = self.key.or(file.key);
        match (plaintext, ca, cert, key) {
            (true, None, None, None) => Ok(TlsFiles::InsecurePlaintext),
            (true, ..) => bail!("--insecure-plaintext cannot be combined with --ca, --cert or --key"),
            (false, Some(ca), Some(cert), Some(key)) => Ok(TlsFiles::Tls { ca, cert, key }),
            (false, None, None, None) => bail!(
                "no TLS certificate given: pass --ca FILE --cert FILE --key FILE (or put ca, cert and key \
                 in --config; `twophase certs` makes them), or --insecure-plaintext to run without TLS"
            ),
            (false, ca, cert, key) => {
                let missing: Vec<&str> = [("--ca", ca.is_none()), ("--cert", cert.is_none()), ("--key", key.is_none())]
                    .into_iter()
                    .filter_map(|(flag, absent)| absent.then_some(flag))
                    .collect();
                bail!("--ca, --cert and --key go together; missing {}", missing.join(" and "))
            }
        }
    }
}

impl TlsFiles {
    /// The files `dir` holds for one certificate made by `twophase certs`.
    pub fn in_dir(dir: &Path, cert: PathBuf, key: PathBuf) -> TlsFiles {
        TlsFiles::Tls { ca: crate::certs::ca_path(dir), cert, key }
    }

    /// Reads the files for the transport or the client library (a bad file is an error
    /// here, at start). Plaintext is logged loudly: `what` says who runs without TLS.
    pub fn load(&self, what: &str) -> anyhow::Result<Security> {
        match self {
            TlsFiles::Tls { ca, cert, key } => {
                let material = TlsMaterial::load(ca, cert, key).with_context(|| {
                    format!(
                        "loading the TLS files --ca {} --cert {} --key {}",
                        ca.display(),
                        cert.display(),
                        key.display()
                    )
                })?;
                Ok(Security::Tls(Arc::new(material)))
            }
            TlsFiles::InsecurePlaintext => {
                tracing::warn!(
                    "INSECURE PLAINTEXT: {what} runs without TLS (--insecure-plaintext): its connections are neither \
                     encrypted nor authenticated, and any process that reaches it may claim any identity"
                );
                Ok(Security::InsecurePlaintext)
            }
        }
    }

    /// The flags that give a child process this choice.
    pub fn to_args(&self) -> Vec<String> {
        match self {
            TlsFiles::InsecurePlaintext => vec!["--insecure-plaintext".into()],
            TlsFiles::Tls { ca, cert, key } => [("--ca", ca), ("--cert", cert), ("--key", key)]
                .into_iter()
                .flat_map(|(flag, path)| [flag.to_string(), path.display().to_string()])
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ca: Option<&str>, cert: Option<&str>, key: Option<&str>, plaintext: bool) -> SecurityArgs {
        SecurityArgs {
            ca: ca.map(Into::into),
            cert: cert.map(Into::into),
            key: key.map(Into::into),
            insecure_plaintext: plaintext,
        }
    }

    #[test]
    fn neither_tls_files_nor_plaintext_is_an_error_that_says_what_to_do() {
        let err = args(None, None, None, false).resolve(SecurityKeys::default()).unwrap_err().to_string();
        assert!(err.contains("--ca FILE --cert FILE --key FILE") && err.contains("--insecure-plaintext"), "{err}");
    }

    #[test]
    fn flags_win_over_the_file_key_by_key() {
        let file = SecurityKeys {
            ca: Some("/f/ca.pem".into()),
            cert: Some("/f/c.pem".into()),
            key: Some("/f/c.key".into()),
            insecure_plaintext: None,
        };
        let files = args(None, Some("/a/c.pem"), None, false).resolve(file).unwrap();
        assert_eq!(files, TlsFiles::Tls { ca: "/f/ca.pem".into(), cert: "/a/c.pem".into(), key: "/f/c.key".into() });
        assert_eq!(files.to_args(), ["--ca", "/f/ca.pem", "--cert", "/a/c.pem", "--key", "/f/c.key"]);
    }

    #[test]
    fn partial_or_contradictory_choices_are_refused() {
        let err = args(Some("ca"), None, None, false).resolve(SecurityKeys::default()).unwrap_err().to_string();
        assert!(err.contains("missing --cert and --key"), "{err}");
        let err = args(Some("ca"), Some("c"), Some("k"), true).resolve(SecurityKeys::default()).unwrap_err();
        assert!(err.to_string().contains("cannot be combined"), "{err}");
        let file = SecurityKeys { insecure_plaintext: Some(true), ..SecurityKeys::default() };
        let plain = args(None, None, None, false).resolve(file).unwrap();
        assert_eq!(plain, TlsFiles::InsecurePlaintext);
        assert_eq!(plain.to_args(), ["--insecure-plaintext"]);
    }
}
