//! Enrollment load: jobs from many source addresses, offered at rising
//! rates, with floods of wrong tokens beside them.

use super::*;

/// One enrollment attempt: a token, a device, a CSR of a fresh key, the
/// source address.
pub(crate) struct Job {
    pub(crate) token: voxgate::telemetry::Secret<String>,
    pub(crate) device: String,
    pub(crate) csr: String,
    pub(crate) public: Vec<u8>,
    pub(crate) src: IpAddr,
    pub(crate) valid: bool,
}

/// The `k`-th source address of 127.1.0.0 onward (no .0 or .255).
pub(crate) fn source(k: usize) -> IpAddr {
    let a = 1 + k / (254 * 254);
    let b = (k / 254) % 254 + 1;
    let c = k % 254 + 1;
    IpAddr::V4(Ipv4Addr::new(127, a as u8, b as u8, c as u8))
}

/// A fresh P-256 key's CSR (base64 DER) and public point.
pub(crate) fn csr(device: &str) -> (String, Vec<u8>) {
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name.push(rcgen::DnType::CommonName, device);
    let der = p.serialize_request(&kp).unwrap();
    (B64.encode(der.der()), kp.public_key_raw().to_vec())
}

/// Addresses handed out so far (each is used once).
pub(crate) struct Sources(pub(crate) usize);

impl Sources {
    pub(crate) fn next(&mut self) -> IpAddr {
        self.0 += 1;
        source(self.0)
    }
}

/// `n` attempts; every `valid_every`-th (from the first) has a valid token,
/// the others a wrong one (`valid_every == 1`: all valid; 0: none). Tokens are made
/// in one registry transaction, as many `relay token create` would.
pub(crate) fn jobs(
    registry: &Registry,
    sources: &mut Sources,
    n: usize,
    valid_every: usize,
    tag: &str,
) -> Vec<Job> {
    let is_valid = |i: usize| valid_every != 0 && i.is_multiple_of(valid_every);
    let mut tokens = registry
        .atomically(|r| {
            (0..n)
                .filter(|&i| is_valid(i))
                .map(|i| {
                    let device = format!("bench-{tag}-{i}");
                    r.create_token(&device, false, Duration::from_secs(3600), "identity bench")
                        .map(|t| t.secret)
                })
                .collect::<Result<Vec<_>, _>>()
        })
        .expect("tokens")
        .into_iter();
    (0..n)
        .map(|i| {
            let device = format!("bench-{tag}-{i}");
            let (csr, public) = csr(&device);
            let ok = is_valid(i);
            let token = if ok {
                tokens.next().unwrap()
            } else {
                let raw: String = (0..32)
                    .map(|_| b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"[fastrand::usize(..32)] as char)
                    .collect();
                voxgate::telemetry::Secret::new(raw)
            };
            Job {
                token,
                device,
                csr,
                public,
                src: sources.next(),
                valid: ok,
            }
        })
        .collect()
}

#[derive(Debug)]
pub(crate) enum Outcome {
    /// Enrolled; the certificate names the device and carries its key.
    Enrolled(f64),
    /// The relay answered `refused` (a wrong or used token).
    Refused(f64),
    /// The relay's limiter closed the connection.
    Limited(f64),
    Failed(String),
}

pub(crate) async fn enroll_once(
    cfg: quinn::ClientConfig,
    relay: SocketAddr,
    job: Arc<Job>,
) -> Outcome {
    let endpoint = match quinn::Endpoint::client(SocketAddr::new(job.src, 0)) {
        Ok(e) => e,
        Err(e) => return Outcome::Failed(format!("bind {}: {e}", job.src)),
    };
    let t0 = Instant::now();
    let attempt = async {
        let conn = endpoint
            .connect_with(cfg, relay, SERVER_NAME)
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let limited = |conn: &quinn::Connection| {
            matches!(conn.close_reason(), Some(quinn::ConnectionError::ApplicationClosed(a))
                if String::from_utf8_lossy(&a.reason).contains("too many"))
        };
        let exchange = async {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            framed::send(
                &mut send,
                &Message::Enroll(Enroll {
                    token: job.token.expose(),
                    device: &job.device,
                    csr: &job.csr,
                }),
            )
            .await
            .map_err(|e| e.to_string())?;
            let mut reader = FrameReader::new(recv);
            reader
                .next(|m| match m {
                    Message::Enrolled(e) => Ok(Ok(e.cert.to_string())),
                    Message::Error(e) => Ok(Err(e.code.to_string())),
                    other => Err(format!("unexpected answer {other:?}")),
                })
                .await
                .map_err(|e| e.to_string())?
        };
        let answer: Result<Result<String, String>, String> = exchange.await;
        let ms_now = ms(t0.elapsed());
        let out = match answer {
            Ok(Ok(cert)) => {
                let der = B64.decode(cert).map_err(|_| "certificate not base64")?;
                let (_, x) = x509_parser::parse_x509_certificate(&der)
                    .map_err(|_| "certificate does not parse")?;
                if x.public_key().subject_public_key.data.as_ref() != job.public.as_slice() {
                    return Err("certificate for another key".to_string());
                }
                let named = voxgate::pki::name::common_name(&der.clone().into());
                if named.as_deref() != Some(job.device.as_str()) {
                    return Err(format!("certificate names {named:?}"));
                }
                Outcome::Enrolled(ms_now)
            }
            Ok(Err(code)) if code == "refused" => Outcome::Refused(ms_now),
            Ok(Err(code)) => Outcome::Failed(format!("error {code}")),
            Err(_) if limited(&conn) => Outcome::Limited(ms_now),
            Err(e) => Outcome::Failed(e),
        };
        conn.close(0u32.into(), b"done");
        Ok::<_, String>(out)
    };
    let out = match tokio::time::timeout(TIMEOUT, attempt).await {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::Failed("timed out".into()),
    };
    // The endpoint sends the close and drains by itself once dropped.
    drop(endpoint);
    out
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) attempts: usize,
    pub(crate) enrolled: usize,
    pub(crate) refused: usize,
    pub(crate) limited: usize,
    pub(crate) failed: usize,
    pub(crate) first_error: Option<String>,
    pub(crate) latency: Vec<f64>,
}

