//! The run: call load steps and call rate steps against one gateway.

use super::*;

pub(crate) struct Bench {
    pub(crate) lab: Lab,
    pub(crate) metrics_addr: std::net::SocketAddr,
    pub(crate) target: String,
    /// The extensions the sipps play, one a sipp.
    pub(crate) phones: Vec<Phone>,
    pub(crate) rtp_ports: (u16, u16),
    pub(crate) sip_port: u16,
    pub(crate) gw_pid: i32,
    pub(crate) relay_pid: i32,
    pub(crate) tck: f64,
    pub(crate) started: Instant,
}

pub(crate) struct Snap {
    pub(crate) at: Instant,
    pub(crate) m: Metrics,
    pub(crate) gw_ticks: u64,
    pub(crate) relay_ticks: u64,
    pub(crate) cpus: Vec<u64>,
    pub(crate) udp_err: u64,
    pub(crate) rss_kib: f64,
}

impl Bench {
    pub(crate) fn snap(&self) -> Snap {
        Snap {
            at: Instant::now(),
            m: metrics(self.metrics_addr),
            gw_ticks: proc_ticks(self.gw_pid),
            relay_ticks: proc_ticks(self.relay_pid),
            cpus: cpu_busy_with_irq(),
            udp_err: udp_drops(|p| {
                (self.rtp_ports.0..=self.rtp_ports.1).contains(&p) || p == self.sip_port
            }),
            rss_kib: status_kib(self.gw_pid, "VmRSS").unwrap_or(f64::NAN),
        }
    }

    pub(crate) fn left(&self) -> Duration {
        BUDGET.saturating_sub(self.started.elapsed())
    }

    pub(crate) fn active(&self) -> f64 {
        metrics(self.metrics_addr)
            .get("voxgate_sip_calls_active")
            .unwrap_or(f64::NAN)
    }

