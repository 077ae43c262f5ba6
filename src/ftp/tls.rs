//! FTPS trust: which server certificates are accepted, the fingerprint a
//! refusal shows, and the warnings about settings that leave a run open.
//!
//! A certificate is accepted when one of these holds, in this order:
//! * `tls_insecure_skip_verify: true`: anything (the user opted out; each
//!   run warns);
//! * `tls_fingerprint`: the server's own certificate has exactly this
//!   SHA-256 fingerprint (chain, names and dates are not looked at: the pin
//!   is the trust);
//! * the server's certificate is itself one of the certificates in
//!   `tls_ca_file` (byte for byte), is valid now and names the host. This is
//!   how curl takes a self-signed certificate made with `openssl req -x509`
//!   or Debian's `proftpd-gencert`, which carry `CA:TRUE`: webpki refuses
//!   those as a server's own certificate (`CaUsedAsEndEntity`);
//! * a chain to the system's CAs or to a CA in `tls_ca_file` (webpki).
//!
//! When none holds, the verifier keeps the presented certificate's
//! fingerprint, so the error can show it in the form `tls_fingerprint` takes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// A certificate's SHA-256 fingerprint, written `sha256:AB:CD:…` (as
/// `openssl x509 -fingerprint -sha256` shows it, with a prefix).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER-encoded certificate.
    pub fn of(der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(der).into())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sha256:")?;
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{b:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Fingerprint {
    type Err = String;

    /// Takes `sha256:` followed by 64 hex digits, with or without colons (or
    /// spaces) between the bytes, in any case; the prefix may be left out.
    fn from_str(s: &str) -> Result<Fingerprint, String> {
        let s = s.trim();
        let hex = match s.split_once(':') {
            Some((algo, rest)) if algo.eq_ignore_ascii_case("sha256") => rest,
            Some((algo, _)) if algo.len() > 2 && !algo.chars().all(|c| c.is_ascii_hexdigit()) => {
                return Err(format!(
                    "only SHA-256 fingerprints are supported (`sha256:AB:CD:…`), not {algo}"
                ));
            }
            _ => s,
        };
        let digits: String = hex.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
        let wrong = || {
            "expected `sha256:` and 32 bytes in hex (64 digits, colons optional), as \
             `openssl x509 -noout -fingerprint -sha256` prints them"
                .to_owned()
        };
        if digits.len() != 64 || !digits.is_ascii() {
            return Err(wrong());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&digits[2 * i..2 * i + 2], 16).map_err(|_| wrong())?;
        }
        Ok(Fingerprint(out))
    }
}

/// What the user said to trust (the `remote.tls_*` keys).
#[derive(Debug, Clone, Default)]
pub struct TrustSettings {
    /// PEM file of CA certificates, or of the server's own certificate.
    pub ca_file: Option<PathBuf>,
    /// The server certificate's pinned fingerprint.
    pub fingerprint: Option<Fingerprint>,
    /// Accept any certificate.
    pub insecure_skip_verify: bool,
}

/// Why the trust settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("cannot read {}: {message}", .file.display())]
    CaFile { file: PathBuf, message: String },
    #[error("{} holds no certificate (PEM `BEGIN CERTIFICATE` blocks)", .0.display())]
    NoCertificate(PathBuf),
    #[error("{0}")]
    Setup(String),
}

/// The loaded trust of a run, shared by its connections.
#[derive(Debug)]
pub struct Trust {
    settings: TrustSettings,
    /// Chain verification against the system's CAs and the file's.
    webpki: Option<Arc<WebPkiServerVerifier>>,
    /// The file's certificates, matched as the server's own.
    own: Vec<CertificateDer<'static>>,
    provider: Arc<CryptoProvider>,
}