impl Tally {
    pub(crate) fn add(&mut self, o: Outcome) {
        self.attempts += 1;
        match o {
            Outcome::Enrolled(t) => {
                self.enrolled += 1;
                self.latency.push(t);
            }
            Outcome::Refused(t) => {
                self.refused += 1;
                self.latency.push(t);
            }
            Outcome::Limited(t) => {
                self.limited += 1;
                self.latency.push(t);
            }
            Outcome::Failed(e) => {
                self.failed += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    pub(crate) fn json(&self) -> Value {
        let mut o = Value::obj();
        o.set("attempts", self.attempts)
            .set("enrolled", self.enrolled)
            .set("refused", self.refused)
            .set("limited", self.limited)
            .set("failed", self.failed)
            .set("first_error", self.first_error.clone().unwrap_or_default())
            .set("latency", dist(&self.latency));
        o
    }
}

pub(crate) struct Load<'a> {
    pub(crate) cfg: &'a quinn::ClientConfig,
    pub(crate) relay: SocketAddr,
    pub(crate) relay_pid: String,
    pub(crate) tck: f64,
}

/// Offer `jobs` at `rate` per second (open loop); (valid, wrong) tallies
/// and the step's figures.
pub(crate) async fn offer(load: &Load<'_>, jobs: Vec<Job>, rate: f64) -> (Tally, Tally, Value) {
    let n = jobs.len();
    let cpu = CpuWindow::start(&load.relay_pid, None);
    let mut set = tokio::task::JoinSet::new();
    let mut pending = jobs.into_iter().map(Arc::new);
    let (mut valid, mut wrong) = (Tally::default(), Tally::default());
    let mut missed = 0usize;
    let mut late_ms: f64 = 0.0;
    let t0 = Instant::now();
    let mut next = 0usize;
    while next < n {
        let due = ((t0.elapsed().as_secs_f64() * rate) as usize + 1).min(n);
        let behind = (t0.elapsed().as_secs_f64() - next as f64 / rate) * 1e3;
        late_ms = late_ms.max(behind);
        while next < due {
            let job = pending.next().unwrap();
            next += 1;
            if set.len() >= MAX_IN_FLIGHT {
                missed += 1;
                continue;
            }
            let cfg = load.cfg.clone();
            let relay = load.relay;
            set.spawn(async move {
                let is_valid = job.valid;
                (is_valid, enroll_once(cfg, relay, job).await)
            });
        }
        while let Some(r) = set.try_join_next() {
            if let Ok((v, o)) = r {
                if v { valid.add(o) } else { wrong.add(o) }
            }
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let offered_for = t0.elapsed().as_secs_f64();
    while let Ok(Some(r)) =
        tokio::time::timeout(TIMEOUT + Duration::from_secs(1), set.join_next()).await
    {
        if let Ok((v, o)) = r {
            if v { valid.add(o) } else { wrong.add(o) }
        }
    }
    set.abort_all();
    let elapsed = t0.elapsed().as_secs_f64();
    let (relay_cores, gen_cores, other) = cpu.end(load.tck);
    let mut o = Value::obj();
    o.set("offered_per_s", rate)
        .set("attempts_scheduled", n)
        .set("offered_over_s", offered_for)
        .set("elapsed_s", elapsed)
        .set("achieved_enrolled_per_s", valid.enrolled as f64 / elapsed)
        .set("generator_missed", missed)
        .set("generator_max_late_ms", late_ms)
        .set("relay_cpu_cores", relay_cores)
        .set("generator_cpu_cores", gen_cores)
        .set("other_load_cores", other);
    (valid, wrong, o)
}

/// Waits (at most `QUIET_WAIT`) until the relay is idle (under 5% of a
/// core, so that a step does not start on the backlog of an overloaded
/// one) and the machine quiet (other processes under `QUIET` cores), each
/// over half a second. Returns the time waited.
pub(crate) async fn relay_idle(relay_pid: &str, tck: f64) -> f64 {
    let t0 = Instant::now();
    loop {
        let cpu = CpuWindow::start(relay_pid, None);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (relay, _, other) = cpu.end(tck);
        if (relay < 0.05 && other < QUIET) || t0.elapsed() > QUIET_WAIT {
            return t0.elapsed().as_secs_f64();
        }
    }
}

pub(crate) fn audit_rows(lab: &Lab) -> usize {
    Registry::open(&lab.dir.join("relay/registry.sqlite3"))
        .and_then(|r| r.audit_events())
        .map_or(0, |v| v.len())
}

/// The open-loop ladder of valid enrollments at `rates`: (steps, why it
/// ended, the best passing step's (offered, achieved)).
pub(crate) async fn ladder(
    registry: &Registry,
    sources: &mut Sources,
    load: &Load<'_>,
    rates: &[f64],
) -> (Vec<Value>, String, Option<(f64, f64)>) {
    let started = Instant::now();
    let mut steps = Vec::new();
    let mut best: Option<(f64, f64)> = None;
    let mut end = "all steps passed".to_string();
    for (i, &rate) in rates.iter().enumerate() {
        if started.elapsed() + STEP * 3 > BUDGET {
            end = format!("time budget reached before {rate}/s");
            break;
        }
        let n = (rate * STEP.as_secs_f64()) as usize;
        let jobs = jobs(registry, sources, n, 1, &format!("s{i}"));
        let waited = relay_idle(&load.relay_pid, load.tck).await;
        let (valid, _, mut o) = offer(load, jobs, rate).await;
        o.set("waited_for_idle_relay_s", waited);
        let achieved = o.num("achieved_enrolled_per_s").unwrap_or(0.0);
        let missed = o.num("generator_missed").unwrap_or(0.0);
        let pass = valid.failed == 0
            && valid.refused == 0
            && valid.limited == 0
            && missed == 0.0
            && valid.enrolled == n
            && achieved >= ACHIEVED_MIN * rate;
        o.set("result", valid.json()).set("pass", pass);
        println!(
            "enroll {rate:>6.0}/s offered: {}/{} enrolled, {} refused, {} limited, {} failed, achieved {achieved:.0}/s, p90 {:.1} ms, relay CPU {:.2}, other load {:.2}{}",
            valid.enrolled,
            n,
            valid.refused,
            valid.limited,
            valid.failed,
            quantile(&valid.latency, 0.9).unwrap_or(f64::NAN),
            o.num("relay_cpu_cores").unwrap_or(0.0),
            o.num("other_load_cores").unwrap_or(0.0),
            valid
                .first_error
                .as_deref()
                .map(|e| format!("; first error: {e}"))
                .unwrap_or_default()
        );
        steps.push(o);
        if pass {
            best = Some((rate, achieved));
        } else {
            end = format!("first failing step: {rate}/s offered");
            break;
        }
    }
    (steps, end, best)
}

pub(crate) async fn enrollment(lab: &Lab, load: &Load<'_>) -> Value {
    // Keyed: the tokens' audit rows chain like `relay token create`'s.
    let registry = voxgate_testkit::enroll::registry(lab);
    let mut sources = Sources(0);
    let (steps, end, best) = ladder(&registry, &mut sources, load, &RATES).await;

    // A wrong-token flood from many addresses, with valid enrollments
    // among it.
    let every = ((FLOOD_RATE + FLOOD_VALID_RATE) / FLOOD_VALID_RATE).round() as usize;
    let n = ((FLOOD_RATE + FLOOD_VALID_RATE) * STEP.as_secs_f64()) as usize;
    let flood_jobs = jobs(&registry, &mut sources, n, every, "flood");
    let waited = relay_idle(&load.relay_pid, load.tck).await;
    let audit0 = audit_rows(lab);
    let (fv, fw, mut flood) = offer(load, flood_jobs, FLOOD_RATE + FLOOD_VALID_RATE).await;
    let audit1 = audit_rows(lab);
    flood
        .set("wrong_per_s", FLOOD_RATE)
        .set("valid_per_s", FLOOD_VALID_RATE)
        .set("valid", fv.json())
        .set("wrong", fw.json())
        .set("audit_rows_written", audit1.saturating_sub(audit0))
        .set("waited_for_idle_relay_s", waited);
    println!(
        "wrong-token flood {FLOOD_RATE}/s + valid {FLOOD_VALID_RATE}/s: valid {}/{} enrolled (p90 {:.1} ms), wrong: {} refused, {} limited, {} failed; relay CPU {:.2}",
        fv.enrolled,
        fv.attempts,
        quantile(&fv.latency, 0.9).unwrap_or(f64::NAN),
        fw.refused,
        fw.limited,
        fw.failed,
        flood.num("relay_cpu_cores").unwrap_or(0.0)
    );

    // One address guessing: the limiter's failure budget cuts it off, and
    // then even a valid token from there is refused.
    let one = Ipv4Addr::new(127, 0, 0, 77);
    let mut one_jobs = jobs(&registry, &mut sources, ONE_ADDR_ATTEMPTS + 1, 0, "one");
    let last = one_jobs.len() - 1;
    one_jobs[last] = {
        let mut j = jobs(&registry, &mut sources, 1, 1, "one-valid").remove(0);
        j.valid = true;
        j
    };
    for j in &mut one_jobs {
        j.src = IpAddr::V4(one);
    }
    // Everything from one address: tally the wrong ones, then the valid.
    relay_idle(&load.relay_pid, load.tck).await;
    let (ov, ow, mut single) = offer(load, one_jobs, ONE_ADDR_RATE).await;
    single
        .set("source", one.to_string())
        .set("wrong", ow.json())
        .set("valid_after", ov.json());
    println!(
        "one address, {ONE_ADDR_ATTEMPTS} wrong tokens at {ONE_ADDR_RATE}/s: {} refused, {} limited; then a valid token: {} enrolled, {} limited",
        ow.refused, ow.limited, ov.enrolled, ov.limited
    );

    let mut o = Value::obj();
    o.set("steps", Value::Array(steps))
        .set("end", end.as_str())
        .set("best_offered_per_s", best.map(|b| b.0))
        .set("best_achieved_per_s", best.map(|b| b.1))
        .set("target_per_s", TARGET_ENROLL_PER_S)
        .set(
            "met",
            best.is_some_and(|b| b.0 >= TARGET_ENROLL_PER_S),
        )
        .set("flood", flood)
        .set("one_address_flood", single)
        .set(
            "sources",
            "each attempt from its own loopback address in 127.1.0.0/16, used once; the relay's limiter (burst 5, 5 failures per 10 min per address) is unchanged",
        );
    o
}

// main
