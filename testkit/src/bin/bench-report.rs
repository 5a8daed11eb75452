//! Renders docs/BENCHMARKS.md from the benches' JSON results; the bench
//! scripts run it after their benches, with the machine facts in the
//! environment (see each script).
//!
//!   bench-report pipeline DOC    the whole document from
//!                                $BENCH_OUT/{pipeline,relay_load,phone_leg}.json
//!                                (keeps the other scripts' blocks)
//!   bench-report sip DOC         the `sip` block from $BS_WORK/{sip_load,phone_leg}.json
//!   bench-report identity DOC    the `identity` block from $BI_OUT/identity.json
//!   bench-report appliance DOC   the `appliance` block from $BA_WORK (start-up
//!                                JSON, systemd-analyze output) and the binaries
//!   bench-report compare DOC     the `compare` block from $BENCH_BEFORE and
//!                                $BENCH_AFTER (each as $BENCH_OUT above, with
//!                                `commit` and, optionally, `aarch64-COMMIT.bytes`)

use std::path::{Path, PathBuf};
use voxgate_testkit::bench::PhoneLegResults;
use voxgate_testkit::report::{
    self, appliance, compare, identity, pipeline, sip, value::load_json,
};

fn dir(var: &str) -> PathBuf {
    PathBuf::from(std::env::var_os(var).unwrap_or_else(|| panic!("{var} is not set")))
}

/// The three results files of one `scripts/bench` run in `out`.
fn results(out: &Path) -> pipeline::Results {
    pipeline::Results {
        pipeline: load_json(&out.join("pipeline.json")),
        relay_load: load_json(&out.join("relay_load.json")),
        // Only when scripts/bench measured the static relay too.
        relay_load_static: {
            let p = out.join("relay_load_static.json");
            if p.exists() {
                load_json(&p)
            } else {
                serde_json::Value::Null
            }
        },
        phone_leg: PhoneLegResults::read(&out.join("phone_leg.json")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(what), Some(doc)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bench-report pipeline|sip|identity|appliance|compare DOC");
        std::process::exit(2);
    };
    let doc = Path::new(doc);
    match what.as_str() {
        "pipeline" => {
            let res = results(&dir("BENCH_OUT"));
            report::write_document(doc, &res, &pipeline::Env::from_env());
            println!("wrote {}", doc.display());
        }
        "sip" => {
            let work = dir("BS_WORK");
            let read = |n: &str| {
                let p = work.join(n);
                let t =
                    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
                serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            };
            let pl = PhoneLegResults::read(&work.join("phone_leg.json"))
                .unwrap_or_else(|e| panic!("{e}"));
            let block = sip::render(&read("sip_load.json"), &pl, &sip::Env::from_env());
            report::write_block(doc, "sip", &block);
            println!("{block}");
        }
        "identity" => {
            let p = dir("BI_OUT").join("identity.json");
            let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let d = serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            let block = identity::render(&d, &identity::Env::from_env());
            report::write_block(doc, "identity", &block);
            println!("{block}");
        }
        "appliance" => {
            let block = appliance::render(&appliance::Env::from_env());
            report::write_block(doc, "appliance", &block);
            println!("{block}");
        }
        "compare" => {
            let side = |var: &str| {
                let out = dir(var);
                let text = |n: &str| {
                    std::fs::read_to_string(out.join(n))
                        .map(|t| t.trim().to_string())
                        .ok()
                };
                let commit = text("commit").unwrap_or_else(|| "?".into());
                let results = results(&out);
                // The full run's ratio, then round2, round3, ... as far as they go.
                let mut cpu_ratios: Vec<f64> =
                    compare::cpu_ratio(&results.pipeline).into_iter().collect();
                for r in 2.. {
                    let p = out.join(format!("round{r}/pipeline.json"));
                    if !p.exists() {
                        break;
                    }
                    cpu_ratios.extend(compare::cpu_ratio(&load_json(&p)));
                }
                compare::Side {
                    aarch64_bytes: text(&format!("aarch64-{commit}.bytes"))
                        .and_then(|t| t.parse().ok()),
                    commit,
                    results,
                    cpu_ratios,
                }
            };
            let block = compare::render(
                &side("BENCH_BEFORE"),
                &side("BENCH_AFTER"),
                &pipeline::Env::from_env(),
            );
            report::write_block(doc, "compare", &block);
            println!("{block}");
        }
        other => {
            eprintln!("bench-report: unknown report {other:?}");
            std::process::exit(2);
        }
    }
}
