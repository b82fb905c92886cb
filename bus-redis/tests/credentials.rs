//! Credentials in the URL authenticate, and never show: not in the builder's or the
//! transport's `Debug`, not in the error of a failed connect, not in anything logged (by the
//! transport or by the client library, at any level).
//!
//! Against private servers started with an ACL user (`--user alice on >secret ...`, the
//! default user off) and with `--requirepass`; without a `redis-server` binary those tests are
//! skipped (failed in CI).

mod common;

use std::time::Duration;

use bus_conformance::secure::{
    assert_error_hides, assert_hidden, assert_logs_hide, capture_logs, round_trip,
};
use bus_core::transport::TransportError;
use bus_redis::{RedisError, RedisTransport};
use common::{PrivateRedisServer, within};

const SECRET: &str = "s3cret-Pa55word";

#[tokio::test]
async fn a_password_never_shows_in_debug_or_errors() {
    for url in [
        format!("redis://alice:{SECRET}@127.0.0.1:1"),
        format!("redis://:{SECRET}@127.0.0.1:1/0"),
    ] {
        let builder =
            RedisTransport::builder(url.as_str()).connect_timeout(Duration::from_millis(500));
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
/// source is [`RedisError::Auth`], naming the server.
async fn refused(url: &str, port: u16) -> TransportError {
    let error = within(url, RedisTransport::builder(url).connect())
        .await
        .expect_err("the server refuses these credentials");
    let TransportError::Broker { source, .. } = &error else {
        panic!("refused credentials are a broker error: {error:?}");
    };
    assert!(
        matches!(
            source.downcast_ref::<RedisError>(),
            Some(RedisError::Auth { .. })
        ),
        "refused credentials are RedisError::Auth: {error:?}"
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
async fn an_acl_user_and_password_in_the_url_authenticate_and_never_show() {
    const TEST: &str = "an_acl_user_and_password_in_the_url_authenticate_and_never_show";
    const PASSWORD: &str = "Pw-alice-R3dQ8";
    const WRONG: &str = "Pw-wrong-V5nB2";
    capture_logs();
    let acl_password = format!(">{PASSWORD}");
    let Some(server) = PrivateRedisServer::start_with(TEST, |_| {
        args(&[
            "--user",
            "alice",
            "on",
            &acl_password,
            "~*",
            "&*",
            "+@all",
            "--user",
            "default",
            "off",
        ])
    }) else {
        return;
    };
    let port = server.port();

    let url = format!("redis://alice:{PASSWORD}@127.0.0.1:{port}");
    let transport = within("the right credentials", RedisTransport::connect(url))
        .await
        .expect("the right user and password connect");
    assert_hidden(
        &format!("{transport:?}"),
        &[PASSWORD],
        "the transport's Debug",
    );
    round_trip(&transport, "as an ACL user").await;

    for wrong in [
        format!("redis://alice:{WRONG}@127.0.0.1:{port}"),
        format!("redis://mallory:{PASSWORD}@127.0.0.1:{port}"),
        // No credentials: the default user is off.
        format!("redis://127.0.0.1:{port}"),
    ] {
        let error = refused(&wrong, port).await;
        assert_error_hides(&error, &[PASSWORD, WRONG]);
    }
    drop(transport);
    assert_logs_hide(
        &[PASSWORD, WRONG],
        &format!("redis://alice:***@127.0.0.1:{port}"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requirepass_password_in_the_url_authenticates_and_never_shows() {
    const TEST: &str = "a_requirepass_password_in_the_url_authenticates_and_never_shows";
    const PASSWORD: &str = "Pw-requirepass-J8wE4";
    const WRONG: &str = "Pw-wrong-T1yU7";
    capture_logs();
    let Some(server) = PrivateRedisServer::start_with(TEST, |_| args(&["--requirepass", PASSWORD]))
    else {
        return;
    };
    let port = server.port();

    let url = format!("redis://:{PASSWORD}@127.0.0.1:{port}");
    let transport = within("the right password", RedisTransport::connect(url))
        .await
        .expect("the right password connects");
    assert_hidden(
        &format!("{transport:?}"),
        &[PASSWORD],
        "the transport's Debug",
    );
    round_trip(&transport, "with requirepass").await;

    for wrong in [
        format!("redis://:{WRONG}@127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let error = refused(&wrong, port).await;
        assert_error_hides(&error, &[PASSWORD, WRONG]);
    }
    drop(transport);
    assert_logs_hide(&[PASSWORD, WRONG], &format!("redis://***@127.0.0.1:{port}"));
}