impl Trust {
    /// Reads the system's CAs and `tls_ca_file` (blocking file reads).
    pub fn load(settings: TrustSettings) -> Result<Trust, TrustError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(cert);
        }
        let own = match &settings.ca_file {
            Some(file) => read_certs(file)?,
            None => Vec::new(),
        };
        for cert in &own {
            // A certificate webpki cannot take as an anchor may still be the
            // server's own: it is matched as such.
            let _ = roots.add(cert.clone());
        }
        Self::with_roots(settings, roots, own)
    }

    fn with_roots(
        settings: TrustSettings,
        roots: rustls::RootCertStore,
        own: Vec<CertificateDer<'static>>,
    ) -> Result<Trust, TrustError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = if roots.is_empty() {
            None
        } else {
            Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                    .build()
                    .map_err(|e| TrustError::Setup(e.to_string()))?,
            )
        };
        Ok(Trust {
            settings,
            webpki,
            own,
            provider,
        })
    }

    /// A client configuration for one control connection and its data
    /// connections: its own verifier (to report a refusal) and its own
    /// session cache.
    pub fn client_config(self: &Arc<Self>, tls12_only: bool) -> Result<ClientTls, TrustError> {
        let verifier = Arc::new(ConnVerifier {
            trust: Arc::clone(self),
            refused: Mutex::new(None),
        });
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            rustls::DEFAULT_VERSIONS
        };
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(versions)
            .map_err(|e| TrustError::Setup(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        // A fresh config per connection gives each one its own session cache:
        // a shared cache makes data channels resume another connection's
        // session, which servers that require reuse refuse (rclone#7234).
        let tickets = Arc::new(Tickets::default());
        config.resumption = rustls::client::Resumption::store(tickets.clone());
        Ok(ClientTls {
            config: Arc::new(config),
            verifier,
            tickets,
        })
    }

    fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        if self.settings.insecure_skip_verify {
            return Ok(());
        }
        if let Some(pin) = self.settings.fingerprint {
            return if Fingerprint::of(end_entity) == pin {
                Ok(())
            } else {
                Err(rustls::Error::General(
                    "its fingerprint is not the one in remote.tls_fingerprint".into(),
                ))
            };
        }
        if self.own.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            check_dates(end_entity, now)?;
            let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
            return rustls::client::verify_server_name(&parsed, server_name);
        }
        match &self.webpki {
            Some(v) => v
                .verify_server_cert(end_entity, intermediates, server_name, &[], now)
                .map(|_| ()),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }
}

fn read_certs(file: &Path) -> Result<Vec<CertificateDer<'static>>, TrustError> {
    use rustls::pki_types::pem::PemObject;
    let err = |message: String| TrustError::CaFile {
        file: file.to_owned(),
        message,
    };
    let certs = CertificateDer::pem_file_iter(file)
        .map_err(|e| err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(TrustError::NoCertificate(file.to_owned()));
    }
    Ok(certs)
}

/// `notBefore <= now <= notAfter`, for a certificate taken as the server's own.
fn check_dates(der: &CertificateDer<'_>, now: UnixTime) -> Result<(), rustls::Error> {
    use x509_parser::prelude::FromDer;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der.as_ref())
        .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
    let now = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
    let validity = cert.validity();
    if now < validity.not_before.timestamp() {
        return Err(rustls::Error::InvalidCertificate(
            CertificateError::NotValidYet,
        ));
    }
    if now > validity.not_after.timestamp() {
        return Err(rustls::Error::InvalidCertificate(CertificateError::Expired));
    }
    Ok(())
}

/// A refused certificate: why, and its fingerprint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: String,
    pub fingerprint: Fingerprint,
}

/// The verifier of one control connection (and its data connections),
/// which remembers what it refused.
#[derive(Debug)]
pub struct ConnVerifier {
    trust: Arc<Trust>,
    refused: Mutex<Option<Refusal>>,
}

impl ConnVerifier {
    /// The last certificate this verifier refused, if any.
    pub fn refusal(&self) -> Option<Refusal> {
        self.refused.lock().ok().and_then(|r| r.clone())
    }
}

/// A refusal in words a user can act on.
fn reason(e: &rustls::Error) -> String {
    use CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                "it is not issued by a CA this system or remote.tls_ca_file trusts".into()
            }
            C::Expired | C::ExpiredContext { .. } => "it has expired".into(),
            C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet".into(),
            C::NotValidForName | C::NotValidForNameContext { .. } => {
                "it is not made out for this host name or address".into()
            }
            // webpki's own error, passed through as "other".
            C::Other(e) if e.to_string().contains("CaUsedAsEndEntity") => {
                "it is a CA certificate (CA:TRUE), and not the one in remote.tls_ca_file".into()
            }
            other => format!("{other:?}"),
        },
        rustls::Error::General(s) => s.clone(),
        other => other.to_string(),
    }
}

