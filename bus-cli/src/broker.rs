//! Connecting: the transport the URL's scheme names, built with the transport's own builder
//! and the settings of the command line.

use std::sync::Arc;
use std::time::Duration;

use bus_core::transport::{ServerUrl, Transport, TransportError};

use crate::args::Connection;
use crate::error::CliError;

/// The longest a connection may take, whatever the transport's own timeouts.
const CONNECT_DEADLINE: Duration = Duration::from_secs(20);

/// A transport, by the scheme of its URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `nats://`, `tls://`: NATS JetStream.
    Nats,
    /// `redis://`, `rediss://`: Redis Streams.
    Redis,
    /// `postgres://`, `postgresql://`: PostgreSQL.
    Postgres,
    /// `amqp://`: RabbitMQ.
    Amqp,
}

impl Kind {
    /// The transport of `url`, by its scheme (the first server's, for a list).
    pub(crate) fn of(url: &ServerUrl) -> Result<Kind, CliError> {
        let full = url.expose();
        let scheme = full
            .split_once("://")
            .map(|(scheme, _)| scheme.to_ascii_lowercase());
        match scheme.as_deref() {
            Some("nats" | "tls") => Ok(Kind::Nats),
            Some("redis" | "rediss") => Ok(Kind::Redis),
            Some("postgres" | "postgresql") => Ok(Kind::Postgres),
            Some("amqp") => Ok(Kind::Amqp),
            _ => Err(CliError::usage(
                format!("`{url}` is not a URL of a broker `bus` knows"),
                "write nats://host:4222 (or tls://), redis://host:6379 (or rediss://), \
                 postgres://user@host:5432/database or amqp://user:password@host:5672/%2f",
            )),
        }
    }

    /// The transport's name, as its errors give it.
    fn name(self) -> &'static str {
        match self {
            Kind::Nats => "NATS",
            Kind::Redis => "Redis",
            Kind::Postgres => "PostgreSQL",
            Kind::Amqp => "AMQP",
        }
    }
}

/// A connected transport, and its URL (shown masked).
pub(crate) struct Broker {
    /// The transport.
    pub(crate) transport: Arc<dyn Transport>,
    /// The URL, which shows with its credentials masked.
    pub(crate) url: ServerUrl,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("transport", &self.transport.name())
            .field("url", &self.url)
            .finish()
    }
}

/// Refuses a setting of another transport than the URL's: it would be ignored silently.
fn only_for(kind: Kind, wanted: Kind, flag: &str, given: bool) -> Result<(), CliError> {
    if given && kind != wanted {
        return Err(CliError::usage(
            format!(
                "{flag} is a {} setting, and the URL is a {} one",
                wanted.name(),
                kind.name()
            ),
            format!("leave {flag} out, or give a {} URL", wanted.name()),
        ));
    }
    Ok(())
}

/// Checks the settings against the URL's transport, without connecting.
pub(crate) fn check(connection: &Connection) -> Result<(Kind, ServerUrl), CliError> {
    let Some(url) = connection.url.clone() else {
        return Err(CliError::usage(
            "no broker URL",
            "pass --url nats://host:4222 (or redis://…, postgres://…), or set BUS_URL",
        ));
    };
    let url = ServerUrl::new(url);
    let kind = Kind::of(&url)?;
    only_for(
        kind,
        Kind::Nats,
        "--subject-prefix",
        connection.subject_prefix.is_some(),
    )?;
    only_for(kind, Kind::Nats, "--stream", connection.stream.is_some())?;
    only_for(
        kind,
        Kind::Redis,
        "--key-prefix",
        connection.key_prefix.is_some(),
    )?;
    only_for(
        kind,
        Kind::Postgres,
        "--table-prefix",
        connection.table_prefix.is_some(),
    )?;
    only_for(
        kind,
        Kind::Amqp,
        "--exchange",
        connection.exchange.is_some(),
    )?;
    if matches!(kind, Kind::Postgres | Kind::Amqp) && connection.tls_ca.is_some() {
        return Err(CliError::usage(
            format!(
                "--tls-ca is a NATS and Redis setting, and the URL is a {} one",
                kind.name()
            ),
            "leave --tls-ca out",
        ));
    }
    Ok((kind, url))
}

