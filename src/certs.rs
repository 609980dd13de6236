//! `twophase certs`: a cluster's certificate authority and the certificates of its
//! coordinators, participants, clients and admins; also used by `demo`, `cluster` and
//! `chaos` to make a whole cluster's certificates in its data directory.
//!
//! A certificate names its holder in one URI subject alternative name,
//! `twophase://<cluster>/<role>/<name>`, which the transport compares with the handshake's
//! claims. Server certificates (coordinator, participant) also carry DNS `localhost` and IPs
//! `127.0.0.1` and `::1`: TLS server-name verification uses `localhost` whatever address is
//! dialled. A coordinator's certificate serves both sides (it accepts clients and connects
//! to participants), so it allows server and client authentication.
//!
//! Files in DIR: `ca.pem`, `ca.key`, `<role>-<name>.pem`, `<role>-<name>.key`. Invariants: an
//! existing CA is reused, never replaced (certificates made later must chain to the root the
//! running nodes trust), and a CA whose key does not match its certificate is refused; keys
//! are written with mode 0600; every file is written whole (temporary file, then rename), so
//! a crash never leaves half a key. Must not: overwrite `ca.pem`/`ca.key`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::OffsetDateTime;
use twophase_net::Role;

/// How long a CA made here is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a node's, client's or admin's certificate is valid (rotate: make new ones and
/// restart with them).
const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// Certificates are valid from this long before they are made, so a peer whose clock is a
/// little behind accepts them.
const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_secs(3600);

/// Longest cluster or holder name.
pub const NAME_BYTES_MAX: usize = 64;

#[derive(Args, Debug)]
pub struct CertsArgs {
    /// Directory to write the certificates and keys into (created if missing); a CA
    /// already in it (ca.pem, ca.key) is reused.
    #[arg(long)]
    dir: PathBuf,
    /// The cluster the certificates belong to (peers of another cluster are refused).
    #[arg(long)]
    cluster: String,
    /// A coordinator's name; repeat for each.
    #[arg(long = "coordinator", value_name = "NAME")]
    coordinators: Vec<String>,
    /// A participant's name; repeat for each.
    #[arg(long = "participant", value_name = "NAME")]
    participants: Vec<String>,
    /// A client's name (for `twophase tx` and `bench`); repeat for each.
    #[arg(long = "client", value_name = "NAME")]
    clients: Vec<String>,
    /// An admin's name (reads participants' state: `bench` audits, operators); repeat for each.
    #[arg(long = "admin", value_name = "NAME")]
    admins: Vec<String>,
}

/// Refuses a cluster or holder name outside `[A-Za-z0-9._-]{1,64}`: the name goes into a URI
/// and into file names.
pub fn validate_name(what: &str, name: &str) -> anyhow::Result<()> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > NAME_BYTES_MAX || !name.chars().all(allowed) {
        bail!("{what} name {name:?} must be 1 to {NAME_BYTES_MAX} characters of letters, digits, '.', '_' or '-'");
    }
    if name == "." || name == ".." {
        bail!("{what} name {name:?} is not a file name");
    }
    Ok(())
}

/// The identity a certificate names its holder by.
pub fn identity_uri(cluster: &str, role: Role, name: &str) -> String {
    format!("twophase://{cluster}/{}/{name}", role.name())
}

/// Where the certificate and key of `role`/`name` are in `dir`.
pub fn cert_paths(dir: &Path, role: Role, name: &str) -> (PathBuf, PathBuf) {
    let stem = format!("{}-{name}", role.name());
    (dir.join(format!("{stem}.pem")), dir.join(format!("{stem}.key")))
}

/// The CA's certificate in `dir`.
pub fn ca_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

/// A CA that signs certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
}

/// Whether [`Authority::open_or_create`] made a new CA.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CaSource {
    Created,
    Reused,
}

