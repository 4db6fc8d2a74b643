//! The simulation in CI: 200 seeds of 8 s of simulated faults each (two tests, so that both
//! cores run seeds), plus the same load on a deployment left alone, which must lose nothing.
//! A failing seed prints its trace and the command that reruns it. The long run is
//! `cargo run --release -p coopr-sim -- --seeds 0..10000` (see README).

fn run_seeds(seeds: std::ops::Range<u64>) {
    let options = coopr_sim::Options {
        fault_ms: 8_000,
        faults: true,
    };
    for seed in seeds {
        if let Err(violation) = coopr_sim::run(seed, &options) {
            panic!("{violation}");
        }
    }
}

#[test]
fn seeds_0_to_99_hold_every_invariant() {
    run_seeds(0..100);
}

#[test]
fn seeds_100_to_199_hold_every_invariant() {
    run_seeds(100..200);
}

/// Without faults nothing is lost and every create is acknowledged once.
#[test]
fn a_quiet_deployment_loses_nothing() {
    let options = coopr_sim::Options {
        fault_ms: 8_000,
        faults: false,
    };
    let report = coopr_sim::run(7, &options).unwrap_or_else(|v| panic!("{v}"));
    assert_eq!(report.reported_lost, 0, "{report:?}");
    assert_eq!(report.faults, 0);
    assert!(report.acknowledged > 20, "{report:?}");
}