/// Connects to the broker of `connection`.
pub(crate) async fn connect(connection: &Connection) -> Result<Broker, CliError> {
    let (kind, url) = check(connection)?;
    let connecting = async {
        let transport: Arc<dyn Transport> = match kind {
            Kind::Nats => {
                let mut builder = bus_nats::NatsTransport::builder(url.expose());
                if let Some(prefix) = &connection.subject_prefix {
                    builder = builder.subject_prefix(prefix);
                }
                if let Some(stream) = &connection.stream {
                    builder = builder.stream_name(stream);
                }
                if let Some(ca) = &connection.tls_ca {
                    builder = builder.tls_root_certificates(ca);
                }
                Arc::new(builder.connect().await?)
            }
            Kind::Redis => {
                let mut builder = bus_redis::RedisTransport::builder(url.expose());
                if let Some(prefix) = &connection.key_prefix {
                    builder = builder.key_prefix(prefix);
                }
                if let Some(ca) = &connection.tls_ca {
                    builder = builder.tls_root_certificates(ca);
                }
                Arc::new(builder.connect().await?)
            }
            Kind::Postgres => {
                let mut builder = bus_postgres::PostgresTransport::builder(url.expose())
                    // An operator's tool reads and writes the tables the services made: it
                    // never creates them (a wrong prefix is an error, not new tables).
                    .create_schema(false)
                    .max_connections(2);
                if let Some(prefix) = &connection.table_prefix {
                    builder = builder.table_prefix(prefix);
                }
                Arc::new(builder.connect().await?)
            }
            Kind::Amqp => {
                let mut builder = bus_amqp::AmqpTransport::builder(url.expose());
                if let Some(exchange) = &connection.exchange {
                    builder = builder.exchange(exchange);
                }
                Arc::new(builder.connect().await?)
            }
        };
        Ok::<_, TransportError>(transport)
    };
    let transport = match tokio::time::timeout(CONNECT_DEADLINE, connecting).await {
        Ok(connected) => connected?,
        Err(_) => {
            return Err(CliError::Unreachable(TransportError::unreachable(
                &kind.name().to_ascii_lowercase(),
                format!("no connection to `{url}` within {CONNECT_DEADLINE:?}"),
            )));
        }
    };
    Ok(Broker { transport, url })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connection(url: &str) -> Connection {
        Connection {
            url: Some(url.to_owned()),
            subject_prefix: None,
            stream: None,
            key_prefix: None,
            table_prefix: None,
            exchange: None,
            tls_ca: None,
        }
    }

    #[test]
    fn the_scheme_picks_the_transport() {
        for (url, kind) in [
            ("nats://127.0.0.1:4222", Kind::Nats),
            ("NATS://a:b@h:4222,nats://h2:4222", Kind::Nats),
            ("tls://h:4222", Kind::Nats),
            ("redis://:pw@h:6379/0", Kind::Redis),
            ("rediss://h", Kind::Redis),
            ("postgres://u:p@h/db", Kind::Postgres),
            ("postgresql://h/db", Kind::Postgres),
            ("amqp://guest:guest@h:5672/%2f", Kind::Amqp),
        ] {
            assert_eq!(Kind::of(&ServerUrl::new(url)).expect(url), kind, "{url}");
        }
        for bad in ["127.0.0.1:4222", "http://h", "", "amqps://u:s3cret@h"] {
            let error = Kind::of(&ServerUrl::new(bad)).expect_err(bad);
            assert!(!error.to_string().contains("s3cret"), "{error}");
        }
    }

    #[test]
    fn settings_of_another_transport_are_refused() {
        let mut nats = connection("nats://h");
        nats.key_prefix = Some("x".to_owned());
        let error = check(&nats).expect_err("a Redis setting on NATS");
        assert!(error.to_string().contains("--key-prefix"), "{error}");
        let mut redis = connection("redis://h");
        redis.key_prefix = Some("x".to_owned());
        assert!(check(&redis).is_ok());
        let mut postgres = connection("postgres://h/db");
        postgres.stream = Some("S".to_owned());
        assert!(check(&postgres).is_err());
        let mut amqp = connection("amqp://h");
        amqp.exchange = Some("shop".to_owned());
        assert!(check(&amqp).is_ok());
        amqp.table_prefix = Some("x".to_owned());
        assert!(check(&amqp).is_err(), "a PostgreSQL setting on RabbitMQ");
        let none = Connection {
            url: None,
            ..connection("")
        };
        assert!(check(&none).is_err());
    }
}
