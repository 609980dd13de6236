//! Identity on every connection: mutual TLS (rustls with the `ring` provider, TLS 1.3 only)
//! and the twophase identity a certificate carries.
//!
//! A certificate names its holder in exactly one URI Subject Alternative Name,
//! `twophase://<cluster>/<role>/<name>` ([`PeerIdentity::uri`]). Servers require a client
//! certificate signed by the cluster CA; clients verify the server against the same CA under
//! the server name [`SERVER_NAME`], whatever address they dialled.
//!
//! Why the server checks the client's chain after the TLS handshake rather than inside it:
//! a chain refused inside the handshake ends in a TLS alert, which a client can only report
//! as an opaque TLS failure; identity.md promises an `Error` frame (`Unauthenticated`)
//! instead. So the handshake verifier ([`DeferredClientVerifier`]) checks only that the client
//! holds the key of the certificate it presents (the TLS 1.3 `CertificateVerify` signature),
//! and the transport runs the full chain check ([`TlsMaterial::verify_client_chain`]) the
//! moment the handshake completes, before a single byte of application data is decoded.

use std::fmt;
use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, WebPkiClientVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig, SignatureScheme};

use crate::frame::{Hello, Role};

/// The TLS server name every twophase server certificate carries (as a DNS SAN) and every
/// client verifies, whatever address it dialled.
pub const SERVER_NAME: &str = "localhost";

/// The URI scheme of a certificate's identity SAN.
const URI_PREFIX: &str = "twophase://";

/// Longest cluster or node name in an identity.
const NAME_BYTES_MAX: usize = 64;

/// Who is on the other end of a connection.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PeerIdentity {
    pub cluster: String,
    pub role: Role,
    pub name: String,
    /// True when a certificate signed by the cluster CA proved it; false for the unchecked
    /// claim of a `Hello` on an insecure plaintext connection.
    pub authenticated: bool,
}

impl PeerIdentity {
    /// The unchecked claim of a plaintext connection's `Hello`.
    pub fn claimed(hello: &Hello) -> PeerIdentity {
        PeerIdentity {
            cluster: hello.cluster.clone(),
            role: hello.role,
            name: hello.node.clone(),
            authenticated: false,
        }
    }

    /// `twophase://<cluster>/<role>/<name>`: the URI SAN a certificate for this identity carries.
    pub fn uri(&self) -> String {
        format!("{URI_PREFIX}{}/{}/{}", self.cluster, self.role, self.name)
    }

    /// Parses an identity URI; `authenticated` is left false (a URI proves nothing).
    pub fn from_uri(uri: &str) -> Result<PeerIdentity, String> {
        let rest = uri.strip_prefix(URI_PREFIX).ok_or_else(|| format!("'{uri}' does not start with {URI_PREFIX}"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [cluster, role, name] = parts[..] else {
            return Err(format!("'{uri}' is not {URI_PREFIX}<cluster>/<role>/<name>"));
        };
        check_name("cluster", cluster)?;
        check_name("name", name)?;
        let role = Role::from_name(role).ok_or_else(|| {
            format!("'{uri}' names role '{role}'; expected coordinator, participant, client or admin")
        })?;
        Ok(PeerIdentity { cluster: cluster.to_string(), role, name: name.to_string(), authenticated: false })
    }

    /// The identity in a certificate: its one `twophase://` URI SAN.
    pub fn from_certificate(der: &[u8]) -> Result<PeerIdentity, String> {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|err| format!("unreadable certificate: {err}"))?;
        let san = cert
            .subject_alternative_name()
            .map_err(|err| format!("unreadable subject alternative names: {err}"))?
            .ok_or_else(|| "the certificate has no subject alternative name".to_string())?;
        let uris: Vec<&str> = san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) if uri.starts_with(URI_PREFIX) => Some(*uri),
                _ => None,
            })
            .collect();
        match uris[..] {
            [uri] => PeerIdentity::from_uri(uri),
            [] => Err(format!("the certificate carries no {URI_PREFIX} identity")),
            _ => Err(format!("the certificate carries {} {URI_PREFIX} identities; exactly one is allowed", uris.len())),
        }
    }

    /// Whether a `Hello` claims exactly this identity.
    pub fn matches(&self, hello: &Hello) -> bool {
        self.cluster == hello.cluster && self.role == hello.role && self.name == hello.node
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} '{}' of cluster '{}'", self.role, self.name, self.cluster)?;
        if !self.authenticated {
            f.write_str(" (unauthenticated)")?;
        }
        Ok(())
    }
}

