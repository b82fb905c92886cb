//! The servers of a URL and its credentials, taken apart before connecting.
//!
//! The client is never given a URL with credentials in it: async-nats keeps each server as a
//! `url::Url`, whose `Debug` shows the password, and logs it at `debug` on every connection
//! attempt. The credentials travel in the connect options instead, which it never shows.

use async_nats::ServerAddr;

/// What a URL authenticates with.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Credentials {
    /// `nats://user:password@host`.
    UserPassword {
        /// The user, percent-decoded.
        user: String,
        /// The password, percent-decoded.
        password: String,
    },
    /// `nats://token@host`.
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credentials::UserPassword { user, .. } => f
                .debug_struct("UserPassword")
                .field("user", user)
                .field("password", &"***")
                .finish(),
            Credentials::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// The servers of a URL, without credentials, and the credentials they share.
#[derive(Debug)]
pub(crate) struct Servers {
    /// Each server, as the client parses it.
    pub(crate) addresses: Vec<ServerAddr>,
    /// The credentials of the URL, if any.
    pub(crate) credentials: Option<Credentials>,
    /// Whether a server's URL asks for TLS (`tls://`).
    pub(crate) tls_scheme: bool,
}

/// Takes `url` (one server or several, comma-separated) apart. The error says what is wrong
/// without repeating any credentials.
pub(crate) fn parse(url: &str) -> Result<Servers, String> {
    let mut addresses = Vec::new();
    let mut credentials: Option<Credentials> = None;
    let mut tls_scheme = false;
    for server in url.split(',').map(str::trim) {
        if server.is_empty() {
            continue;
        }
        let (without, found) = split_credentials(server);
        if let Some(found) = found {
            match &credentials {
                Some(known) if *known != found => {
                    return Err(
                        "the servers of a list have different credentials; give all \
                                the same user and password (or token), or give them to the \
                                first server only"
                            .to_owned(),
                    );
                }
                _ => credentials = Some(found),
            }
        }
        let address = without
            .parse::<ServerAddr>()
            .map_err(|error| format!("`{without}` is not a NATS server URL: {error}"))?;
        tls_scheme |= address.tls_required();
        addresses.push(address);
    }
    if addresses.is_empty() {
        return Err("no server: write it as `nats://host:4222`".to_owned());
    }
    Ok(Servers {
        addresses,
        credentials,
        tls_scheme,
    })
}

/// One server's URL without its user information, and the credentials that was.
fn split_credentials(server: &str) -> (String, Option<Credentials>) {
    let (scheme, rest) = match server.find("://") {
        Some(end) => server.split_at(end + 3),
        None => ("", server),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let Some(at) = authority.rfind('@') else {
        return (server.to_owned(), None);
    };
    let (userinfo, host) = (&authority[..at], &authority[at + 1..]);
    let credentials = match userinfo.split_once(':') {
        Some((user, password)) => Some(Credentials::UserPassword {
            user: percent_decode(user),
            password: percent_decode(password),
        }),
        None if userinfo.is_empty() => None,
        None => Some(Credentials::Token(percent_decode(userinfo))),
    };
    (format!("{scheme}{host}{tail}"), credentials)
}

/// `%XX` sequences as the bytes they stand for (as a URL's user information is written);
/// anything else as it is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8(decoded).unwrap_or_else(|_| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(user: &str, password: &str) -> Option<Credentials> {
        Some(Credentials::UserPassword {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    #[test]
    fn credentials_are_taken_out_of_each_server() {
        for (given, stripped, credentials) in [
            ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222", None),
            (
                "nats://alice:s3cret@127.0.0.1:4222",
                "nats://127.0.0.1:4222",
                user("alice", "s3cret"),
            ),
            (
                "tls://t0ken@host:4222/x",
                "tls://host:4222/x",
                Some(Credentials::Token("t0ken".to_owned())),
            ),
            ("a:p@ss@host", "host", user("a", "p@ss")),
            ("a:p%40ss%3A@host", "host", user("a", "p@ss:")),
            ("@host", "host", None),
            ("host:4222", "host:4222", None),
        ] {
            let (without, found) = split_credentials(given);
            assert_eq!(without, stripped, "{given}");
            assert_eq!(found, credentials, "{given}");
        }
    }

    #[test]
    fn a_list_shares_its_credentials() {
        let servers = parse("nats://a:p@h1:4222, nats://h2:4222,tls://a:p@h3").expect("parses");
        assert_eq!(servers.addresses.len(), 3);
        assert_eq!(servers.credentials, user("a", "p"));
        assert!(servers.tls_scheme);
        assert!(
            servers
                .addresses
                .iter()
                .all(|address| !address.has_user_pass())
        );
        let error = parse("nats://a:p1@h1,nats://a:p2@h2").expect_err("different passwords");
        assert!(!error.contains("p1") && !error.contains("p2"), "{error}");
        assert!(parse(" , ").is_err());
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let shown = format!(
            "{:?} {:?}",
            user("alice", "s3cret"),
            Credentials::Token("t0ken".to_owned())
        );
        assert!(
            !shown.contains("s3cret") && !shown.contains("t0ken"),
            "{shown}"
        );
    }
}
