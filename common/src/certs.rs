//! Creation of a cluster certificate authority and the server and client certificates it signs.
//!
//! One command (`yonder-server certs --dir DIR`) gives a new user a mutual-TLS setup without
//! openssl. The CA in a directory is reused when present and existing certificates are never
//! overwritten unless asked, so the command is safe to re-run (deployment relies on that).

use std::{
    fs,
    io::Write,
    net::IpAddr,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// File name of the CA certificate inside a certificate directory.
pub const CA_CERT: &str = "ca.pem";
/// File name of the CA private key inside a certificate directory.
pub const CA_KEY: &str = "ca.key";
/// Default file stem of the server certificate (`server.pem`, `server.key`).
pub const DEFAULT_SERVER: &str = "server";
/// Default file stem and tenant name of the client certificate (`client.pem`, `client.key`).
pub const DEFAULT_CLIENT: &str = "client";

/// Why certificates could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// rcgen refused the parameters or the existing CA.
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// A name is not usable as a file stem or certificate name.
    #[error("invalid name {0:?}: use letters, digits, '.', '-' and '_'")]
    InvalidName(String),
}

/// What to create in a certificate directory.
#[derive(Clone, Debug)]
pub struct CertPlan {
    /// Directory that holds the CA and the certificates.
    pub dir: PathBuf,
    /// Host names and IP addresses the server certificate is valid for.
    pub server_hosts: Vec<String>,
    /// File stems of server certificates to create (each valid for `server_hosts`).
    pub servers: Vec<String>,
    /// Client certificates to create; the name is the file stem and the tenant name.
    pub clients: Vec<String>,
    /// Replace existing server and client certificates (the CA is always kept).
    pub force: bool,
}

impl CertPlan {
    /// A plan for one server certificate valid on loopback and one client certificate.
    pub fn loopback(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            server_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            servers: vec![DEFAULT_SERVER.into()],
            clients: vec![DEFAULT_CLIENT.into()],
            force: false,
        }
    }
}

/// What [`create`] did with each file.
#[derive(Clone, Debug, Default)]
pub struct CertReport {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Files left alone because they existed.
    pub kept: Vec<PathBuf>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CertError + '_ {
    move |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn check_name(name: &str) -> Result<(), CertError> {
    let ok = !name.is_empty()
        && name != "ca"
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(CertError::InvalidName(name.to_string()))
    }
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(contents.as_bytes()).map_err(io_err(path))
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

fn load_or_create_ca(
    dir: &Path,
    report: &mut CertReport,
) -> Result<Issuer<'static, KeyPair>, CertError> {
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    if cert_path.exists() && key_path.exists() {
        let cert_pem = fs::read_to_string(&cert_path).map_err(io_err(&cert_path))?;
        let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
        let key = KeyPair::from_pem(&key_pem)?;
        report.kept.push(cert_path);
        report.kept.push(key_path);
        return Ok(Issuer::from_ca_cert_pem(&cert_pem, key)?);
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "Yonder cluster CA");
    dn.push(DnType::OrganizationName, "Yonder");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params, 3650);
    let key = KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    report.written.push(cert_path);
    report.written.push(key_path);
    Ok(Issuer::new(params, key))
}

fn leaf(
    dir: &Path,
    name: &str,
    sans: &[String],
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'static, KeyPair>,
    force: bool,
    report: &mut CertReport,
) -> Result<(), CertError> {
    check_name(name)?;
    let cert_path = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}.key"));
    if !force && cert_path.exists() && key_path.exists() {
        report.kept.push(cert_path);
        report.kept.push(key_path);
        return Ok(());
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.subject_alt_names = sans
        .iter()
        .map(|s| match s.parse::<IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(s.as_str().try_into()?)),
        })
        .collect::<Result<_, rcgen::Error>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![usage];
    validity(&mut params, 825);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    write_file(&key_path, &key.serialize_pem(), 0o600)?;
    write_file(&cert_path, &cert.pem(), 0o644)?;
    report.written.push(cert_path);
    report.written.push(key_path);
    Ok(())
}

/// Creates (or completes) a certificate directory according to `plan`.
pub fn create(plan: &CertPlan) -> Result<CertReport, CertError> {
    fs::create_dir_all(&plan.dir).map_err(io_err(&plan.dir))?;
    let mut report = CertReport::default();
    let issuer = load_or_create_ca(&plan.dir, &mut report)?;
    for server in &plan.servers {
        leaf(
            &plan.dir,
            server,
            &plan.server_hosts,
            ExtendedKeyUsagePurpose::ServerAuth,
            &issuer,
            plan.force,
            &mut report,
        )?;
    }
    for client in &plan.clients {
        // A client name doubles as its tenant: it goes into the subject's common name.
        leaf(
            &plan.dir,
            client,
            std::slice::from_ref(client),
            ExtendedKeyUsagePurpose::ClientAuth,
            &issuer,
            plan.force,
            &mut report,
        )?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rerun_keeps_the_ca_and_existing_certificates() {
        let dir = std::env::temp_dir().join(format!("yonder-certs-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let plan = CertPlan::loopback(&dir);
        let first = create(&plan).unwrap();
        assert_eq!(first.written.len(), 6);
        let ca_before = fs::read(dir.join(CA_CERT)).unwrap();
        let mut again = plan.clone();
        again.clients.push("tenant-b".into());
        let second = create(&again).unwrap();
        assert_eq!(second.written.len(), 2, "only the new client is written");
        assert_eq!(fs::read(dir.join(CA_CERT)).unwrap(), ca_before);
        let mode = fs::metadata(dir.join("client.key")).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(check_name("../x").is_err());
        assert!(check_name("ca").is_err());
        assert!(check_name("").is_err());
        assert!(check_name("node-1.example").is_ok());
    }
}