impl ServerCertVerifier for ConnVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .trust
            .verify(end_entity, intermediates, server_name, now)
        {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(e) => {
                if let Ok(mut r) = self.refused.lock() {
                    *r = Some(Refusal {
                        reason: reason(&e),
                        fingerprint: Fingerprint::of(end_entity),
                    });
                }
                Err(e)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.trust.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.trust.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.trust
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The warnings a run starts with, about what its settings leave open: a
/// password sent in clear text to a host that is not this machine (not for
/// the anonymous login, whose password is no secret), and an opted-out
/// certificate check.
pub fn risk_warnings(
    host: &str,
    user: &str,
    tls: crate::job::TlsMode,
    trust: &TrustSettings,
) -> Vec<String> {
    let mut out = Vec::new();
    let anonymous = ["anonymous", "ftp"]
        .iter()
        .any(|u| user.eq_ignore_ascii_case(u));
    if tls == crate::job::TlsMode::None && !is_loopback(host) && !anonymous {
        out.push(format!(
            "remote.tls is none: the password for {user} travels to {host} in clear text; \
             set `remote.tls: explicit` if the server offers FTPS"
        ));
    }
    if tls != crate::job::TlsMode::None && trust.insecure_skip_verify {
        out.push(format!(
            "remote.tls_insecure_skip_verify is on: the certificate of {host} is NOT checked, \
             so anyone on the way can read the password and the files; pin it with \
             remote.tls_fingerprint instead"
        ));
    }
    out
}

/// `localhost`, or a loopback address (127.0.0.0/8, ::1).
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::job::TlsMode;

    /// The test certificates (made with openssl; see the README's TLS section).
    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    fn der(name: &str) -> CertificateDer<'static> {
        read_certs(&data(name)).unwrap().remove(0)
    }

    /// `openssl x509 -noout -fingerprint -sha256 -in tests/data/selfsigned-ca-cert.pem`
    const SELF_SIGNED: &str = "sha256:CB:DD:17:E2:F2:5F:BF:22:71:45:01:6E:97:77:63:5F:62:56:22:F1:23:66:DE:09:FF:80:84:FF:9D:73:7D:BA";

    /// Trust without the system's CAs, so the outcome depends on the test alone.
    fn trust(settings: TrustSettings) -> Arc<Trust> {
        let own = match &settings.ca_file {
            Some(f) => read_certs(f).unwrap(),
            None => Vec::new(),
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in &own {
            let _ = roots.add(c.clone());
        }
        Arc::new(Trust::with_roots(settings, roots, own).unwrap())
    }

    fn ca_file(name: &str) -> TrustSettings {
        TrustSettings {
            ca_file: Some(data(name)),
            ..TrustSettings::default()
        }
    }

    fn name(host: &str) -> ServerName<'static> {
        ServerName::try_from(host.to_owned()).unwrap()
    }

    /// 2030-01-01, well inside every test certificate's validity.
    fn now() -> UnixTime {
        UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_893_456_000))
    }

    /// What the verifier of one connection says, and the refusal it keeps.
    fn verify(t: &Arc<Trust>, cert: &str, host: &str, at: UnixTime) -> Result<(), Refusal> {
        let v = t.client_config(false).unwrap().verifier;
        match v.verify_server_cert(&der(cert), &[], &name(host), &[], at) {
            Ok(_) => {
                assert_eq!(v.refusal(), None);
                Ok(())
            }
            Err(_) => Err(v.refusal().expect("a refusal is kept")),
        }
    }

    #[test]
    fn fingerprints_parse_in_the_forms_people_paste() {
        let pin: Fingerprint = SELF_SIGNED.parse().unwrap();
        assert_eq!(pin.to_string(), SELF_SIGNED);
        assert_eq!(pin, Fingerprint::of(&der("selfsigned-ca-cert.pem")));
        let bare = SELF_SIGNED.trim_start_matches("sha256:");
        for form in [
            bare.to_owned(),
            bare.replace(':', ""),
            SELF_SIGNED.to_ascii_lowercase(),
            format!("SHA256:{}", bare.replace(':', "").to_ascii_lowercase()),
            format!("  {SELF_SIGNED} "),
        ] {
            assert_eq!(form.parse::<Fingerprint>(), Ok(pin), "{form}");
        }
        for bad in [
            "",
            "sha256:",
            "sha256:CB:DD",
            &format!("{SELF_SIGNED}:00"),
            &SELF_SIGNED.replace("CB", "XY"),
        ] {
            let e = bad.parse::<Fingerprint>().unwrap_err();
            assert!(
                e.starts_with("expected `sha256:` and 32 bytes"),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            format!("sha1:{}", &bare[..59]).parse::<Fingerprint>(),
            Err("only SHA-256 fingerprints are supported (`sha256:AB:CD:…`), not sha1".into())
        );
    }

    #[test]
    fn a_ca_true_self_signed_certificate_in_the_ca_file_is_the_servers_own() {
        // webpki alone refuses it as the server's certificate.
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der("selfsigned-ca-cert.pem")).unwrap();
        let plain = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let e = plain
            .verify_server_cert(
                &der("selfsigned-ca-cert.pem"),
                &[],
                &name("localhost"),
                &[],
                now(),
            )
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))"
        );

        let t = trust(ca_file("selfsigned-ca-cert.pem"));
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "localhost", now()),
            Ok(())
        );
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "127.0.0.1", now()),
            Ok(())
        );
        // Names and dates are still checked.
        let refused = |reason: &str| {
            Err(Refusal {
                reason: reason.into(),
                fingerprint: SELF_SIGNED.parse().unwrap(),
            })
        };
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "ftp.example.com", now()),
            refused("it is not made out for this host name or address")
        );
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "127.0.0.2", now()),
            refused("it is not made out for this host name or address")
        );
        let year_2200 = UnixTime::since_unix_epoch(std::time::Duration::from_secs(7_258_118_400));
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "localhost", year_2200),
            refused("it has expired")
        );
        let year_2000 = UnixTime::since_unix_epoch(std::time::Duration::from_secs(946_684_800));
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "localhost", year_2000),
            refused("it is not valid yet")
        );
        // Another server's certificate is not trusted through it.
        let other = verify(&t, "ca-signed-cert.pem", "localhost", now()).unwrap_err();
        assert_eq!(
            other.reason,
            "it is not issued by a CA this system or remote.tls_ca_file trusts"
        );
        assert_eq!(
            other.fingerprint,
            Fingerprint::of(&der("ca-signed-cert.pem"))
        );
    }

    #[test]
    fn chains_to_a_ca_in_the_file_still_verify() {
        let t = trust(ca_file("test-ca-cert.pem"));
        assert_eq!(verify(&t, "ca-signed-cert.pem", "127.0.0.1", now()), Ok(()));
        assert_eq!(
            verify(&t, "ca-signed-cert.pem", "ftp.example.com", now())
                .unwrap_err()
                .reason,
            "it is not made out for this host name or address"
        );
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "localhost", now())
                .unwrap_err()
                .reason,
            "it is a CA certificate (CA:TRUE), and not the one in remote.tls_ca_file"
        );
        // A CA:FALSE self-signed certificate (tests/data/localhost-cert.pem)
        // given as its own CA works as it did.
        let t = trust(ca_file("localhost-cert.pem"));
        assert_eq!(verify(&t, "localhost-cert.pem", "127.0.0.1", now()), Ok(()));
    }

    #[test]
    fn a_pin_trusts_exactly_one_certificate_whatever_its_names() {
        let t = trust(TrustSettings {
            fingerprint: Some(SELF_SIGNED.parse().unwrap()),
            ..TrustSettings::default()
        });
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "ftp.example.com", now()),
            Ok(())
        );
        let year_2200 = UnixTime::since_unix_epoch(std::time::Duration::from_secs(7_258_118_400));
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "localhost", year_2200),
            Ok(())
        );
        assert_eq!(
            verify(&t, "ca-signed-cert.pem", "localhost", now()),
            Err(Refusal {
                reason: "its fingerprint is not the one in remote.tls_fingerprint".into(),
                fingerprint: Fingerprint::of(&der("ca-signed-cert.pem")),
            })
        );
    }

    #[test]
    fn nothing_trusted_refuses_and_the_opt_out_takes_anything() {
        let t = trust(TrustSettings::default());
        assert_eq!(
            verify(&t, "selfsigned-ca-cert.pem", "localhost", now()),
            Err(Refusal {
                reason: "it is not issued by a CA this system or remote.tls_ca_file trusts".into(),
                fingerprint: SELF_SIGNED.parse().unwrap(),
            })
        );
        let t = trust(TrustSettings {
            insecure_skip_verify: true,
            ..TrustSettings::default()
        });
        assert_eq!(
            verify(&t, "ca-signed-cert.pem", "ftp.example.com", now()),
            Ok(())
        );
    }

    #[test]
    fn an_empty_or_missing_ca_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n").unwrap();
        let e = Trust::load(ca_file_at(&empty)).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{} holds no certificate (PEM `BEGIN CERTIFICATE` blocks)",
                empty.display()
            )
        );
        let missing = dir.path().join("missing.pem");
        let e = Trust::load(ca_file_at(&missing)).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("cannot read {}: ", missing.display())),
            "{e}"
        );
    }

    fn ca_file_at(p: &Path) -> TrustSettings {
        TrustSettings {
            ca_file: Some(p.to_owned()),
            ..TrustSettings::default()
        }
    }

    #[test]
    fn warnings_for_clear_text_passwords_and_the_opt_out() {
        let none = TrustSettings::default();
        let clear = |host: &str, user: &str| risk_warnings(host, user, TlsMode::None, &none);
        assert_eq!(
            clear("ftp.example.com", "deploy"),
            [
                "remote.tls is none: the password for deploy travels to ftp.example.com in clear text; set `remote.tls: explicit` if the server offers FTPS"
            ]
        );
        assert_eq!(clear("192.0.2.7", "deploy").len(), 1);
        for local in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
        ] {
            assert!(clear(local, "deploy").is_empty(), "{local}");
        }
        for anon in ["anonymous", "Anonymous", "ftp"] {
            assert!(clear("ftp.example.com", anon).is_empty(), "{anon}");
        }
        assert!(risk_warnings("ftp.example.com", "deploy", TlsMode::Explicit, &none).is_empty());
        let skip = TrustSettings {
            insecure_skip_verify: true,
            ..TrustSettings::default()
        };
        for mode in [TlsMode::Explicit, TlsMode::Implicit] {
            assert_eq!(
                risk_warnings("127.0.0.1", "deploy", mode, &skip),
                [
                    "remote.tls_insecure_skip_verify is on: the certificate of 127.0.0.1 is NOT checked, so anyone on the way can read the password and the files; pin it with remote.tls_fingerprint instead"
                ]
            );
        }
    }
}

