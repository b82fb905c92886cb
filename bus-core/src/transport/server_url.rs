//! [`ServerUrl`]: a broker's URL that never shows its credentials.

use std::fmt;

/// A broker's URL as given (`nats://user:secret@host:4222`, `redis://:secret@host`, a NATS
/// token `nats://token@host`, or a comma-separated list of servers), which shows only with its
/// credentials masked: its `Debug` and `Display`, and so every error message and log line a
/// transport writes with it, read `nats://user:***@host:4222`. Only [`expose`](Self::expose)
/// gives the URL itself, for the client library that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerUrl {
    full: String,
    shown: String,
}

impl ServerUrl {
    /// Keeps `url`, and its masked form for showing.
    pub fn new(url: impl Into<String>) -> ServerUrl {
        let full = url.into();
        let shown = full.split(',').map(mask).collect::<Vec<_>>().join(",");
        ServerUrl { full, shown }
    }

    /// The URL with its credentials, for connecting only: never log it.
    pub fn expose(&self) -> &str {
        &self.full
    }

    /// The URL with its credentials masked.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shown, f)
    }
}

impl From<String> for ServerUrl {
    fn from(url: String) -> ServerUrl {
        ServerUrl::new(url)
    }
}

impl From<&str> for ServerUrl {
    fn from(url: &str) -> ServerUrl {
        ServerUrl::new(url)
    }
}

/// One server's URL with the user information of its authority masked: a password becomes
/// `***` (the user name stays, it helps to tell connections apart), and user information
/// without a `:` (a token) becomes `***` entirely.
fn mask(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(end) => url.split_at(end + 3),
        None => ("", url),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, host) = authority.split_at(at);
    let masked = match userinfo.split_once(':') {
        Some((user, _)) if !user.is_empty() => format!("{user}:***"),
        _ => "***".to_owned(),
    };
    format!("{scheme}{masked}{host}{tail}")
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn credentials_are_masked_and_the_rest_kept() {
        for (given, shown) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
            (
                "nats://alice:s3cret@host:4222",
                "nats://alice:***@host:4222",
            ),
            ("nats://t0ken@host:4222", "nats://***@host:4222"),
            ("redis://:s3cret@host:6379/0", "redis://***@host:6379/0"),
            (
                "rediss://default:s3cret@host/1?x=1",
                "rediss://default:***@host/1?x=1",
            ),
            ("alice:s3cret@host:4222", "alice:***@host:4222"),
            ("127.0.0.1:4222", "127.0.0.1:4222"),
            (
                "nats://a:p1@h1:4222,nats://b:p2@h2:4222",
                "nats://a:***@h1:4222,nats://b:***@h2:4222",
            ),
            ("nats://a:p@ss@host", "nats://a:***@host"),
            ("", ""),
        ] {
            let url = ServerUrl::new(given);
            assert_eq!(url.shown(), shown, "{given}");
            assert_eq!(url.to_string(), shown);
            assert_eq!(format!("{url:?}"), format!("{shown:?}"));
            assert_eq!(url.expose(), given, "connecting uses the URL as given");
        }
    }

    proptest! {
        /// Whatever the user and password, neither the password nor a token shows.
        #[test]
        fn no_password_or_token_ever_shows(
            user in "[a-z]{0,8}",
            // Upper case first: never a piece of the scheme, the user or the host.
            secret in "[A-Z][A-Za-z0-9!$%&*+=_~-]{5,23}",
            host in "[a-z]{1,10}(:[0-9]{1,5})?",
            scheme in prop::sample::select(vec!["nats://", "redis://", "rediss://", "tls://", ""]),
        ) {
            let with_password = format!("{scheme}{user}:{secret}@{host}/x");
            let with_token = format!("{scheme}{secret}@{host}");
            for given in [with_password, with_token] {
                let url = ServerUrl::new(given.as_str());
                let debug = format!("{url:?}");
                prop_assert!(!url.shown().contains(&secret), "{} shows as {}", given, url.shown());
                prop_assert!(!debug.contains(&secret));
                prop_assert!(url.shown().ends_with(&given[given.rfind('@').unwrap()..]));
            }
        }
    }
}
