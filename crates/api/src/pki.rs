//! The cluster's certificates: a CA, and leaf certificates that name one
//! [`Principal`](crate::auth::Principal) each (rcgen, ECDSA P-256).
//!
//! `kiln tls init DIR` writes `ca.pem` and `ca.key`; `kiln tls issue ROLE NAME` writes
//! `ROLE-NAME.pem` and `ROLE-NAME.key` beside them; `kiln dev` does both in its data dir on
//! its first start. Keys are written with mode 0600 and never overwritten by accident: an
//! existing file is an error unless the caller asks to replace it.
//!
//! [`TlsFiles`] is how a client (the CLI, an agent, a gateway, a coordinator dialling its
//! peers) turns those files into tonic's TLS settings: trust the cluster CA only, and check
//! that the server holds [`COORDINATOR_NAME`] whatever address was dialled.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::auth::{COORDINATOR_NAME, Principal};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("{0}")]
    Certificate(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn cert_error(e: impl std::fmt::Display) -> PkiError {
    PkiError::Certificate(e.to_string())
}

/// How long a CA made by `kiln tls init` is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a certificate is valid unless `--expires` says otherwise.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);

pub fn ca_cert_path(dir: &Path) -> PathBuf {
    dir.join("ca.pem")
}

pub fn ca_key_path(dir: &Path) -> PathBuf {
    dir.join("ca.key")
}

/// The cluster's secrets key (32 random bytes, hex), which every coordinator is given with
/// `--secrets-key`: what stage and service secrets are encrypted with at rest.
pub fn secrets_key_path(dir: &Path) -> PathBuf {
    dir.join("secrets.key")
}

/// The certificate and key file of `principal` in `dir`: `agent-gpu-box-1.pem` and `.key`.
pub fn leaf_paths(dir: &Path, principal: &Principal) -> (PathBuf, PathBuf) {
    let stem = format!("{}-{}", principal.kind(), principal.name());
    (
        dir.join(format!("{stem}.pem")),
        dir.join(format!("{stem}.key")),
    )
}

/// A certificate just made: PEM text and when it stops being valid.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Issued")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// The cluster CA, able to issue.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
}

fn validity(valid_for: Duration) -> Result<(time::OffsetDateTime, time::OffsetDateTime), PkiError> {
    let now = time::OffsetDateTime::now_utc();
    // A minute of slack for clocks that disagree a little.
    let not_before = now - time::Duration::minutes(1);
    let not_after = now
        + time::Duration::try_from(valid_for)
            .map_err(|_| cert_error("the validity is too long"))?;
    Ok((not_before, not_after))
}

fn system_time(t: time::OffsetDateTime) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64)
}

impl Ca {
    /// Makes a new CA in memory.
    pub fn generate() -> Result<(Ca, Issued), PkiError> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "kiln cluster CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let (not_before, not_after) = validity(CA_VALIDITY)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&key).map_err(cert_error)?;
        let issued = Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: system_time(not_after),
        };
        Ok((
            Ca {
                issuer: Issuer::new(params, key),
            },
            issued,
        ))
    }

    /// Reads the CA in `dir` (`ca.pem`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Ca, PkiError> {
        let (cert_path, key_path) = (ca_cert_path(dir), ca_key_path(dir));
        let cert = std::fs::read_to_string(&cert_path).map_err(|e| file_error(&cert_path, e))?;
        let key = std::fs::read_to_string(&key_path).map_err(|e| file_error(&key_path, e))?;
        let key = KeyPair::from_pem(&key).map_err(|e| file_error(&key_path, e))?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|e| file_error(&cert_path, e))?;
        Ok(Ca { issuer })
    }

    /// A certificate for `principal`, valid for `valid_for` from now.
    pub fn issue(&self, principal: &Principal, valid_for: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate().map_err(cert_error)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, principal.to_string());
        params.subject_alt_names = vec![SanType::URI(
            principal.uri().try_into().map_err(cert_error)?,
        )];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if let Principal::Coordinator(_) = principal {
            // Only a coordinator serves: only its certificate holds the name clients check.
            params.subject_alt_names.push(SanType::DnsName(
                COORDINATOR_NAME.try_into().map_err(cert_error)?,
            ));
            params
                .extended_key_usages
                .push(ExtendedKeyUsagePurpose::ServerAuth);
        }
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = validity(valid_for)?;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &self.issuer).map_err(cert_error)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_after: system_time(not_after),
        })
    }
}

