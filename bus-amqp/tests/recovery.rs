//! A connection that breaks: through a TCP proxy the test owns and cuts (the machine's broker
//! is shared, so it is neither restarted nor told to close every connection). A subscription
//! yields the error and ends; the transport connects again for the next publish and
//! subscription; the group's events published meanwhile wait in its queue.

mod common;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bus_core::transport::{SubscribeOptions, Transport, WireEvent};
use common::{TestAmqp, next, unique, within};
use futures_util::StreamExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Forwards local connections to the broker until cut.
struct Proxy {
    port: u16,
    links: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a local port");
        let port = listener.local_addr().expect("its address").port();
        let links: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let accept = tokio::spawn({
            let links = Arc::clone(&links);
            async move {
                while let Ok((mut client, _)) = listener.accept().await {
                    let link = tokio::spawn(async move {
                        if let Ok(mut broker) = TcpStream::connect("127.0.0.1:5672").await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                        }
                    });
                    links
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(link);
                }
            }
        });
        Proxy {
            port,
            links,
            accept,
        }
    }

    /// Cuts every connection through the proxy (new ones are still forwarded).
    fn cut(&self) {
        for link in self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            link.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_ends_subscriptions_and_publishing_reconnects() {
    // Started first, dropped last: the cleanup of `test` goes through it.
    let proxy = Proxy::start().await;
    let Some((mut test, _first)) = TestAmqp::connect("recovery", |builder| builder).await else {
        return;
    };
    test.url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", proxy.port);
    let transport = test.another().await;
    let name = format!("recovery.{}", unique());
    let options = SubscribeOptions::new(&name).group(format!("g-{}", unique()));
    let mut subscription = transport
        .subscribe(options.clone())
        .await
        .expect("subscribed");
    let before = WireEvent::new(unique(), "test", &name, "{}");
    transport.publish(before.clone()).await.expect("published");
    let delivery = next(&mut subscription, "the event before the cut").await;
    assert_eq!(delivery.event().id, before.id);
    delivery.ack().await.expect("acked");
    assert_eq!(transport.is_connected(), Some(true));

    proxy.cut();
    // The subscription sees the connection go: an error, then its end (or its end alone).
    within("the subscription ends", async {
        while let Some(item) = subscription.next().await {
            assert!(item.is_err(), "no delivery after the cut");
        }
    })
    .await;
    // Publishing reconnects (a first attempt may still meet the broken connection).
    let during = WireEvent::new(unique(), "test", &name, "{}");
    within("a publish after the cut", async {
        while transport.publish(during.clone()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert_eq!(transport.is_connected(), Some(true));
    let mut subscription = transport
        .subscribe(options)
        .await
        .expect("subscribed again");
    let delivery = next(&mut subscription, "the event published after the cut").await;
    assert_eq!(delivery.event().id, during.id);
    assert_eq!(delivery.attempt(), 1);
    delivery.ack().await.expect("acked");
}
