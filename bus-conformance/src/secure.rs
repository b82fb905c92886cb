//! What the credentials and TLS tests of the transports share (feature `secure`): everything
//! logged while they run, test certificates made with rcgen, and one event through a
//! transport.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once, PoisonError};

use bus_core::transport::{SubscribeOptions, Transport, TransportError, WireEvent};
use futures_util::StreamExt as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// How long [`round_trip`] waits for its event.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// A random name, for directories, groups and ids of one run.
fn unique() -> String {
    (0..10).map(|_| fastrand::lowercase()).collect()
}

/// Everything logged in this test binary, from any thread, at any level.
static LOGS: Mutex<Vec<u8>> = Mutex::new(Vec::new());

/// Writes into [`LOGS`].
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        LOGS.lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Captures everything logged from now on (every crate, every level down to `trace`, span
/// fields included) into a buffer that [`logged`] reads. The subscriber is the global default,
/// not a thread's: the client libraries log from the tasks of the runtime's worker threads.
pub fn capture_logs() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .with_writer(|| LogWriter)
            .finish();
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global subscriber in this test binary");
    });
}

/// What was logged so far.
pub fn logged() -> String {
    String::from_utf8_lossy(&LOGS.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
}

/// Asserts that no secret shows in `shown`.
pub fn assert_hidden(shown: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(
            !shown.contains(secret),
            "{what} shows the secret `{secret}`: {shown}"
        );
    }
}

/// Asserts that the logs never showed a secret, and showed `masked` (the URL as shown).
pub fn assert_logs_hide(secrets: &[&str], masked: &str) {
    let logs = logged();
    for secret in secrets {
        if let Some(at) = logs.find(secret) {
            let line_start = logs[..at].rfind('\n').map_or(0, |start| start + 1);
            let line_end = logs[at..].find('\n').map_or(logs.len(), |end| at + end);
            panic!(
                "the logs show the secret `{secret}`: {}",
                &logs[line_start..line_end]
            );
        }
    }
    assert!(
        logs.contains(masked),
        "the logs show the masked URL `{masked}` ({} bytes logged)",
        logs.len()
    );
}

/// Asserts that a failed connect shows none of the secrets in its `Display`, its `Debug` or
/// its sources.
pub fn assert_error_hides(error: &TransportError, secrets: &[&str]) {
    let mut shown = vec![error.to_string(), format!("{error:?}")];
    let mut source = std::error::Error::source(error);
    while let Some(current) = source {
        shown.push(current.to_string());
        shown.push(format!("{current:?}"));
        source = current.source();
    }
    for text in shown {
        assert_hidden(&text, secrets, "the error");
    }
}

/// A CA and a server certificate it signed for `127.0.0.1` and `localhost`, as PEM files in a
/// directory of their own (deleted when dropped); and a second CA that signed nothing.
#[derive(Debug)]
pub struct TestCertificates {
    dir: PathBuf,
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's private key (PKCS #8).
    pub key: PathBuf,
    /// Another CA's certificate: trusting it alone does not make the server trusted.
    pub other_ca: PathBuf,
}

impl TestCertificates {
    /// Makes them.
    pub fn generate() -> TestCertificates {
        let dir = std::env::temp_dir().join(format!("bus-tls-test-{}", unique()));
        std::fs::create_dir_all(&dir).expect("a directory for the certificates");
        let (ca_pem, issuer) = certificate_authority("bus test CA");
        let (other_ca_pem, _) = certificate_authority("another bus test CA");

        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .expect("valid names");
        params
            .distinguished_name
            .push(DnType::CommonName, "bus test server");
        params.use_authority_key_identifier_extension = true;
        params.key_usages.push(KeyUsagePurpose::DigitalSignature);
        params
            .extended_key_usages
            .push(ExtendedKeyUsagePurpose::ServerAuth);
        let key = KeyPair::generate().expect("a key pair");
        let cert = params
            .signed_by(&key, &issuer)
            .expect("a server certificate");

        let write = |name: &str, pem: &str| -> PathBuf {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("writing a certificate file");
            path
        };
        TestCertificates {
            ca: write("ca.pem", &ca_pem),
            cert: write("server.pem", &cert.pem()),
            key: write("server-key.pem", &key.serialize_pem()),
            other_ca: write("other-ca.pem", &other_ca_pem),
            dir,
        }
    }

    /// The directory they are in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCertificates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A self-signed CA: its certificate (PEM) and what signs with it.
fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::new()).expect("no names");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    params.key_usages.push(KeyUsagePurpose::KeyCertSign);
    params.key_usages.push(KeyUsagePurpose::CrlSign);
    let key = KeyPair::generate().expect("a key pair");
    let cert = params.self_signed(&key).expect("a CA certificate");
    (cert.pem(), Issuer::new(params, key))
}

/// One event through `transport`: subscribed (a new group), published, received, acked.
pub async fn round_trip(transport: &impl Transport, what: &str) {
    let group = format!("g{}", unique());
    let mut subscription = transport
        .subscribe(SubscribeOptions::new("secure.>").group(group))
        .await
        .unwrap_or_else(|error| panic!("{what}: subscribe: {error}"));
    let event = WireEvent::new(
        format!("id-{}", unique()),
        "security-test",
        "secure.checked",
        &b"{\"ok\":true}"[..],
    );
    transport
        .publish(event.clone())
        .await
        .unwrap_or_else(|error| panic!("{what}: publish: {error}"));
    let delivery = match tokio::time::timeout(PATIENCE, subscription.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(error))) => panic!("{what}: the subscription yielded an error: {error}"),
        Ok(None) => panic!("{what}: the subscription ended"),
        Err(_) => panic!("{what}: nothing delivered within {PATIENCE:?}"),
    };
    assert_eq!(delivery.event(), &event, "{what}");
    delivery
        .ack()
        .await
        .unwrap_or_else(|error| panic!("{what}: ack: {error}"));
}
