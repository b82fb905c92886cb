//! Credentials in the URL authenticate, and never show: not in the builder's or the
//! transport's `Debug`, not in the error of a failed connect, not in anything logged (by the
//! transport or by the client library, at any level).
//!
//! Against private servers started with `--user/--pass` and with `--auth <token>`; without a
//! `nats-server` binary those tests are skipped (failed in CI).

mod common;

use std::time::Duration;

use bus_conformance::secure::{
    assert_error_hides, assert_hidden, assert_logs_hide, capture_logs, round_trip,
};
use bus_core::transport::TransportError;
use bus_nats::{NatsError, NatsTransport};
use common::{PrivateNatsServer, within};

const SECRET: &str = "s3cret-Pa55word";

#[tokio::test]
async fn a_password_or_token_never_shows_in_debug_or_errors() {
    for url in [
        format!("nats://alice:{SECRET}@127.0.0.1:1"),
        format!("nats://{SECRET}@127.0.0.1:1"),
    ] {
        let builder =
            NatsTransport::builder(url.as_str()).connect_timeout(Duration::from_millis(500));
        let debug = format!("{builder:?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(
            debug.contains("***@127.0.0.1:1"),
            "the masked URL shows: {debug}"
        );
        // Nothing listens on port 1: the connect fails, and says where, without the secret.
        let error = builder
            .connect()
            .await
            .expect_err("nothing listens on port 1");
        for shown in [error.to_string(), format!("{error:?}")] {
            assert!(!shown.contains(SECRET), "{shown}");
            assert!(
                shown.contains("127.0.0.1:1"),
                "the error names the server: {shown}"
            );
        }
    }
}

/// Connects to `url`, which the server must refuse for its credentials: a broker error whose
/// source is [`NatsError::Auth`], naming the server.
async fn refused(url: &str, port: u16) -> TransportError {
    let error = within(url, NatsTransport::builder(url).connect())
        .await
        .expect_err("the server refuses these credentials");
    let TransportError::Broker { source, .. } = &error else {
        panic!("refused credentials are a broker error: {error:?}");
    };
    assert!(
        matches!(
            source.downcast_ref::<NatsError>(),
            Some(NatsError::Auth { .. })
        ),
        "refused credentials are NatsError::Auth: {error:?}"
    );
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{port}")),
        "the error names the server: {error}"
    );
    error
}

fn args(args: &[&str]) -> Vec<String> {
    args.iter().map(|arg| (*arg).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_and_password_in_the_url_authenticate_and_never_show() {
    const TEST: &str = "a_user_and_password_in_the_url_authenticate_and_never_show";
    const PASSWORD: &str = "Pw-alice-Q7xK2";
    const WRONG: &str = "Pw-wrong-Zr5Lm";
    capture_logs();
    let Some(server) =
        PrivateNatsServer::start_with(TEST, |_| args(&["--user", "alice", "--pass", PASSWORD]))
    else {
        return;
    };
    let port = server.port();

    let url = format!("nats://alice:{PASSWORD}@127.0.0.1:{port}");
    let transport = within("the right credentials", NatsTransport::connect(url))
        .await
        .expect("the right user and password connect");
    assert_hidden(
        &format!("{transport:?}"),
        &[PASSWORD],
        "the transport's Debug",
    );
    round_trip(&transport, "with a user and password").await;

    for wrong in [
        format!("nats://alice:{WRONG}@127.0.0.1:{port}"),
        format!("nats://mallory:{PASSWORD}@127.0.0.1:{port}"),
        format!("nats://127.0.0.1:{port}"),
    ] {
        let error = refused(&wrong, port).await;
        assert_error_hides(&error, &[PASSWORD, WRONG]);
    }
    drop(transport);
    assert_logs_hide(
        &[PASSWORD, WRONG],
        &format!("nats://alice:***@127.0.0.1:{port}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_url_authenticates_and_never_shows() {
    const TEST: &str = "a_token_in_the_url_authenticates_and_never_shows";
    const TOKEN: &str = "Tk-right-H4vN8";
    const WRONG: &str = "Tk-wrong-P2cD6";
    capture_logs();
    let Some(server) = PrivateNatsServer::start_with(TEST, |_| args(&["--auth", TOKEN])) else {
        return;
    };
    let port = server.port();

    let url = format!("nats://{TOKEN}@127.0.0.1:{port}");
    let transport = within("the right token", NatsTransport::connect(url))
        .await
        .expect("the right token connects");
    assert_hidden(&format!("{transport:?}"), &[TOKEN], "the transport's Debug");
    round_trip(&transport, "with a token").await;

    for wrong in [
        format!("nats://{WRONG}@127.0.0.1:{port}"),
        format!("nats://127.0.0.1:{port}"),
    ] {
        let error = refused(&wrong, port).await;
        assert_error_hides(&error, &[TOKEN, WRONG]);
    }
    drop(transport);
    assert_logs_hide(&[TOKEN, WRONG], &format!("nats://***@127.0.0.1:{port}"));
}