impl Authority {
    /// The CA in `dir` (`ca.pem` and `ca.key`), or a new one written there if neither exists.
    pub fn open_or_create(dir: &Path, cluster: &str) -> anyhow::Result<(Authority, CaSource)> {
        validate_name("cluster", cluster)?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let (cert_path, key_path) = (ca_path(dir), dir.join("ca.key"));
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => Ok((Authority::open(&cert_path, &key_path)?, CaSource::Reused)),
            (false, false) => Ok((Authority::create(&cert_path, &key_path, cluster)?, CaSource::Created)),
            (true, false) => bail!(
                "{} exists without its key {}: refusing to replace the CA",
                cert_path.display(),
                key_path.display()
            ),
            (false, true) => bail!(
                "{} exists without its certificate {}: refusing to replace the CA",
                key_path.display(),
                cert_path.display()
            ),
        }
    }

    fn create(cert_path: &Path, key_path: &Path, cluster: &str) -> anyhow::Result<Authority> {
        let key = KeyPair::generate().context("generating the CA key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, format!("twophase CA {cluster}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = validity(CA_VALIDITY);
        let cert = params.self_signed(&key).context("signing the CA certificate")?;
        // The key first: a certificate without its key would block every later run.
        write_whole(key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_whole(cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok(Authority { issuer: Issuer::new(params, key) })
    }

    fn open(cert_path: &Path, key_path: &Path) -> anyhow::Result<Authority> {
        let cert_pem =
            std::fs::read_to_string(cert_path).with_context(|| format!("reading {}", cert_path.display()))?;
        let key_pem = std::fs::read_to_string(key_path).with_context(|| format!("reading {}", key_path.display()))?;
        let key =
            KeyPair::from_pem(&key_pem).with_context(|| format!("{} is not a private key", key_path.display()))?;
        let der = pem_certificate_der(&cert_pem).with_context(|| format!("reading {}", cert_path.display()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&der)
            .map_err(|err| anyhow::anyhow!("{} is not a certificate: {err}", cert_path.display()))?;
        ensure!(
            parsed.public_key().subject_public_key.data.as_ref() == key.public_key_raw(),
            "{} does not belong to the certificate {}",
            key_path.display(),
            cert_path.display()
        );
        let issuer = Issuer::from_ca_cert_der(&der.into(), key)
            .with_context(|| format!("{} cannot sign certificates", cert_path.display()))?;
        Ok(Authority { issuer })
    }

    /// Makes (or replaces) the certificate and key of `role`/`name` of `cluster` in `dir`.
    pub fn issue(&self, dir: &Path, cluster: &str, role: Role, name: &str) -> anyhow::Result<(PathBuf, PathBuf)> {
        validate_name("cluster", cluster)?;
        validate_name(role.name(), name)?;
        let key = KeyPair::generate().context("generating a key")?;
        let uri = identity_uri(cluster, role, name);
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, uri.clone());
        params.subject_alt_names = vec![SanType::URI(uri.as_str().try_into().context("the identity URI")?)];
        let server = matches!(role, Role::Coordinator | Role::Participant);
        if server {
            params.subject_alt_names.push(SanType::DnsName("localhost".try_into().expect("an ASCII name")));
            params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
            params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        } else {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        }
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = validity(LEAF_VALIDITY);
        let cert = params.signed_by(&key, &self.issuer).with_context(|| format!("signing {uri}"))?;
        let (cert_path, key_path) = cert_paths(dir, role, name);
        write_whole(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_whole(&cert_path, cert.pem().as_bytes(), 0o644)?;
        Ok((cert_path, key_path))
    }
}

/// The DER of the first `CERTIFICATE` block of `pem`.
fn pem_certificate_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|err| anyhow::anyhow!("no PEM certificate: {err}"))?;
    ensure!(block.label == "CERTIFICATE", "the PEM block is a {}, not a CERTIFICATE", block.label);
    Ok(block.contents)
}

fn validity(length: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - CLOCK_SKEW_ALLOWANCE, now + length)
}

/// Writes `bytes` to a temporary file beside `path` with `mode`, syncs it and renames it over
/// `path`: a reader sees the old file or the new one, never a part.
fn write_whole(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    let file_name = path.file_name().context("a file name")?.to_string_lossy();
    let temp = path.with_file_name(format!(".{file_name}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .with_context(|| format!("creating {}", temp.display()))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", temp.display()))?;
    std::fs::rename(&temp, path).with_context(|| format!("renaming {} to {}", temp.display(), path.display()))
}