/// What [`Trust::client_config`] makes for one control connection.
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// Tells why a certificate was refused.
    pub verifier: Arc<ConnVerifier>,
    /// The sessions its data connections resume.
    pub tickets: Arc<Tickets>,
}

/// One control connection's TLS sessions: rustls's in-memory cache, and
/// how many TLS 1.3 tickets it holds.
///
/// A TLS 1.2 session is resumed as often as needed. A TLS 1.3 ticket is
/// used once (rustls follows RFC 8446 §C.4), and a server that keeps
/// sessions in its own cache (ProFTPD, whose `TLSSessionTickets` is off by
/// default) sends two after the control connection's handshake and no new
/// ones when a data connection resumes: the third data connection would
/// start a full handshake, which servers that require session reuse
/// refuse. [`Tickets::exhausted`] tells the pool so before it happens.
#[derive(Debug)]
pub struct Tickets {
    inner: rustls::client::ClientSessionMemoryCache,
    /// TLS 1.3 tickets received.
    received: AtomicUsize,
    /// TLS 1.3 tickets held (received and not yet used), at most [`Self::MAX`].
    held: AtomicUsize,
}

impl Tickets {
    /// rustls's cache keeps this many TLS 1.3 tickets per server.
    const MAX: usize = 8;

    /// Whether this is a TLS 1.3 connection with no ticket left: the next
    /// data connection could not resume its session.
    pub fn exhausted(&self) -> bool {
        self.received.load(Ordering::Relaxed) > 0 && self.held.load(Ordering::Relaxed) == 0
    }
}

