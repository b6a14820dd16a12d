//! Opening a connection: the database URL with libpq's TLS settings.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and no `sslrootcert`.
//! We take both out of the URL and apply them like libpq does, with rustls:
//!
//! | sslmode | TLS | certificate checked |
//! |---|---|---|
//! | `disable` | never | - |
//! | `prefer` (default) | if the server offers it | no (as libpq) |
//! | `require` | always | no; with `sslrootcert`, its chain (as libpq) |
//! | `verify-ca` | always | chain to `sslrootcert` (else the system's roots) |
//! | `verify-full` | always | chain and host name |

use std::str::FromStr;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::SslMode as PgSslMode;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{Client, Config};
use tokio_postgres_rustls::MakeRustlsConnect;

/// Where the system's CA bundle lives on Debian and its derivatives.
const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Result<SslMode, String> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode {other}: expected disable, prefer, require, verify-ca or verify-full"
                ))
            }
        })
    }
}

/// A database URL, split into what tokio-postgres takes and the TLS settings it does not.
#[derive(Clone)]
pub struct ConnectSpec {
    pub config: Config,
    pub ssl_mode: SslMode,
    pub root_cert: Option<String>,
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for ConnectSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectSpec")
            .field("user", &self.config.get_user())
            .field("ssl_mode", &self.ssl_mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

/// Takes `sslmode` and `sslrootcert` out of a URL (`?a=b&...`) or key=value string.
fn take_tls_options(url: &str) -> (String, Vec<(String, String)>) {
    const OURS: [&str; 2] = ["sslmode", "sslrootcert"];
    let mut taken = Vec::new();
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let Some((head, query)) = url.split_once('?') else {
            return (url.to_string(), taken);
        };
        let mut kept = Vec::new();
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some((k, v)) if OURS.contains(&k) => {
                    let v = percent_decode(v);
                    taken.push((k.to_string(), v));
                }
                _ => kept.push(kv),
            }
        }
        let rest = if kept.is_empty() {
            head.to_string()
        } else {
            format!("{head}?{}", kept.join("&"))
        };
        (rest, taken)
    } else {
        // key=value form; values with spaces are quoted, which these two never need.
        let mut kept = Vec::new();
        for tok in url.split_whitespace() {
            match tok.split_once('=') {
                Some((k, v)) if OURS.contains(&k.trim()) => {
                    taken.push((k.trim().to_string(), v.trim_matches('\'').to_string()))
                }
                _ => kept.push(tok),
            }
        }
        (kept.join(" "), taken)
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%' && i + 2 < b.len())
            .then(|| std::str::from_utf8(&b[i + 1..i + 3]).ok())
            .flatten()
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match hex {
            Some(n) => {
                out.push(n);
                i += 3;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ConnectSpec {
    pub fn parse(url: &str) -> Result<ConnectSpec, String> {
        let (rest, taken) = take_tls_options(url);
        let mut ssl_mode = SslMode::Prefer;
        let mut root_cert = None;
        for (k, v) in taken {
            match k.as_str() {
                "sslmode" => ssl_mode = SslMode::parse(&v)?,
                _ => root_cert = Some(v),
            }
        }
        let mut config = Config::from_str(&rest).map_err(|e| e.to_string())?;
        config.ssl_mode(match ssl_mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        let tls = tls_config(ssl_mode, root_cert.as_deref())?;
        Ok(ConnectSpec {
            config,
            ssl_mode,
            root_cert,
            tls: MakeRustlsConnect::new(tls),
        })
    }

    /// The same server and TLS settings as another role (a login).
    pub fn with_login(&self, user: &str, password: &[u8]) -> ConnectSpec {
        let mut c = self.clone();
        c.config.user(user).password(password);
        c
    }

    pub fn user(&self) -> String {
        self.config.get_user().unwrap_or("").to_string()
    }

    /// Opens a connection; its driver runs on a task of its own until the client is dropped.
    pub async fn connect(&self) -> Result<Client, tokio_postgres::Error> {
        let (client, connection) = self.connect_raw().await?;
        tokio::spawn(async move {
            // Ends when the client is dropped or the server goes away; errors show up on the
            // client's next query, which the request reports.
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A client and the connection whose messages the caller drives. `sslmode=prefer` falls
    /// back to a connection without TLS when the TLS handshake fails, as libpq does ("first try
    /// an SSL connection; if that fails, try a non-SSL connection"): a server whose
    /// certificate rustls cannot read (Citus makes a self-signed X.509 v1 one on every node) is
    /// still reached. Only a failed handshake falls back, never a refused login.
    pub async fn connect_raw(
        &self,
    ) -> Result<
        (
            Client,
            tokio_postgres::Connection<tokio_postgres::Socket, TlsStream>,
        ),
        tokio_postgres::Error,
    > {
        match self.config.connect(self.tls.clone()).await {
            Err(e) if self.ssl_mode == SslMode::Prefer && is_tls_failure(&e) => {
                let mut plain = self.config.clone();
                plain.ssl_mode(PgSslMode::Disable);
                plain.connect(self.tls.clone()).await
            }
            other => other,
        }
    }
}

/// The stream of a connection made with this spec's connector.
type TlsStream = <MakeRustlsConnect as MakeTlsConnect<tokio_postgres::Socket>>::Stream;

/// The error is the TLS handshake's (not the server refusing the login, nor no server).
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    e.to_string().contains("TLS handshake")
}

/// ring, because it builds with a C compiler only (aws-lc needs cmake). rustls deprecates
/// ring's default provider for lacking post-quantum key exchange, which PostgreSQL servers do
/// not offer yet either.
#[allow(deprecated)]
fn ring() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(ring())
}

fn load_roots(path: &str) -> Result<RootCertStore, String> {
    let mut roots = RootCertStore::empty();
    let certs =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("sslrootcert {path}: {e}"))?;
    for c in certs {
        let c = c.map_err(|e| format!("sslrootcert {path}: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("sslrootcert {path}: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("sslrootcert {path}: no certificate in the file"));
    }
    Ok(roots)
}

fn tls_config(mode: SslMode, root_cert: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let verify_chain = match (mode, root_cert) {
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => None,
        (_, Some(path)) => Some(load_roots(path)?),
        (_, None) => Some(load_roots(SYSTEM_ROOTS)?),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verify_chain {
        None => Arc::new(AnyCertificate),
        Some(roots) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| e.to_string())?;
            Arc::new(ChainVerifier {
                webpki,
                check_name: mode == SslMode::VerifyFull,
            })
        }
    };
    Ok(builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

fn schemes() -> Vec<SignatureScheme> {
    ring().signature_verification_algorithms.supported_schemes()
}

fn verify12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(
        message,
        cert,
        dss,
        &ring().signature_verification_algorithms,
    )
}

fn verify13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &ring().signature_verification_algorithms,
    )
}

/// `sslmode=prefer`/`require` without a root certificate: encryption, no authentication of the
/// server (what libpq does). The handshake's signatures are still checked.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

/// `verify-ca` (chain only) and `verify-full` (chain and host name).
#[derive(Debug)]
struct ChainVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for ChainVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_come_out_of_both_forms() {
        let s = ConnectSpec::parse("postgres://a:p@h:5433/d?sslmode=require&application_name=x")
            .unwrap();
        assert_eq!(s.ssl_mode, SslMode::Require);
        assert_eq!(s.config.get_ports(), [5433]);
        assert_eq!(s.config.get_application_name(), Some("x"));
        let s = ConnectSpec::parse("host=h user=a sslmode=disable dbname=d").unwrap();
        assert_eq!(s.ssl_mode, SslMode::Disable);
        assert_eq!(s.user(), "a");
        let s = ConnectSpec::parse("postgres://a@h/d").unwrap();
        assert_eq!(s.ssl_mode, SslMode::Prefer);
        assert!(ConnectSpec::parse("postgres://a@h/d?sslmode=nope").is_err());
        let e = ConnectSpec::parse("postgres://a@h/d?sslmode=verify-ca&sslrootcert=/nonexistent")
            .unwrap_err();
        assert!(e.contains("/nonexistent"), "{e}");
        assert_eq!(percent_decode("%2Ftmp%2Fx.pem"), "/tmp/x.pem");
    }
}
