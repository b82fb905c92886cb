//! `cargo bench`: every throughput scenario and the latency scenario as a criterion group per
//! runtime, with every system a benchmark function of the group, so one run compares them.
//!
//! Each iteration is one whole run on a fresh system (`iter_custom` times only the emits and
//! the wait for the last handler call; building the system and its listeners is untimed).
//! Latency percentiles (e) and memory (g) are not criterion's kind of number: the driver
//! (`examples/bench.rs`) reports those.

use std::time::Duration;

use bus_benches::{Flavor, Job, Scenario, contenders};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};

fn throughput(c: &mut Criterion) {
    for scenario in Scenario::THROUGHPUT {
        for flavor in Flavor::ALL {
            let mut group = c.benchmark_group(format!("{}/{}", scenario.slug(), flavor.id()));
            // One iteration is a whole run (up to a few seconds for the slowest systems):
            // flat sampling runs each of the 10 samples with the same small iteration count.
            group
                .sampling_mode(SamplingMode::Flat)
                .sample_size(10)
                .warm_up_time(Duration::from_secs(1))
                .measurement_time(Duration::from_secs(2));
            for contender in contenders() {
                // (h) runs fewer emits on the systems that handle one event at a time.
                let job = contender.job(scenario, 1);
                let Job::Throughput(plan) = job else {
                    unreachable!("a throughput scenario has a throughput job")
                };
                group.throughput(Throughput::Elements(plan.calls()));
                if let Err(not_applicable) = contender.supports(&job) {
                    eprintln!("{}/{}: {not_applicable}", scenario.slug(), contender.name());
                    continue;
                }
                group.bench_function(contender.name(), |b| {
                    let runtime = flavor.runtime();
                    b.iter_custom(|iters| {
                        (0..iters)
                            .map(|_| contender.elapsed(job, &runtime))
                            .sum::<Duration>()
                    });
                });
            }
            group.finish();
        }
    }
}

fn latency(c: &mut Criterion) {
    for flavor in Flavor::ALL {
        let mut group = c.benchmark_group(format!("{}/{}", Scenario::E.slug(), flavor.id()));
        group
            .sample_size(10)
            .warm_up_time(Duration::from_secs(1))
            .measurement_time(Duration::from_secs(2));
        for contender in contenders() {
            group.bench_function(contender.name(), |b| {
                let runtime = flavor.runtime();
                b.iter_custom(|iters| {
                    contender.elapsed(Job::RoundTrips { count: iters }, &runtime)
                });
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().nresamples(20_000).configure_from_args();
    targets = throughput, latency
}
criterion_main!(benches);