impl Default for Tickets {
    fn default() -> Self {
        Tickets {
            inner: rustls::client::ClientSessionMemoryCache::new(32),
            received: AtomicUsize::new(0),
            held: AtomicUsize::new(0),
        }
    }
}

impl rustls::client::ClientSessionStore for Tickets {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.inner.set_kx_hint(name, group)
    }
    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.inner.kx_hint(name)
    }
    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(name, value)
    }
    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(name)
    }
    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.inner.remove_tls12_session(name)
    }
    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.received.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some((n + 1).min(Self::MAX))
            });
        self.inner.insert_tls13_ticket(name, value)
    }
    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let t = self.inner.take_tls13_ticket(name);
        if t.is_some() {
            let _ = self
                .held
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    Some(n.saturating_sub(1))
                });
        }
        t
    }
}

#[cfg(test)]
mod ticket_tests {
    use super::*;
    use rustls::client::ClientSessionStore;

    #[test]
    fn exhausted_only_after_tls13_tickets_ran_out() {
        let t = Tickets::default();
        let name = ServerName::try_from("127.0.0.1").unwrap();
        // No TLS 1.3 ticket ever (a TLS 1.2 connection, or none yet).
        assert!(!t.exhausted());
        assert!(t.take_tls13_ticket(&name).is_none());
        assert!(!t.exhausted());
    }
}