fn check_name(what: &str, name: &str) -> Result<(), String> {
    let valid_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > NAME_BYTES_MAX || !name.chars().all(valid_char) {
        return Err(format!("{what} '{name}' is not 1 to {NAME_BYTES_MAX} of [A-Za-z0-9._-]"));
    }
    Ok(())
}

/// What a process needs for mutual TLS: the cluster CA, its own certificate chain and key,
/// built once into rustls configurations (so a bad file is an error at start, not at the
/// first connection).
pub struct TlsMaterial {
    identity: PeerIdentity,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// The full client chain check the transport runs after the handshake.
    client_chain: Arc<dyn ClientCertVerifier>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial").field("identity", &self.identity).finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Reads the CA certificate(s), this process's certificate chain and its private key
    /// from PEM files.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> io::Result<TlsMaterial> {
        let read = |path: &Path, what: &str| {
            std::fs::read(path)
                .map_err(|err| io::Error::new(err.kind(), format!("reading the {what} {}: {err}", path.display())))
        };
        TlsMaterial::from_pem(&read(ca, "CA certificate")?, &read(cert, "certificate")?, &read(key, "private key")?)
            .map_err(|err| {
                io::Error::new(
                    err.kind(),
                    format!("TLS material from {}, {}, {}: {err}", ca.display(), cert.display(), key.display()),
                )
            })
    }

    /// Builds the material from PEM bytes: `ca` one or more CA certificates, `cert` this
    /// process's certificate (then any intermediates), `key` its private key.
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> io::Result<TlsMaterial> {
        let invalid = |message: String| io::Error::new(io::ErrorKind::InvalidData, message);
        let ca_certs = pem_certificates(ca, "CA certificate")?;
        let chain = pem_certificates(cert, "certificate")?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|err| invalid(format!("no usable private key: {err}")))?;
        let mut roots = RootCertStore::empty();
        for ca_cert in ca_certs {
            roots.add(ca_cert).map_err(|err| invalid(format!("unusable CA certificate: {err}")))?;
        }
        let roots = Arc::new(roots);
        let identity = PeerIdentity {
            authenticated: true,
            ..PeerIdentity::from_certificate(&chain[0]).map_err(|err| invalid(format!("own certificate: {err}")))?
        };
        let provider = Arc::new(CryptoProvider {
            cipher_suites: cipher_suites_fastest_first(),
            ..rustls::crypto::ring::default_provider()
        });
        let tls_error = |err: rustls::Error| invalid(err.to_string());

        let client_chain = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|err| invalid(format!("client verifier: {err}")))?;
        let deferred = Arc::new(DeferredClientVerifier { chain: client_chain.clone(), provider: provider.clone() });
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_client_cert_verifier(deferred)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|err| invalid(format!("certificate and key do not go together: {err}")))?;
        // Connections are long-lived and full handshakes cheap enough: no resumption state
        // (which would also carry a client chain past the post-handshake check).
        server.session_storage = Arc::new(NoServerSessionStorage {});
        server.send_tls13_tickets = 0;

        let mut client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_error)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(|err| invalid(format!("certificate and key do not go together: {err}")))?;
        client.resumption = rustls::client::Resumption::disabled();

        Ok(TlsMaterial { identity, server: Arc::new(server), client: Arc::new(client), client_chain })
    }

    /// The identity this process's own certificate names (`authenticated` is true).
    pub fn identity(&self) -> &PeerIdentity {
        &self.identity
    }

    /// A server-side TLS connection for an accepted socket.
    pub(crate) fn accept(&self) -> io::Result<rustls::ServerConnection> {
        rustls::ServerConnection::new(self.server.clone()).map_err(io::Error::other)
    }

    /// A client-side TLS connection to a twophase server (verified as [`SERVER_NAME`]).
    pub(crate) fn connect(&self) -> io::Result<rustls::ClientConnection> {
        let name = ServerName::try_from(SERVER_NAME).expect("a valid DNS name");
        rustls::ClientConnection::new(self.client.clone(), name).map_err(io::Error::other)
    }

    /// The full check of a client's certificate chain (signed by the cluster CA, valid now,
    /// usable for client authentication), then the identity it names. `None`: the client
    /// presented no certificate.
    pub(crate) fn verify_client_chain(&self, chain: Option<&[CertificateDer<'_>]>) -> Result<PeerIdentity, String> {
        let Some((end_entity, intermediates)) = chain.and_then(|chain| chain.split_first()) else {
            return Err("no client certificate: this server requires one signed by the cluster's CA".into());
        };
        self.client_chain
            .verify_client_cert(end_entity, intermediates, UnixTime::now())
            .map_err(|err| format!("client certificate refused: {err}"))?;
        authenticated_identity(end_entity)
    }
}

