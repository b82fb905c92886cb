//! The cases, one `async fn` each: `case(harness, size)` runs the case against the broker that
//! `harness` connects to and panics, naming the transport and the case, when the transport
//! breaks the contract of [`Transport`](bus_core::transport::Transport).
//!
//! Counts are the full ones ([`Size::Full`](crate::Size::Full)); [`Size::Short`](crate::Size::Short)
//! divides them by ten. "Plain" is a subscription outside any group; "group" needs the
//! `groups` capability.
//!
//! | case | Watermill test | what must hold | needs |
//! |---|---|---|---|
//! | [`publish_subscribe`] | `TestPublishSubscribe` | 100 events reach a plain subscription with every attribute and payload intact (empty, binary and 64 KiB payloads included) | |
//! | [`concurrent_subscribe`] | `TestConcurrentSubscribe` | 5,000 events over 50 instances of one group: each event once (again only as a redelivery), none lost | groups |
//! | [`concurrent_subscribe_multiple_topics`] | `TestConcurrentSubscribeMultipleTopics` | 20 names x 100 events, subscribed concurrently on one connection: each subscription gets all of its own and nothing else | |
//! | [`resend_on_error`] | `TestResendOnError` | nacking the first 2 of 100 deliveries: all 100 still arrive, the nacked ones again | |
//! | [`publish_subscribe_in_order`] | `TestPublishSubscribeInOrder` | 1,000 events over 16 names, one subscriber: each name's events in publish order | ordered |
//! | [`continue_after_subscribe_close`] | `TestContinueAfterSubscribeClose` | 5,000 events read by 5 successive instances of a group, each closed holding an unacked delivery: nothing lost | groups |
//! | [`concurrent_close`] | `TestConcurrentClose` | 10 instances created, subscribed and closed concurrently; then 50 new events all reach the group | groups |
//! | [`continue_after_errors`] | `TestContinueAfterErrors` | 3 successive instances nack 100 deliveries each; a last one gets all 50 events | groups |
//! | [`many_publishers`] | `TestPublisherClose` | 10,000 events from 20 connections, closed once acked: none lost | |
//! | [`topic_isolation`] | `TestTopic` | `a.t1` and `a.t10` get their own event only, not `a.t1.x`'s nor `a.t`'s (quiet period) | |
//! | [`subscription_cancel`] | `TestSubscribeCtx` | a group's subscription dropped with unacked deliveries: they, and what was published meanwhile, reach the next instance; acked ones never come back | groups |
//! | [`consumer_groups`] | `TestConsumerGroups` | two groups created and closed before publishing each get all 50 events | groups |
//! | [`broker_restart`] | `TestReconnect` | the broker restarted twice during 10,000 publishes (20 publishers, retrying): nothing lost | restartable, persistent, groups |
//! | [`killed_consumer`] | (issue 5) | an instance that dies holding a delivery (dropped unsettled; leaked and unsubscribed; leaked and hung; released and unsubscribed): another instance gets the event | groups |
//! | [`poison_dead_letter`] | (issue 5) | an event nacked on every attempt is dead-lettered after `max_deliveries`, one rejected at once, with reason, group and attempts; the others keep flowing (quiet period) | groups |
//! | [`crashed_poison_dead_letter`] | (issue 5) | an event whose every delivery kills its consumer is delivered `max_deliveries` times, then dead-lettered | groups |
//! | [`fan_out`] | (issue 5) | 2 services x 2 instances: each service handles each of 100 events once (quiet period) | groups |
//! | [`wildcard_parity`] | (issue 5) | each pattern of a fixed set receives exactly the names that in-process matching (and NATS semantics) accept (quiet period) | |
//! | [`dedup`] | (issue 5) | an event published twice with one source and id is delivered once, the same id from another source too (plain and group; quiet period) | deduplicates |
//! | [`group_stats`] | (issue 5) | a group's stats: `lag + pending` 3 for 3 events published behind it; `pending >= 1` with one held; 0 and 0 once all are acked; `None` for an unknown group and without a group | groups, group_stats |
//! | [`list_groups`] | (issue 19) | the broker lists a case's two groups under their names and patterns, with their stats (`lag + pending` 2 behind one, 0 and 0 and no members for the other, whose subscription closed), and never a subscription outside any group | groups, list_groups |
//! | [`stored_dead_letters`] | (issue 19) | two rejected events' dead letters are read back in order (all, or those of one pattern), deleted (2, then 0 again), never read or delivered again (a group holding one acks it, a new member gets a later probe next), and an ordinary event is never deleted as a letter | groups, stored_dead_letters |

mod basics;
mod failures;
mod groups;

pub use self::basics::{
    concurrent_subscribe_multiple_topics, dedup, many_publishers, publish_subscribe,
    publish_subscribe_in_order, topic_isolation, wildcard_parity,
};
pub use self::failures::{
    broker_restart, continue_after_errors, crashed_poison_dead_letter, killed_consumer,
    poison_dead_letter, resend_on_error, stored_dead_letters, subscription_cancel,
};
pub use self::groups::{
    concurrent_close, concurrent_subscribe, consumer_groups, continue_after_subscribe_close,
    fan_out, group_stats, list_groups,
};
