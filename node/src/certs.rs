//! `seedlog certs`: a certificate authority and certificates signed by it, as PEM files, for
//! development clusters and tests (production certificates come from your own CA).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Arguments of `seedlog certs`.
#[derive(Args, Debug, Clone)]
pub struct CertsArgs {
    /// Directory to write into (created): ca.pem, broker.pem (the broker's keystore:
    /// certificate then key), client-NAME.pem and client-NAME-key.pem.
    #[arg(long)]
    pub dir: PathBuf,
    /// Names the broker certificate is valid for, comma separated.
    #[arg(long, default_value = "localhost,127.0.0.1")]
    pub hosts: String,
    /// Client certificates to make, by common name (their principal is User:CN=NAME).
    #[arg(long, value_delimiter = ',')]
    pub clients: Vec<String>,
    /// Make the client certificates already expired (to test that they are refused).
    #[arg(long)]
    pub expired_clients: bool,
}

/// What `seedlog certs` wrote.
pub struct Written {
    /// The CA certificate: the truststore of brokers and clients.
    pub ca: PathBuf,
    /// The broker keystore.
    pub keystore: PathBuf,
}

/// Writes the CA, the broker's keystore and the client certificates.
pub fn run(args: &CertsArgs) -> anyhow::Result<Written> {
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    // The CA's certificate is made from its key and fixed parameters, so a CA found in the
    // directory is the same issuer again and its older certificates stay valid.
    let ca_key_path = args.dir.join("ca-key.pem");
    let ca_key = match std::fs::read_to_string(&ca_key_path) {
        Ok(pem) => KeyPair::from_pem(&pem).context("reading ca-key.pem")?,
        Err(_) => {
            let key = KeyPair::generate().context("generating the CA key")?;
            write(&ca_key_path, &key.serialize_pem())?;
            key
        }
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "seedlog development CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = rcgen::date_time_ymd(2000, 1, 1);
    ca.not_after = rcgen::date_time_ymd(2100, 1, 1);
    let ca_path = args.dir.join("ca.pem");
    if !ca_path.exists() {
        let ca_cert = ca.self_signed(&ca_key).context("signing the CA")?;
        write(&ca_path, &ca_cert.pem())?;
    }
    let issuer = Issuer::new(ca, ca_key);

    let hosts: Vec<String> = args
        .hosts
        .split(',')
        .map(|h| h.trim().to_string())
        .collect();
    let key = KeyPair::generate()?;
    let mut broker = CertificateParams::new(hosts).context("broker host names")?;
    broker
        .distinguished_name
        .push(DnType::CommonName, "seedlog broker");
    broker.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = broker
        .signed_by(&key, &issuer)
        .context("signing the broker certificate")?;
    let keystore = args.dir.join("broker.pem");
    write(&keystore, &format!("{}{}", cert.pem(), key.serialize_pem()))?;

    for name in &args.clients {
        let key = KeyPair::generate()?;
        let mut client = CertificateParams::new(Vec::<String>::new())?;
        client
            .distinguished_name
            .push(DnType::CommonName, name.as_str());
        client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        if args.expired_clients {
            client.not_before = rcgen::date_time_ymd(2000, 1, 1);
            client.not_after = rcgen::date_time_ymd(2001, 1, 1);
        }
        let cert = client
            .signed_by(&key, &issuer)
            .context("signing a client certificate")?;
        write(&args.dir.join(format!("client-{name}.pem")), &cert.pem())?;
        write(
            &args.dir.join(format!("client-{name}-key.pem")),
            &key.serialize_pem(),
        )?;
    }
    Ok(Written {
        ca: ca_path,
        keystore,
    })
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    #[test]
    fn client_certificates_name_their_principal() {
        let dir = std::env::temp_dir().join(format!("seedlog-certs-{}", std::process::id()));
        let args = CertsArgs {
            dir: dir.clone(),
            hosts: "localhost".into(),
            clients: vec!["alice".into()],
            expired_clients: false,
        };
        let written = run(&args).unwrap();
        let der = CertificateDer::from_pem_file(dir.join("client-alice.pem")).unwrap();
        assert_eq!(
            crate::tls::subject_principal(der.as_ref()).unwrap(),
            "User:CN=alice"
        );
        // The keystore loads as a TLS server's.
        let settings = crate::tls::TlsSettings {
            keystore: written.keystore,
            truststore: Some(written.ca),
            client_auth: crate::tls::ClientAuth::Required,
        };
        crate::tls::TlsServer::load(settings).unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