/// Writes a new CA into `dir` (`ca.pem`, `ca.key`); an existing one is an error unless
/// `replace`.
pub fn init(dir: &Path, replace: bool) -> Result<Issued, PkiError> {
    let (_, issued) = Ca::generate()?;
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;
    write_pair(&ca_cert_path(dir), &ca_key_path(dir), &issued, replace)?;
    ensure_secrets_key(dir)?;
    Ok(issued)
}

/// Issues a certificate for `principal` from the CA in `ca_dir` and writes it into `out`.
pub fn issue(
    ca_dir: &Path,
    principal: &Principal,
    valid_for: Duration,
    out: &Path,
    replace: bool,
) -> Result<(PathBuf, PathBuf, Issued), PkiError> {
    let ca = Ca::load(ca_dir)?;
    let issued = ca.issue(principal, valid_for)?;
    std::fs::create_dir_all(out).map_err(|e| file_error(out, e))?;
    let (cert, key) = leaf_paths(out, principal);
    write_pair(&cert, &key, &issued, replace)?;
    Ok((cert, key, issued))
}

/// Writes a new secrets key into `dir` unless one is there (a new one would make every
/// secret already set unreadable).
pub fn ensure_secrets_key(dir: &Path) -> Result<PathBuf, PkiError> {
    let path = secrets_key_path(dir);
    if !path.exists() {
        let mut key = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
            .map_err(|_| cert_error("no randomness for a secrets key"))?;
        write_file(&path, format!("{}\n", hex::encode(key)).as_bytes(), 0o600)?;
    }
    Ok(path)
}

fn write_pair(cert: &Path, key: &Path, issued: &Issued, replace: bool) -> Result<(), PkiError> {
    if !replace {
        for p in [cert, key] {
            if p.exists() {
                return Err(file_error(p, "exists already (pass --force to replace it)"));
            }
        }
    }
    write_file(key, issued.key_pem.as_bytes(), 0o600)?;
    write_file(cert, issued.cert_pem.as_bytes(), 0o644)
}

fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| file_error(&tmp, e))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .map_err(|e| file_error(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| file_error(path, e))
}

/// The TLS files a binary's `--ca`, `--cert`, `--key` and `--insecure` flags choose:
/// `None` for plaintext, which is refused unless every address in `addrs` is on loopback.
pub fn tls_choice(
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure: bool,
    addrs: &[&str],
) -> Result<Option<TlsFiles>, String> {
    if insecure {
        if ca.is_some() || cert.is_some() || key.is_some() {
            return Err("--insecure with --ca, --cert or --key: choose TLS or plaintext".into());
        }
        if let Some(addr) = addrs.iter().find(|a| !is_loopback(a)) {
            return Err(format!(
                "--insecure: {addr} is not a loopback address; plaintext is refused beyond this machine"
            ));
        }
        return Ok(None);
    }
    let Some(ca) = ca else {
        return Err("no TLS settings: pass --ca (with --cert and --key, or a token), or --insecure for plaintext on loopback".into());
    };
    if cert.is_some() != key.is_some() {
        return Err("--cert and --key go together".into());
    }
    Ok(Some(TlsFiles { ca, cert, key }))
}

/// Whether `addr` (`host:port` or a host) names this machine only.
pub fn is_loopback(addr: &str) -> bool {
    let host = match addr.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => addr,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The endpoint of a coordinator at `addr` (`host:port`): `https` with `tls`, else `http`.
pub fn endpoint(addr: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint =
        Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(|e| format!("{addr}: {e}"))?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("{addr}: TLS settings: {e}")),
        None => Ok(endpoint),
    }
}