/// One holder's certificate files.
#[derive(Clone, Debug)]
pub struct Issued {
    pub role: Role,
    pub name: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The CA of `dir` (made if missing) and a certificate for every holder.
pub fn make_all(dir: &Path, cluster: &str, holders: &[(Role, String)]) -> anyhow::Result<(CaSource, Vec<Issued>)> {
    for (role, name) in holders {
        validate_name(role.name(), name)?;
    }
    let (authority, source) = Authority::open_or_create(dir, cluster)?;
    let mut issued = Vec::with_capacity(holders.len());
    for (role, name) in holders {
        let (cert, key) = authority.issue(dir, cluster, *role, name)?;
        issued.push(Issued { role: *role, name: name.clone(), cert, key });
    }
    Ok((source, issued))
}

/// `twophase certs`.
pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    let roles = [
        (Role::Coordinator, &args.coordinators),
        (Role::Participant, &args.participants),
        (Role::Client, &args.clients),
        (Role::Admin, &args.admins),
    ];
    let holders: Vec<(Role, String)> =
        roles.iter().flat_map(|(role, names)| names.iter().map(|name| (*role, name.clone()))).collect();
    let (source, issued) = make_all(&args.dir, &args.cluster, &holders)?;
    let ca = ca_path(&args.dir);
    match source {
        CaSource::Created => println!("created the CA {} (keep ca.key secret and offline if you can)", ca.display()),
        CaSource::Reused => println!("reused the CA {}", ca.display()),
    }
    for holder in &issued {
        println!(
            "{}  {}  {}",
            identity_uri(&args.cluster, holder.role, &holder.name),
            holder.cert.display(),
            holder.key.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    use rustls::server::WebPkiClientVerifier;
    use x509_parser::extensions::GeneralName;

    use super::*;

    fn der_of(path: &Path) -> CertificateDer<'static> {
        let pem = std::fs::read_to_string(path).unwrap();
        CertificateDer::from(pem_certificate_der(&pem).unwrap())
    }

    fn roots(dir: &Path) -> Arc<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der_of(&ca_path(dir))).unwrap();
        Arc::new(roots)
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    /// Verifies `cert` as a server (named `localhost`) against the CA in `ca_dir`.
    fn verify_as_server(ca_dir: &Path, cert: &Path) -> Result<(), rustls::Error> {
        let verifier = WebPkiServerVerifier::builder_with_provider(roots(ca_dir), provider()).build().unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        verifier.verify_server_cert(&der_of(cert), &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    /// Verifies `cert` as a client against the CA in `ca_dir`.
    fn verify_as_client(ca_dir: &Path, cert: &Path) -> Result<(), rustls::Error> {
        let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_dir), provider()).build().unwrap();
        verifier.verify_client_cert(&der_of(cert), &[], UnixTime::now()).map(|_| ())
    }

