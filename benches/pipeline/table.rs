//! The summary table on stdout, and the exit status: sections that failed.

use super::*;

/// Prints the table of `root` (this run's results, written to `path`);
/// exits with status 1 if a section failed.
pub(crate) fn print_summary(root: &Value, path: &Path, seconds: f64) {
    let part = |k: &str| root.get(k).cloned().unwrap_or(Value::Null);
    let (baseline, file, peers, echo) = (
        part("baseline"),
        part("file_run"),
        part("peers"),
        part("echo_run"),
    );
    let (paced, peer_mem, pesq, binary) = (
        part("paced_run"),
        part("peer_memory"),
        part("pesq"),
        part("binary"),
    );
    // The table.
    let cpu = file.get("cpu").cloned().unwrap_or(Value::Null);
    let lat = file.get("latency").cloned().unwrap_or(Value::Null);
    let mem_off = file.get("memory").cloned().unwrap_or(Value::Null);
    let mem_on = echo.get("memory").cloned().unwrap_or(Value::Null);
    let mib = |j: Option<&Value>, k: &str| j.and_then(|j| j.num(k)).map(|v| v / 1024.0);
    let pair = |a: Option<f64>, b: Option<f64>, d: usize| format!("{} / {}", fmt(a, d), fmt(b, d));
    let mut t = String::new();
    let mut row = |a: &str, b: String, c: String, d: &str| {
        let _ = writeln!(t, "{a:<50} {b:>17} {c:>15} {d:>14}");
    };
    row("figure", "measured".into(), "baseline".into(), "target");
    row(
        "gateway CPU s per audio s (stat / schedstat)",
        pair(
            cpu.num("per_audio_s_stat"),
            cpu.num("per_audio_s_schedstat"),
            5,
        ),
        fmt(baseline.num("per_audio_s"), 5),
        "",
    );
    row(
        "  ratio to libopus alone (stat / schedstat)",
        pair(cpu.num("ratio_stat"), cpu.num("ratio_schedstat"), 3),
        "1".into(),
        "",
    );
    row(
        "  ratio to libopus paced (stat / schedstat)",
        pair(
            cpu.num("ratio_paced_stat"),
            cpu.num("ratio_paced_schedstat"),
            3,
        ),
        fmt(
            paced
                .get("libopus_paced_in_bench")
                .and_then(|p| p.num("per_audio_s")),
            5,
        ),
        &format!("<= {TARGET_CPU_RATIO}"),
    );
    let base = peers.get("debian_baseline").cloned().unwrap_or(Value::Null);
    row(
        "opusenc CPU s per audio s (total / marginal)",
        pair(
            base.num("per_audio_s_total"),
            base.num("per_audio_s_marginal"),
            5,
        ),
        "".into(),
        "",
    );
    if let Some(Value::Array(list)) = peers.get("peers") {
        for p in list {
            let name = match p.get("name") {
                Some(Value::String(s)) => s.clone(),
                _ => "?".into(),
            };
            row(
                &format!("  {name} ratio to opusenc (total / marginal)"),
                pair(p.num("ratio_total"), p.num("ratio_marginal"), 3),
                "1".into(),
                "peer",
            );
        }
    }
    row(
        "capture->send p50 / p99 us, file device",
        pair(lat.num("p50_us"), lat.num("p99_us"), 0),
        "".into(),
        &format!("p99 < {TARGET_P99_US}"),
    );
    row(
        "capture->send p50 / p99 us, paced PulseAudio",
        pair(paced.num("p50_us"), paced.num("p99_us"), 0),
        "".into(),
        &format!("p99 < {TARGET_P99_US}"),
    );
    row(
        "VmRSS / VmHWM MiB, playback off",
        pair(
            mib(Some(&mem_off), "VmRSS"),
            mib(Some(&mem_off), "VmHWM"),
            2,
        ),
        format!("gst {}", fmt(mib(peer_mem.get("gst-launch"), "VmRSS"), 2)),
        "< 8 MiB",
    );
    row(
        "VmRSS / VmHWM MiB, playback on",
        pair(mib(Some(&mem_on), "VmRSS"), mib(Some(&mem_on), "VmHWM"), 2),
        format!("ffmpeg {}", fmt(mib(peer_mem.get("ffmpeg"), "VmRSS"), 2)),
        "< 8 MiB",
    );
    row(
        "PESQ-WB recording (baseline: opusenc)",
        fmt(pesq.get("gateway").and_then(|g| g.num("pesq_wb")), 3),
        fmt(pesq.get("opusenc").and_then(|g| g.num("pesq_wb")), 3),
        &format!("within {TARGET_PESQ_DIFF}"),
    );
    row(
        "stripped binary MiB (x86_64)",
        fmt(binary.num("stripped_bytes").map(|b| b / 1048576.0), 2),
        "".into(),
        "",
    );
    println!(
        "\nvoxgate pipeline benchmark ({:.1} s of speech)\n{t}summary: {}\n",
        seconds,
        path.display()
    );
    let errors: Vec<&str> = [
        ("baseline", &baseline),
        ("file run", &file),
        ("peers", &peers),
        ("echo run", &echo),
        ("paced run", &paced),
        ("peer memory", &peer_mem),
        ("pesq", &pesq),
        ("binary", &binary),
    ]
    .iter()
    .filter(|(_, j)| j.get("error").is_some())
    .map(|(n, _)| *n)
    .collect();
    if !errors.is_empty() {
        eprintln!(
            "pipeline: sections with errors: {errors:?} (see {})",
            path.display()
        );
        std::process::exit(1);
    }
}
