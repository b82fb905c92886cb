//! Credentials in the URL never show: not in the builder's or the transport's `Debug`, not in
//! the error of a failed connect.

use std::time::Duration;

use bus_redis::RedisTransport;

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