    fn subject_alt_names(cert: &Path) -> Vec<String> {
        let der = der_of(cert);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
        let san = parsed.subject_alternative_name().unwrap().expect("a SAN extension");
        san.value
            .general_names
            .iter()
            .map(|name| match name {
                GeneralName::URI(uri) => format!("URI:{uri}"),
                GeneralName::DNSName(dns) => format!("DNS:{dns}"),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => format!("IP:{}", std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap())),
                    _ => format!("IP:{}", std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap())),
                },
                other => format!("other:{other:?}"),
            })
            .collect()
    }

    fn holders() -> Vec<(Role, String)> {
        vec![
            (Role::Coordinator, "c1".into()),
            (Role::Participant, "p1".into()),
            (Role::Client, "alice".into()),
            (Role::Admin, "ops".into()),
        ]
    }

    #[test]
    fn a_generated_chain_verifies_for_the_roles_each_certificate_plays() {
        let dir = tempfile::tempdir().unwrap();
        let (source, issued) = make_all(dir.path(), "prod", &holders()).unwrap();
        assert_eq!(source, CaSource::Created);
        let path = |role: Role| issued.iter().find(|holder| holder.role == role).unwrap().cert.clone();
        // Servers are verified as `localhost`; a coordinator is also a client of participants.
        verify_as_server(dir.path(), &path(Role::Participant)).unwrap();
        verify_as_server(dir.path(), &path(Role::Coordinator)).unwrap();
        verify_as_client(dir.path(), &path(Role::Coordinator)).unwrap();
        verify_as_client(dir.path(), &path(Role::Client)).unwrap();
        verify_as_client(dir.path(), &path(Role::Admin)).unwrap();
        // A client certificate cannot serve.
        assert!(verify_as_server(dir.path(), &path(Role::Client)).is_err());
        // Another CA's certificates do not verify against this one.
        let other = tempfile::tempdir().unwrap();
        make_all(other.path(), "prod", &holders()).unwrap();
        let (foreign, _) = cert_paths(other.path(), Role::Client, "alice");
        assert!(verify_as_client(dir.path(), &foreign).is_err());
    }

    #[test]
    fn the_identity_is_one_uri_san_and_servers_are_named_localhost() {
        let dir = tempfile::tempdir().unwrap();
        make_all(dir.path(), "prod", &holders()).unwrap();
        let (participant, _) = cert_paths(dir.path(), Role::Participant, "p1");
        assert_eq!(
            subject_alt_names(&participant),
            ["URI:twophase://prod/participant/p1", "DNS:localhost", "IP:127.0.0.1", "IP:::1"]
        );
        let (client, _) = cert_paths(dir.path(), Role::Client, "alice");
        assert_eq!(subject_alt_names(&client), ["URI:twophase://prod/client/alice"]);
        let (admin, _) = cert_paths(dir.path(), Role::Admin, "ops");
        assert_eq!(subject_alt_names(&admin), ["URI:twophase://prod/admin/ops"]);
    }

    #[test]
    fn an_existing_ca_is_reused_and_new_certificates_chain_to_it() {
        let dir = tempfile::tempdir().unwrap();
        make_all(dir.path(), "prod", &[(Role::Participant, "p1".into())]).unwrap();
        let ca_before = std::fs::read(ca_path(dir.path())).unwrap();
        let (source, _) = make_all(dir.path(), "prod", &[(Role::Participant, "p2".into())]).unwrap();
        assert_eq!(source, CaSource::Reused);
        assert_eq!(std::fs::read(ca_path(dir.path())).unwrap(), ca_before, "the CA was replaced");
        for name in ["p1", "p2"] {
            verify_as_server(dir.path(), &cert_paths(dir.path(), Role::Participant, name).0).unwrap();
        }
    }

    #[test]
    fn keys_are_private_and_a_broken_ca_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        make_all(dir.path(), "prod", &[(Role::Client, "alice".into())]).unwrap();
        for key in [dir.path().join("ca.key"), cert_paths(dir.path(), Role::Client, "alice").1] {
            assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "{}", key.display());
        }
        // Another CA's key beside this certificate.
        let other = tempfile::tempdir().unwrap();
        make_all(other.path(), "prod", &[]).unwrap();
        std::fs::copy(other.path().join("ca.key"), dir.path().join("ca.key")).unwrap();
        let err = make_all(dir.path(), "prod", &[]).err().unwrap().to_string();
        assert!(err.contains("does not belong to the certificate"), "{err}");
        // Half a CA.
        std::fs::remove_file(dir.path().join("ca.key")).unwrap();
        let err = make_all(dir.path(), "prod", &[]).err().unwrap().to_string();
        assert!(err.contains("refusing to replace the CA"), "{err}");
    }

    #[test]
    fn names_outside_the_uri_alphabet_are_refused() {
        for bad in ["", "a/b", "a b", "..", &"x".repeat(65), "ü"] {
            assert!(validate_name("client", bad).is_err(), "{bad:?}");
        }
        for good in ["p1", "c.1", "shard_A-2", &"x".repeat(64)] {
            validate_name("client", good).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(make_all(dir.path(), "prod", &[(Role::Client, "../evil".into())]).is_err());
        assert!(!dir.path().join("ca.pem").exists(), "nothing is written for a bad request");
    }
}