    /// Wait (bounded) until the gateway has no call and no lingering
    /// transaction keeps it busy.
    pub(crate) fn wait_idle(&self, max: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < max && self.active() > 0.0 {
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Starts `calls` calls at `cps` in all, spread evenly over `phones`
    /// sipps (at most the bench's extensions), each one extension with its
    /// own scenario file (its credentials) and at most `CALLS_PER_PHONE`
    /// calls at once.
    fn sipps(
        &self,
        name: &str,
        scenario: &str,
        phones: usize,
        calls: usize,
        cps: usize,
        bound: Duration,
    ) -> Vec<Sipp> {
        let k = phones.clamp(1, self.phones.len()).min(calls.max(1));
        (0..k)
            .map(|i| {
                let phone = &self.phones[i];
                let mine = calls / k + usize::from(i < calls % k);
                let file = self.lab.dir.join(format!("{name}-{}.xml", phone.ext));
                write_scenario(&file, scenario, phone);
                start_sipp(
                    &self.lab.dir,
                    &format!("{name}-{}", phone.ext),
                    &self.target,
                    &file,
                    (i, phone),
                    mine,
                    (cps * mine).div_ceil(calls.max(1)).max(1),
                    CALLS_PER_PHONE,
                    bound,
                )
            })
            .collect()
    }

    pub(crate) fn step(&self, n: usize, audio: &Path) -> BTreeMap<String, f64> {
        let ramp = Duration::from_secs_f64(n as f64 / RAMP_CPS as f64);
        // Every call holds until the window after the last one is up is over.
        let hold = ramp + SETTLE + MEASURE + Duration::from_secs(3);
        let bound = ramp + hold + Duration::from_secs(25);
        let phones = n.div_ceil(CALLS_PER_PHONE);
        let sipp = self.sipps(
            &format!("step-{n}"),
            &scenario(audio, hold),
            phones,
            n,
            RAMP_CPS,
            bound,
        );
        let mut r = BTreeMap::new();
        r.insert("calls".into(), n as f64);
        // Wait for every call to be up (or the ramp to be clearly over).
        let t0 = Instant::now();
        while t0.elapsed() < ramp + Duration::from_secs(5) && self.active() < n as f64 {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(SETTLE);
        let a = self.snap();
        std::thread::sleep(MEASURE);
        let b = self.snap();
        let res = finish_all(sipp, &self.lab.dir);
        self.wait_idle(Duration::from_secs(20));
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let d = |k: &str| match (a.m.get(k), b.m.get(k)) {
            (Some(x), Some(y)) => y - x,
            _ => f64::NAN,
        };
        let active = b.m.get("voxgate_sip_calls_active").unwrap_or(f64::NAN);
        let gw_core = (b.gw_ticks - a.gw_ticks) as f64 / self.tck / secs * 100.0;
        let relay_core = (b.relay_ticks - a.relay_ticks) as f64 / self.tck / secs * 100.0;
        let cpu0 = b.cpus.first().copied().unwrap_or(0) - a.cpus.first().copied().unwrap_or(0);
        let cpu1 = b.cpus.get(1).copied().unwrap_or(0) - a.cpus.get(1).copied().unwrap_or(0);
        let expected = n as f64 * secs * 1000.0 / PTIME_MS as f64;
        let rtp_in = d("voxgate_phone_rtp_received_total");
        let up_sent = d("voxgate_phone_uplink_datagrams_total");
        let up_conc = d("voxgate_phone_uplink_concealed_total");
        let relay_in = d("voxgate_phone_relay_received_total");
        let rtp_out = d("voxgate_phone_rtp_sent_total");
        let down_conc = d("voxgate_phone_downlink_concealed_total");
        let up_loss = up_conc / (up_sent.max(1.0));
        let rt_loss = 1.0 - relay_in / up_sent.max(1.0);
        let down_loss = down_conc / rtp_out.max(1.0);
        let rtp_in_share = rtp_in / expected;
        let udp_drops = (b.udp_err - a.udp_err) as f64;
        r.insert("active".into(), active);
        r.insert("gateway_core_pct".into(), gw_core);
        r.insert("relay_core_pct".into(), relay_core);
        r.insert(
            "cpu0_busy_pct".into(),
            cpu0 as f64 / self.tck / secs * 100.0,
        );
        r.insert(
            "cpu1_busy_pct".into(),
            cpu1 as f64 / self.tck / secs * 100.0,
        );
        r.insert("rtp_in_share".into(), rtp_in_share);
        r.insert("uplink_concealed".into(), up_loss);
        r.insert("relay_roundtrip_loss".into(), rt_loss);
        r.insert("downlink_concealed".into(), down_loss);
        r.insert("rtp_out_per_s".into(), rtp_out / secs);
        r.insert("udp_drops".into(), udp_drops);
        r.insert("rss_kib".into(), b.rss_kib);
        r.insert("sipp_successful".into(), res.successful);
        r.insert("sipp_failed".into(), res.failed);
        r.insert("sipp_signal".into(), res.signal.map_or(f64::NAN, f64::from));
        r.insert("sipp_ok".into(), f64::from(u8::from(res.ok)));
        for (q, k) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
            r.insert(
                format!("phone_to_send_{k}_ms"),
                quantile(&a.m, &b.m, q).map_or(f64::NAN, |s| s * 1e3),
            );
        }
        let have_metrics = !up_sent.is_nan();
        let mut why = Vec::new();
        if active < n as f64 {
            why.push(format!("{active} of {n} calls up"));
        }
        if !res.ok || res.failed > 0.0 {
            why.push(format!("sipp: {} failed calls", res.failed));
        }
        if gw_core >= MAX_CORE {
            why.push(format!("gateway core {gw_core:.0}%"));
        }
        if udp_drops > 0.0 {
            why.push(format!(
                "kernel dropped {udp_drops} datagrams to the gateway"
            ));
        }
        let up_share = up_sent / expected;
        r.insert("uplink_sent_share".into(), up_share);
        if have_metrics {
            if rtp_in_share < 1.0 - MAX_LOSS {
                why.push(format!("phone RTP received {:.1}%", rtp_in_share * 100.0));
            }
            if up_share < 1.0 - MAX_LOSS {
                why.push(format!("uplink datagrams sent {:.1}%", up_share * 100.0));
            }
            if rt_loss >= MAX_LOSS {
                why.push(format!("relay round trip lost {:.2}%", rt_loss * 100.0));
            }
        }
        // Concealment (frames late or missing at the jitter buffers) is
        // reported, not judged: it follows the timing of sipp's RTP and of
        // the relay's echo, both on the shared CPU 0.
        let mut notes = Vec::new();
        if up_loss >= MAX_LOSS {
            notes.push(format!("uplink concealed {:.2}%", up_loss * 100.0));
        }
        if down_loss >= MAX_LOSS {
            notes.push(format!("downlink concealed {:.2}%", down_loss * 100.0));
        }
        let _ = std::fs::write(
            self.lab.dir.join(format!("step-{n}.notes")),
            notes.join("; "),
        );
        r.insert("keeps_up".into(), f64::from(u8::from(why.is_empty())));
        let _ = std::fs::write(self.lab.dir.join(format!("step-{n}.why")), why.join("; "));
        r
    }

    pub(crate) fn rate(&self, cps: usize, audio: &Path) -> BTreeMap<String, f64> {
        let calls = cps * RATE_SECONDS;
        let a = self.snap();
        let bound = Duration::from_secs((RATE_SECONDS + 30) as u64);
        // A call lasts its hold and about a second of set-up and BYE: that
        // many calls at once, spread over phones of `CALLS_PER_PHONE`.
        let at_once = cps * (RATE_HOLD.as_secs() as usize + 1);
        let phones = (at_once.div_ceil(CALLS_PER_PHONE) * 3).div_ceil(2);
        let sipp = self.sipps(
            &format!("rate-{cps}"),
            &scenario(audio, RATE_HOLD),
            phones,
            calls,
            cps,
            bound,
        );
        let res = finish_all(sipp, &self.lab.dir);
        let b = self.snap();
        self.wait_idle(Duration::from_secs(20));
        let secs = b.at.duration_since(a.at).as_secs_f64();
        let full = match (
            a.m.get("voxgate_sip_transactions_full_total"),
            b.m.get("voxgate_sip_transactions_full_total"),
        ) {
            (Some(x), Some(y)) => y - x,
            _ => f64::NAN,
        };
        let mut r = BTreeMap::new();
        r.insert("cps".into(), cps as f64);
        r.insert("calls".into(), calls as f64);
        r.insert("sipp_successful".into(), res.successful);
        r.insert("sipp_failed".into(), res.failed);
        r.insert("sipp_signal".into(), res.signal.map_or(f64::NAN, f64::from));
        r.insert("transactions_full".into(), full);
        r.insert(
            "max_transactions_live".into(),
            b.m.get("voxgate_sip_transactions").unwrap_or(f64::NAN),
        );
        r.insert(
            "gateway_core_pct".into(),
            (b.gw_ticks - a.gw_ticks) as f64 / self.tck / secs * 100.0,
        );
        let ok = res.ok && res.failed == 0.0 && res.successful == calls as f64 && full <= 0.0;
        r.insert(
            "keeps_up".into(),
            f64::from(u8::from(
                ok || (res.ok && full.is_nan() && res.failed == 0.0),
            )),
        );
        r
    }
}

/// Waits for every sipp of a step; their calls counted together, the step
/// ok only when every one was.
fn finish_all(sipps: Vec<Sipp>, dir: &Path) -> SippResult {
    let mut all = SippResult {
        ok: true,
        ..SippResult::default()
    };
    for s in sipps {
        let r = s.finish(dir);
        all.ok &= r.ok;
        all.successful += r.successful;
        all.failed += r.failed;
        all.signal = all.signal.or(r.signal);
    }
    all
}
