//! Every system on tiny scenarios, on both runtimes: the handler calls must be exact, and a
//! system that loses events must fail instead of producing a number.

use std::sync::Arc;
use std::time::Duration;

use crate::{
    Contender, Delivery, Flavor, Job, Mode, Output, Plan, Role, Scenario, Setup, System, Work,
    contenders, systems::Broadcast,
};

fn plans() -> [Plan; 5] {
    let plan = |emits, names, listeners, mode| Plan {
        emits,
        names,
        listeners,
        mode,
        patterns: 0,
    };
    [
        plan(200, 1, 1, Mode::Count),
        plan(50, 1, 10, Mode::Count),
        plan(50, 1, 3, Mode::Yield),
        plan(300, 100, 1, Mode::Count),
        plan(30, 7, 2, Mode::Yield),
    ]
}

/// `run` itself asserts that the handler calls are exactly `emits * listeners`; this checks
/// that it returns the right kind of number too.
#[test]
fn every_system_delivers_every_event_exactly_once() {
    for flavor in Flavor::ALL {
        let runtime = flavor.runtime();
        for contender in contenders() {
            for plan in plans() {
                let output = contender.run(Job::Throughput(plan), &runtime);
                assert!(
                    matches!(output, Ok(Output::Elapsed(_))),
                    "{} {plan:?} on {flavor:?}: {output:?}",
                    contender.name()
                );
            }
        }
    }
}

/// (f) runs on the systems with wildcard patterns and is reported n/a, not approximated, on
/// the others.
#[test]
fn pattern_runs_deliver_through_patterns_or_are_not_applicable() {
    let plan = Plan {
        emits: 300,
        names: 10,
        listeners: 1,
        mode: Mode::Count,
        patterns: 100,
    };
    for flavor in Flavor::ALL {
        let runtime = flavor.runtime();
        for contender in contenders() {
            let output = contender.run(Job::Throughput(plan), &runtime);
            match (contender.role(), output) {
                (Role::Ours, Ok(Output::Elapsed(_))) => {}
                (Role::Baseline | Role::Peer, Err(not_applicable)) => {
                    assert!(not_applicable.0.contains("pattern"), "{not_applicable}");
                }
                (_, other) => panic!("{} on {flavor:?}: {other:?}", contender.name()),
            }
        }
    }
}

#[test]
fn every_system_completes_round_trips() {
    for flavor in Flavor::ALL {
        let runtime = flavor.runtime();
        for contender in contenders() {
            let job = Job::Latency {
                warmup: 10,
                samples: 100,
            };
            match contender.run(job, &runtime) {
                Ok(Output::Samples(samples)) => assert_eq!(samples.len(), 100),
                other => panic!("{} on {flavor:?}: {other:?}", contender.name()),
            }
            let elapsed = contender.elapsed(Job::RoundTrips { count: 50 }, &runtime);
            assert!(elapsed > Duration::ZERO);
        }
    }
}

#[test]
fn every_system_but_direct_holds_pending_deliveries() {
    for flavor in Flavor::ALL {
        let runtime = flavor.runtime();
        for contender in contenders() {
            let output = contender.run(Job::Memory { deliveries: 500 }, &runtime);
            match (contender.name(), output) {
                ("direct", Err(_)) | (_, Ok(Output::BytesPerDelivery(_))) => {}
                (name, other) => panic!("{name} on {flavor:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn full_size_jobs_have_the_issue_counts() {
    let Job::Throughput(a) = Scenario::A.job(1) else {
        panic!("(a) is a throughput scenario")
    };
    assert_eq!((a.emits, a.calls()), (1_000_000, 1_000_000));
    let Job::Throughput(b) = Scenario::B.job(1) else {
        panic!("(b) is a throughput scenario")
    };
    assert_eq!(b.calls(), 2_000_000);
    let Job::Throughput(d) = Scenario::D.job(10) else {
        panic!("(d) is a throughput scenario")
    };
    assert_eq!((d.emits, d.names, d.emits_per_name()), (20_000, 10_000, 2));
    let Job::Throughput(f) = Scenario::F.job(1) else {
        panic!("(f) is a throughput scenario")
    };
    assert_eq!((f.emits, f.names, f.patterns), (200_000, 10, 100_000));
    assert!(Scenario::F10.job(1).uses_patterns());
    assert!(Scenario::FSpread.job(1).uses_patterns());
    assert!(!Scenario::D.job(1).uses_patterns());
    assert_eq!(
        Scenario::G.job(1),
        Job::Memory {
            deliveries: 1_000_000
        }
    );
}

/// Delivers every other event only.
#[derive(Default)]
struct Lossy {
    listeners: Vec<&'static Work>,
}

impl System for Lossy {
    const DELIVERY: Delivery = Delivery::Task;

    fn add_listener(&mut self, _name: &Arc<str>, _index: usize, work: &'static Work) {
        self.listeners.push(work);
    }

    async fn emit(&self, _name: &Arc<str>, seq: u64) {
        if seq.is_multiple_of(2) {
            for work in &self.listeners {
                tokio::spawn(work.handle(seq));
            }
        }
    }
}

/// The smallest run that shows lost or lagged events.
fn ten_emits_one_listener() -> Plan {
    Plan {
        emits: 10,
        names: 1,
        listeners: 1,
        mode: Mode::Count,
        patterns: 0,
    }
}

#[test]
#[should_panic(expected = "did not finish within")]
fn a_system_that_loses_events_fails_the_run() {
    let lossy = Contender::new("lossy", Role::Baseline, |_: &Setup| Lossy::default());
    let plan = ten_emits_one_listener();
    let runtime = Flavor::MultiThread.runtime();
    let _ = lossy.run_guarded(Job::Throughput(plan), &runtime, Duration::from_millis(200));
}

#[test]
#[should_panic(expected = "lagged")]
fn a_lagging_broadcast_receiver_fails_the_run() {
    // Capacity 2 for 10 events: on the current-thread runtime the emitter sends all of them
    // before the receiver runs.
    let small = Contender::new("broadcast", Role::Baseline, |_: &Setup| Broadcast::new(2));
    let plan = ten_emits_one_listener();
    let runtime = Flavor::CurrentThread.runtime();
    let _ = small.run(Job::Throughput(plan), &runtime);
}