/// ring's TLS 1.3 suites, the fastest on this CPU first (both sides build the same list, and
/// a rustls server follows the client's order): AES-128-GCM where the CPU has AES and
/// carry-less multiply instructions (ring then runs it in hardware, well ahead of the
/// others; 10 AES rounds against AES-256's 14), ChaCha20-Poly1305 where it has not (fast in
/// software, unlike AES). Every suite stays offered, so peers with other preferences agree.
fn cipher_suites_fastest_first() -> Vec<rustls::SupportedCipherSuite> {
    use rustls::crypto::ring::cipher_suite::{
        TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256,
    };
    if aes_in_hardware() {
        vec![TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384, TLS13_CHACHA20_POLY1305_SHA256]
    } else {
        vec![TLS13_CHACHA20_POLY1305_SHA256, TLS13_AES_128_GCM_SHA256, TLS13_AES_256_GCM_SHA384]
    }
}

/// Whether this CPU runs AES-GCM in hardware (AES rounds and the carry-less multiply GHASH
/// needs).
fn aes_in_hardware() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
    }
    #[cfg(target_arch = "aarch64")]
    {
        std::arch::is_aarch64_feature_detected!("aes") && std::arch::is_aarch64_feature_detected!("pmull")
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        false
    }
}

/// The identity in a certificate whose chain was verified.
pub(crate) fn authenticated_identity(end_entity: &CertificateDer<'_>) -> Result<PeerIdentity, String> {
    let identity = PeerIdentity::from_certificate(end_entity)?;
    Ok(PeerIdentity { authenticated: true, ..identity })
}

fn pem_certificates(pem: &[u8], what: &str) -> io::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, format!("unreadable {what} PEM: {err}")))?;
    if certs.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("no {what} in the PEM data")));
    }
    Ok(certs)
}

/// How a connection is secured.
#[derive(Clone, Debug)]
pub enum Security {
    /// Mutual TLS with this material.
    Tls(Arc<TlsMaterial>),
    /// No encryption and no authentication: identities are whatever `Hello` claims. Only
    /// for measurements and local experiments; the CLI says so loudly.
    InsecurePlaintext,
}

impl Security {
    pub fn is_tls(&self) -> bool {
        matches!(self, Security::Tls(_))
    }
}

