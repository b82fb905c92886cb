//! TLS with a CA of the test's own (certificates made by rcgen): trusted, one event goes through;
//! not trusted, the connect fails at once with a TLS error; with credentials too, which never
//! show.
//!
//! Against private servers started with `--tls --tlscert --tlskey`; without a `nats-server`
//! binary those tests are skipped (failed in CI).

mod common;

use bus_conformance::secure::{
    TestCertificates, assert_error_hides, assert_hidden, assert_logs_hide, capture_logs, round_trip,
};
use bus_core::transport::TransportError;
use bus_nats::{NatsError, NatsTransport, NatsTransportBuilder};
use common::{PrivateNatsServer, within};

/// The arguments of a server that speaks only TLS, with the test's certificate.
fn tls_args(certificates: &TestCertificates) -> Vec<String> {
    vec![
        "--tls".to_owned(),
        "--tlscert".to_owned(),
        certificates.cert.display().to_string(),
        "--tlskey".to_owned(),
        certificates.key.display().to_string(),
    ]
}

/// The error of a connect that must fail, and its [`NatsError`].
async fn failed(what: &str, builder: NatsTransportBuilder) -> TransportError {
    within(what, builder.connect()).await.expect_err(what)
}

/// The [`NatsError`] under a broker error.
fn nats_error(error: &TransportError) -> &NatsError {
    let TransportError::Broker { source, .. } = error else {
        panic!("a broker error: {error:?}");
    };
    source
        .downcast_ref::<NatsError>()
        .unwrap_or_else(|| panic!("a NatsError: {error:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_the_ca_trusted_one_event_goes_through() {
    const TEST: &str = "over_tls_with_the_ca_trusted_one_event_goes_through";
    let certificates = TestCertificates::generate();
    let Some(server) = PrivateNatsServer::start_with(TEST, |_| tls_args(&certificates)) else {
        return;
    };
    let port = server.port();
    // A `tls://` URL, and a `nats://` one with TLS required: either way, TLS or nothing.
    for builder in [
        NatsTransport::builder(format!("tls://127.0.0.1:{port}")),
        NatsTransport::builder(format!("nats://127.0.0.1:{port}")).require_tls(true),
    ] {
        let builder = builder.tls_root_certificates(&certificates.ca);
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
    let Some(server) = PrivateNatsServer::start_with(TEST, |_| tls_args(&certificates)) else {
        return;
    };
    let port = server.port();
    let url = format!("nats://127.0.0.1:{port}");
    for (what, builder) in [
        (
            "the system's roots only",
            NatsTransport::builder(url.as_str()),
        ),
        (
            "another CA",
            NatsTransport::builder(url.as_str()).tls_root_certificates(&certificates.other_ca),
        ),
    ] {
        let error = failed(what, builder).await;
        assert!(
            matches!(nats_error(&error), NatsError::Tls { .. }),
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
async fn tls_and_a_password_together() {
    const TEST: &str = "tls_and_a_password_together";
    const PASSWORD: &str = "Pw-tls-bob-W9fJ3";
    const WRONG: &str = "Pw-tls-wrong-K6sT1";
    capture_logs();
    let certificates = TestCertificates::generate();
    let Some(server) = PrivateNatsServer::start_with(TEST, |_| {
        let mut args = tls_args(&certificates);
        args.extend(["--user", "bob", "--pass", PASSWORD].map(str::to_owned));
        args
    }) else {
        return;
    };
    let port = server.port();

    let url = format!("tls://bob:{PASSWORD}@127.0.0.1:{port}");
    let transport = within(
        "TLS and the right password",
        NatsTransport::builder(url.as_str())
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
    round_trip(&transport, "over TLS with a password").await;

    // The wrong password, over TLS: refused by the server.
    let wrong = format!("tls://bob:{WRONG}@127.0.0.1:{port}");
    let error = failed(
        "the wrong password",
        NatsTransport::builder(wrong).tls_root_certificates(&certificates.ca),
    )
    .await;
    assert!(
        matches!(nats_error(&error), NatsError::Auth { .. }),
        "{error:?}"
    );
    assert_error_hides(&error, &[PASSWORD, WRONG]);

    // The right password, but the CA not trusted: the password is never sent, nor shown.
    let error = failed("the CA not trusted", NatsTransport::builder(url.as_str())).await;
    assert!(
        matches!(nats_error(&error), NatsError::Tls { .. }),
        "{error:?}"
    );
    assert_error_hides(&error, &[PASSWORD]);

    drop(transport);
    assert_logs_hide(
        &[PASSWORD, WRONG],
        &format!("tls://bob:***@127.0.0.1:{port}"),
    );
}

#[tokio::test]
async fn root_certificates_that_cannot_be_read_or_hold_none_are_invalid() {
    let certificates = TestCertificates::generate();
    for (path, reason) in [
        (certificates.dir().join("missing.pem"), "cannot read"),
        // A private key, no certificate.
        (certificates.key.clone(), "no certificate"),
    ] {
        let error = NatsTransport::builder("nats://127.0.0.1:1")
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
}