/// What a certificate says: whom it names and until when it is valid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub principal: Option<Principal>,
    pub not_after: SystemTime,
}

/// Reads the kiln principal and the expiry out of a DER certificate.
pub fn inspect(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, x509) = x509_parser::parse_x509_certificate(der).map_err(cert_error)?;
    let not_after = SystemTime::UNIX_EPOCH
        + Duration::from_secs(x509.validity().not_after.timestamp().max(0) as u64);
    let principal = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .and_then(|san| {
            san.value.general_names.iter().find_map(|name| match name {
                x509_parser::extensions::GeneralName::URI(uri) => Principal::from_uri(uri),
                _ => None,
            })
        });
    Ok(CertInfo {
        principal,
        not_after,
    })
}

/// The TLS files a client presents: the cluster CA it trusts, and (for machines and
/// operators) its own certificate and key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsFiles {
    /// The CA and the certificate of `principal` in one directory, as `kiln tls` writes them.
    pub fn in_dir(dir: &Path, principal: &Principal) -> TlsFiles {
        let (cert, key) = leaf_paths(dir, principal);
        TlsFiles {
            ca: ca_cert_path(dir),
            cert: Some(cert),
            key: Some(key),
        }
    }

    fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
        std::fs::read(path).map_err(|e| file_error(path, e))
    }

    /// tonic's client settings: trust only the cluster CA, expect [`COORDINATOR_NAME`],
    /// present the certificate if there is one.
    pub fn client_config(&self) -> Result<ClientTlsConfig, PkiError> {
        let mut config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(Self::read(&self.ca)?))
            .domain_name(COORDINATOR_NAME);
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(Self::read(cert)?, Self::read(key)?));
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(cert_error(
                    "a certificate needs its key, and a key its certificate",
                ));
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_name_their_principal_and_expiry() {
        let (ca, _) = Ca::generate().unwrap();
        let agent = Principal::Agent("gpu-box-1".into());
        let issued = ca.issue(&agent, Duration::from_secs(3600)).unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.cert_pem.as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap();
        let info = inspect(&der).unwrap();
        assert_eq!(info.principal, Some(agent));
        let left = info
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs();
        assert!((3500..=3600).contains(&left), "{left}");
    }

    #[test]
    fn plaintext_only_on_loopback() {
        assert_eq!(
            tls_choice(
                None,
                None,
                None,
                true,
                &["127.0.0.1:7470", "[::1]:1", "localhost:2"]
            ),
            Ok(None)
        );
        let off =
            tls_choice(None, None, None, true, &["127.0.0.1:1", "10.0.0.2:7470"]).unwrap_err();
        assert!(off.contains("10.0.0.2:7470 is not a loopback"), "{off}");
        assert!(
            tls_choice(None, None, None, false, &[])
                .unwrap_err()
                .contains("no TLS settings")
        );
        assert!(tls_choice(Some("ca".into()), Some("c".into()), None, false, &[]).is_err());
        assert!(tls_choice(Some("ca".into()), None, None, true, &[]).is_err());
    }

    #[test]
    fn files_are_private_and_never_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        init(dir.path(), false).unwrap();
        let mode = std::fs::metadata(ca_key_path(dir.path()))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        let again = init(dir.path(), false).unwrap_err().to_string();
        assert!(again.contains("exists already"), "{again}");
        let p = Principal::Coordinator(1);
        issue(dir.path(), &p, LEAF_VALIDITY, dir.path(), false).unwrap();
        assert!(issue(dir.path(), &p, LEAF_VALIDITY, dir.path(), false).is_err());
        issue(dir.path(), &p, LEAF_VALIDITY, dir.path(), true).unwrap();
        let files = TlsFiles::in_dir(dir.path(), &p);
        files.client_config().unwrap();
    }
}