/// The in-handshake half of the client check (see the module doc): requests a certificate
/// (optional, so a client without one still completes the handshake and can be told why it
/// is refused), verifies that the client holds its key, and leaves the chain to
/// [`TlsMaterial::verify_client_chain`], which the transport runs before reading any data.
#[derive(Debug)]
struct DeferredClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for DeferredClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Deferred: the transport verifies the chain once the handshake completes.
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configurations allow TLS 1.3 only.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_uris_round_trip_and_bad_ones_are_refused() {
        let identity = PeerIdentity::from_uri("twophase://local/participant/p-1.a_b").unwrap();
        assert_eq!(
            (identity.cluster.as_str(), identity.role, identity.name.as_str()),
            ("local", Role::Participant, "p-1.a_b")
        );
        assert!(!identity.authenticated);
        assert_eq!(identity.uri(), "twophase://local/participant/p-1.a_b");
        for (uri, why) in [
            ("https://local/client/a", "does not start with"),
            ("twophase://local/client", "is not twophase://"),
            ("twophase://local/client/a/b", "is not twophase://"),
            ("twophase://local/root/a", "names role 'root'"),
            ("twophase:///client/a", "cluster ''"),
            ("twophase://local/client/a b", "name 'a b'"),
        ] {
            let err = PeerIdentity::from_uri(uri).unwrap_err();
            assert!(err.contains(why), "{uri}: {err}");
        }
        let long = format!("twophase://{}/client/a", "c".repeat(65));
        assert!(PeerIdentity::from_uri(&long).unwrap_err().contains("1 to 64"));
    }

    /// PEM of a CA and of a certificate and key it signed for `twophase://local/<role>/<name>`.
    fn ca_and_certificate(role: Role, name: &str) -> (String, String, String) {
        use rcgen::string::Ia5String;
        use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()]).unwrap();
        let uri = Ia5String::try_from(format!("twophase://local/{role}/{name}")).unwrap();
        params.subject_alt_names.push(SanType::URI(uri));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        (ca_pem, cert.pem(), key.serialize_pem())
    }

    /// Moves every record `from` wants to send into `to`.
    fn pass_records(from: &mut rustls::Connection, to: &mut rustls::Connection) {
        let mut wire = Vec::new();
        while from.wants_write() {
            from.write_tls(&mut wire).unwrap();
        }
        let mut bytes = &wire[..];
        while !bytes.is_empty() {
            to.read_tls(&mut bytes).unwrap();
            to.process_new_packets().unwrap();
        }
    }

    #[test]
    fn sessions_use_the_fastest_suite_for_this_cpu_and_keep_offering_the_others() {
        let suites = cipher_suites_fastest_first();
        let mut names: Vec<_> = suites.iter().map(|suite| suite.suite()).collect();
        let fastest = names[0];
        let expected = if aes_in_hardware() {
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
        } else {
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        };
        assert_eq!(fastest, expected);
        let mut ring_tls13: Vec<_> = rustls::crypto::ring::default_provider()
            .cipher_suites
            .iter()
            .filter(|suite| suite.version() == &rustls::version::TLS13)
            .map(|suite| suite.suite())
            .collect();
        names.sort_by_key(|suite| u16::from(*suite));
        ring_tls13.sort_by_key(|suite| u16::from(*suite));
        assert_eq!(names, ring_tls13, "every TLS 1.3 suite of ring stays offered");

        // A handshake in memory between two processes' material settles on it.
        let (ca, cert, key) = ca_and_certificate(Role::Coordinator, "c1");
        let material = TlsMaterial::from_pem(ca.as_bytes(), cert.as_bytes(), key.as_bytes()).unwrap();
        let mut client: rustls::Connection = material.connect().unwrap().into();
        let mut server: rustls::Connection = material.accept().unwrap().into();
        for _ in 0..10 {
            pass_records(&mut client, &mut server);
            pass_records(&mut server, &mut client);
        }
        assert!(!client.is_handshaking() && !server.is_handshaking());
        for side in [&client, &server] {
            assert_eq!(side.negotiated_cipher_suite().map(|suite| suite.suite()), Some(fastest));
            assert_eq!(side.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        }
    }
}
