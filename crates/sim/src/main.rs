//! `coopr-sim --seed N` replays one seed and prints its trace when an invariant breaks;
//! `coopr-sim --seeds A..B` runs seeds A to B-1 and stops at the first violation.
//! `--quiet` (no faults) runs the same load on a deployment left alone; `--nodes-per-dc 3`
//! makes each DC a Raft group of three nodes, which also crash and restart; `--witness` runs
//! two DCs and a witness instead of three DCs; `--workers N` sets the workers of each DC's
//! provisioner (default 4; 0: none); `--handovers-only` injects only graceful handovers, which
//! must lose nothing; `--trace` prints a passing seed's events too. With `RUST_LOG` set, the
//! servers' logs go to stderr (`RUST_LOG=coopr_server=debug coopr-sim --seed N`).

use std::process::ExitCode;
use std::time::Instant;

fn usage() -> ExitCode {
    eprintln!(
        "usage: coopr-sim (--seed N | --seeds A..B) [--fault-ms MS] [--nodes-per-dc 1|3] [--workers N] [--witness] [--handovers-only] [--quiet] [--trace]"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // The servers' logs, when asked for (`RUST_LOG=coopr_server=debug coopr-sim --seed N`).
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut seeds = None;
    let mut options = coopr_sim::Options::default();
    let mut verbose = false;
    let mut trace = false;
    let mut i = 0;
    while i < args.len() {
        let value = args.get(i + 1);
        match (args[i].as_str(), value) {
            ("--seed", Some(v)) => {
                let Ok(seed) = v.parse::<u64>() else {
                    return usage();
                };
                seeds = Some(seed..seed + 1);
                verbose = true;
                i += 1;
            }
            ("--seeds", Some(v)) => {
                let Some((a, b)) = v.split_once("..") else {
                    return usage();
                };
                let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) else {
                    return usage();
                };
                seeds = Some(a..b);
                i += 1;
            }
            ("--fault-ms", Some(v)) => {
                let Ok(ms) = v.parse() else {
                    return usage();
                };
                options.fault_ms = ms;
                i += 1;
            }
            ("--nodes-per-dc", Some(v)) => {
                let Ok(n @ (1 | 3)) = v.parse::<u64>() else {
                    return usage();
                };
                options.nodes_per_dc = n;
                i += 1;
            }
            ("--workers", Some(v)) => {
                let Ok(n) = v.parse() else {
                    return usage();
                };
                options.workers_per_dc = n;
                i += 1;
            }
            ("--quiet", _) => options.faults = false,
            ("--trace", _) => trace = true,
            ("--handovers-only", _) => options.handovers_only = true,
            ("--witness", _) => options.sites = coopr_sim::Sites::TWO_DCS_AND_WITNESS,
            _ => return usage(),
        }
        i += 1;
    }
    let Some(seeds) = seeds else {
        return usage();
    };
    let started = Instant::now();
    let mut ran = 0;
    for seed in seeds {
        match coopr_sim::run(seed, &options) {
            Ok(report) => {
                ran += 1;
                if trace {
                    for line in &report.trace {
                        println!("{line}");
                    }
                }
                if verbose {
                    println!("{report}");
                }
            }
            Err(violation) => {
                println!("{violation}");
                let path = std::env::temp_dir().join(format!("coopr-sim-{seed}.trace"));
                if std::fs::write(&path, violation.trace.join("\n")).is_ok() {
                    println!("the whole trace: {}", path.display());
                }
                return ExitCode::FAILURE;
            }
        }
    }
    println!(
        "{ran} seeds held every invariant in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    ExitCode::SUCCESS
}
