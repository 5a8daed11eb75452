//! docs/BENCHMARKS.md from the benches' JSON results (the `bench-report`
//! binary, which the bench scripts run): the whole document from
//! `pipeline.json`, `relay_load.json` and `phone_leg.json`, and the blocks
//! of the other scripts (`sip`, `identity`, `appliance`, `compare`), each between its
//! `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers.

pub mod appliance;
pub mod compare;
pub mod identity;
pub mod pipeline;
mod pipeline_more;
mod relay;
pub mod sip;
pub mod value;

use std::path::Path;

/// When, at which commit and on what a script measured (its `PREFIX_SECONDS`,
/// `PREFIX_DATE`, `PREFIX_COMMIT` and `PREFIX_MACHINE` variables).
#[derive(Debug, Default)]
pub struct Run {
    pub seconds: String,
    pub date: String,
    pub commit: String,
    pub machine: String,
}

impl Run {
    pub fn from_env(prefix: &str) -> Run {
        let v = |k: &str| std::env::var(format!("{prefix}_{k}")).unwrap_or_default();
        Run {
            seconds: v("SECONDS"),
            date: v("DATE"),
            commit: v("COMMIT"),
            machine: v("MACHINE"),
        }
    }

    /// A block's opening: how to reproduce it (`script`, its time here
    /// and `how`, e.g. `; cargo bench ...`), date, commit and machine.
    pub fn reproduce(&self, script: &str, how: &str) -> String {
        format!(
            "Reproduce with `{script}` ({} s here{how}). {}, commit `{}`, {}",
            self.seconds, self.date, self.commit, self.machine
        )
    }
}

/// The whole document, keeping the blocks other scripts wrote into the old
/// one (in their order, before "## Method and limits").
pub fn write_document(doc: &Path, res: &pipeline::Results, env: &pipeline::Env) {
    let mut l = pipeline::render(res, env);
    let kept = std::fs::read_to_string(doc)
        .map(|t| value::blocks(&t))
        .unwrap_or_default();
    let i = l
        .iter()
        .position(|x| x == "## Method and limits")
        .unwrap_or(l.len());
    for block in kept.into_iter().rev() {
        l.splice(i..i, [block, String::new()]);
    }
    let text = l.join("\n");
    std::fs::write(doc, format!("{}\n", text.trim_end())).unwrap();
}

/// Replaces (or adds) one block of the document.
pub fn write_block(doc: &Path, name: &str, block: &str) {
    let old = std::fs::read_to_string(doc).unwrap_or_else(|_| "# voxgate benchmarks\n".to_string());
    std::fs::write(doc, value::replace_block(&old, name, block)).unwrap();
}
