//! TLS with a CA of the test's own (certificates made by rcgen): trusted, one event goes through;
//! not trusted, the connect fails at once with a TLS error; with an ACL user's password too,
//! which never shows.
//!
//! Against private servers that serve only TLS (`--port 0 --tls-port <port>`); without a
//! `redis-server` binary those tests are skipped (failed in CI).

mod common;

use bus_conformance::secure::{
    TestCertificates, assert_error_hides, assert_hidden, assert_logs_hide, capture_logs, round_trip,
};
use bus_core::transport::TransportError;
use bus_redis::{RedisError, RedisTransport, RedisTransportBuilder};
use common::{PrivateRedisServer, within};

/// The arguments of a server that serves only TLS on `port`, with the test's certificate
/// (clients are not asked for certificates).
fn tls_args(certificates: &TestCertificates, port: u16) -> Vec<String> {
    vec![
        "--port".to_owned(),
        "0".to_owned(),
        "--tls-port".to_owned(),
        port.to_string(),
        "--tls-cert-file".to_owned(),
        certificates.cert.display().to_string(),
        "--tls-key-file".to_owned(),
        certificates.key.display().to_string(),
        "--tls-ca-cert-file".to_owned(),
        certificates.ca.display().to_string(),
        "--tls-auth-clients".to_owned(),
        "no".to_owned(),
    ]
}

/// The error of a connect that must fail.
async fn failed(what: &str, builder: RedisTransportBuilder) -> TransportError {
    within(what, builder.connect()).await.expect_err(what)
}

/// The [`RedisError`] under a broker error.
fn redis_error(error: &TransportError) -> &RedisError {
    let TransportError::Broker { source, .. } = error else {
        panic!("a broker error: {error:?}");
    };
    source
        .downcast_ref::<RedisError>()
        .unwrap_or_else(|| panic!("a RedisError: {error:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_the_ca_trusted_one_event_goes_through() {
    const TEST: &str = "over_tls_with_the_ca_trusted_one_event_goes_through";
    let certificates = TestCertificates::generate();
    let Some(server) = PrivateRedisServer::start_with(TEST, |port| tls_args(&certificates, port))
    else {
        return;
    };
    let url = format!("rediss://127.0.0.1:{}", server.port());
    let ca_pem = std::fs::read(&certificates.ca).expect("the CA's PEM");
    // The CA as a file, and as PEM text.
    for builder in [
        RedisTransport::builder(url.as_str()).tls_root_certificates(&certificates.ca),
        RedisTransport::builder(url.as_str()).tls_root_certificates_pem(ca_pem),
    ] {
        let what = format!("{builder:?}");
        let transport = within(&what, builder.connect())
            .await
            .unwrap_or_else(|error| panic!("{what}: the CA is trusted: {error}"));
        round_trip(&transport, &what).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_without_the_ca_trusted_the_connect_fails_with_a_tls_error() {
    const TEST: &str = "over_tls_without_the_ca_trusted_the_connect_fails_with_a_tls_error";
    let certificates = TestCertificates::generate();
    let Some(server) = PrivateRedisServer::start_with(TEST, |port| tls_args(&certificates, port))
    else {
        return;
    };
    let port = server.port();
    let url = format!("rediss://127.0.0.1:{port}");
    for (what, builder) in [
        (
            "the system's roots only",
            RedisTransport::builder(url.as_str()),
        ),
        (
            "another CA",
            RedisTransport::builder(url.as_str()).tls_root_certificates(&certificates.other_ca),
        ),
    ] {
        let error = failed(what, builder).await;
        assert!(
            matches!(redis_error(&error), RedisError::Tls { .. }),
            "{what}: {error:?}"
        );
        let shown = error.to_string();
        assert!(
            shown.contains(&format!("127.0.0.1:{port}")) && shown.contains("tls_root_certificates"),
            "{what}: the error names the server and what to do: {shown}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_an_acl_password_together() {
    const TEST: &str = "tls_and_an_acl_password_together";
    const PASSWORD: &str = "Pw-tls-bob-M2kX9";
    const WRONG: &str = "Pw-tls-wrong-C4hG6";
    capture_logs();
    let certificates = TestCertificates::generate();
    let Some(server) = PrivateRedisServer::start_with(TEST, |port| {
        let mut args = tls_args(&certificates, port);
        let acl_password = format!(">{PASSWORD}");
        args.extend(
            [
                "--user",
                "bob",
                "on",
                &acl_password,
                "~*",
                "&*",
                "+@all",
                "--user",
                "default",
                "off",
            ]
            .map(str::to_owned),
        );
        args
    }) else {
        return;
    };
    let port = server.port();

    let url = format!("rediss://bob:{PASSWORD}@127.0.0.1:{port}");
    let transport = within(
        "TLS and the right password",
        RedisTransport::builder(url.as_str())
            .tls_root_certificates(&certificates.ca)
            .connect(),
    )
    .await
    .expect("over TLS with the right password");
    assert_hidden(
        &format!("{transport:?}"),
        &[PASSWORD],
        "the transport's Debug",
    );
    round_trip(&transport, "over TLS as an ACL user").await;

    // The wrong password, over TLS: refused by the server.
    let wrong = format!("rediss://bob:{WRONG}@127.0.0.1:{port}");
    let error = failed(
        "the wrong password",
        RedisTransport::builder(wrong).tls_root_certificates(&certificates.ca),
    )
    .await;
    assert!(
        matches!(redis_error(&error), RedisError::Auth { .. }),
        "{error:?}"
    );
    assert_error_hides(&error, &[PASSWORD, WRONG]);

    // The right password, but the CA not trusted: the password is never sent, nor shown.
    let error = failed("the CA not trusted", RedisTransport::builder(url.as_str())).await;
    assert!(
        matches!(redis_error(&error), RedisError::Tls { .. }),
        "{error:?}"
    );
    assert_error_hides(&error, &[PASSWORD]);

    drop(transport);
    assert_logs_hide(
        &[PASSWORD, WRONG],
        &format!("rediss://bob:***@127.0.0.1:{port}"),
    );
}

#[tokio::test]
async fn root_certificates_that_cannot_be_read_hold_none_or_lack_a_tls_url_are_invalid() {
    let certificates = TestCertificates::generate();
    for (path, reason) in [
        (certificates.dir().join("missing.pem"), "cannot read"),
        // A private key, no certificate.
        (certificates.key.clone(), "no certificate"),
    ] {
        let error = RedisTransport::builder("rediss://127.0.0.1:1")
            .tls_root_certificates(&path)
            .connect()
            .await
            .expect_err("refused before connecting");
        assert!(
            matches!(
                &error,
                TransportError::Invalid {
                    what: "TLS root certificates",
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains(reason), "{error}");
    }
    let error = RedisTransport::builder("redis://127.0.0.1:1")
        .tls_root_certificates(&certificates.ca)
        .connect()
        .await
        .expect_err("a CA without a TLS URL");
    assert!(
        matches!(&error, TransportError::Invalid { what: "URL", .. }),
        "{error:?}"
    );
    assert!(error.to_string().contains("rediss://"), "{error}");
}
