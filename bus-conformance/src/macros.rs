//! `conformance_tests!`: one test per case for a transport's test file.

/// Stamps one test per conformance case for the harness that `$harness` builds.
///
/// Each test runs its case on a fresh multi-threaded Tokio runtime with two workers (what
/// `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` builds; the runtime comes from
/// this crate, so the transport's test crate needs no Tokio feature for it), at the
/// [`Size`](crate::Size) the `BUS_CONFORMANCE` environment variable selects. `$harness` is
/// evaluated inside that runtime, once per test, and may `.await`; it evaluates to a value of a
/// type that implements [`Harness`](crate::Harness) (`Arc<H>` and `Box<H>` do too).
///
/// The tests are named after the cases ([`CASES`](crate::CASES)): invoke the macro once per
/// module. A case the transport cannot run passes after printing
/// `SKIP <case>: <transport> lacks <capability>` to the standard error, past the test harness's
/// output capture.
///
/// See the [crate documentation](crate) for a complete example.
#[macro_export]
macro_rules! conformance_tests {
    ($harness:expr $(,)?) => {
        $crate::__with_cases! { __stamp_tests! ($harness) }
    };
}

/// Not public API. Calls `$callback!` with `$args` followed by the name of every case: the one
/// list that both the tests and [`CASES`](crate::CASES) come from.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_cases {
    ($callback:ident ! $args:tt) => {
        $crate::$callback! {
            $args
            publish_subscribe
            concurrent_subscribe
            concurrent_subscribe_multiple_topics
            resend_on_error
            publish_subscribe_in_order
            continue_after_subscribe_close
            concurrent_close
            continue_after_errors
            many_publishers
            topic_isolation
            subscription_cancel
            consumer_groups
            broker_restart
            killed_consumer
            poison_dead_letter
            crashed_poison_dead_letter
            fan_out
            wildcard_parity
            dedup
            group_stats
            list_groups
            stored_dead_letters
        }
    };
}

/// Not public API. One `#[test]` per case.
#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_tests {
    (($harness:expr) $($case:ident)*) => {
        $(
            #[test]
            fn $case() {
                $crate::__private::run(async {
                    let harness = $harness;
                    $crate::cases::$case(&harness, $crate::Size::from_env()).await;
                });
            }
        )*
    };
}

/// Not public API. The list of case names.
#[doc(hidden)]
#[macro_export]
macro_rules! __case_names {
    (() $($case:ident)*) => {
        /// The name of every case, in the order of issue 5; each is a function of
        /// [`cases`](crate::cases) and a test of [`conformance_tests!`](crate::conformance_tests).
        pub const CASES: &[&str] = &[$(stringify!($case)),*];
    };
}
