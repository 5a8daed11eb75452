//! /proc readers the benches measure with: process and thread CPU, the
//! machine's ticks, memory, UDP counters, and CPU pinning (taskset).
//! A process is named by anything that prints as its /proc entry: a pid
//! or `"self"`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Clock ticks per second (`getconf CLK_TCK`; 100 if that fails).
pub fn clk_tck() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// Fields of a /proc stat line after the `(comm)` field; index 0 is `state`.
pub fn stat_fields(text: &str) -> Vec<String> {
    let rest = text.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    rest.split_whitespace().map(str::to_string).collect()
}

/// utime + stime of a whole process (every thread, living or exited), in
/// ticks; `None` once it is gone.
pub fn try_proc_ticks(pid: impl Display) -> Option<u64> {
    let f = stat_fields(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?);
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// [`try_proc_ticks`], 0 once the process is gone.
pub fn proc_ticks(pid: impl Display) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f = stat_fields(&text);
    let n = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    n(11) + n(12)
}

/// Per-thread schedstat with the thread names: on-CPU ns, ns waiting on a
/// run queue, and times scheduled in.
pub fn thread_ns(pid: i32) -> BTreeMap<i32, (String, [u64; 3])> {
    let mut m = BTreeMap::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return m;
    };
    for e in dir.flatten() {
        let Ok(tid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let text = std::fs::read_to_string(e.path().join("schedstat")).unwrap_or_default();
        let mut v = [0u64; 3];
        for (slot, x) in v.iter_mut().zip(text.split_whitespace()) {
            *slot = x.parse().unwrap_or(0);
        }
        m.insert(tid, (comm, v));
    }
    m
}

/// CPU time of the calling thread in ns. The short sleep deschedules the
/// thread so that the kernel brings its runtime up to date first.
pub fn this_thread_ns() -> u64 {
    std::thread::sleep(Duration::from_millis(1));
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .expect("/proc/thread-self/schedstat")
}

/// user + nice + system + steal of one /proc/stat `cpu` line's counters.
fn running(counters: &[u64]) -> u64 {
    let at = |i: usize| counters.get(i).copied().unwrap_or(0);
    at(0) + at(1) + at(2) + at(7)
}

fn counters(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// Ticks the whole machine spent running tasks or stolen by the hypervisor
/// (user + nice + system + steal, from /proc/stat's `cpu` line).
pub fn machine_ticks() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("cpu "))
        .map_or(0, |l| running(&counters(l)))
}

/// Ticks each CPU spent running tasks or stolen by the hypervisor
/// (user + nice + system + steal; interrupts are left out, as loopback
/// delivery runs there).
pub fn cpu_ticks() -> Vec<u64> {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    text.lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .is_some_and(|n| n.len() > 3 && n.starts_with("cpu"))
        })
        .map(|l| running(&counters(l)))
        .collect()
}

/// [`cpu_ticks`] of all CPUs together.
pub fn cpu_ticks_total() -> u64 {
    cpu_ticks().iter().sum()
}

/// Busy ticks of every CPU with interrupts (user + nice + system + irq +
/// softirq).
pub fn cpu_busy_with_irq() -> Vec<u64> {
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v = counters(l);
            [0usize, 1, 2, 5, 6].iter().filter_map(|&i| v.get(i)).sum()
        })
        .collect()
}

/// One `Key:` line of /proc/PID/status, trimmed (`key` without the colon).
pub fn status_field(pid: impl Display, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.trim().to_string())
        })
}

/// A `kB` line of /proc/PID/status (`key` without the colon), in KiB.
pub fn status_kib(pid: impl Display, key: &str) -> Option<f64> {
    status_field(pid, key)?
        .strip_suffix(" kB")?
        .trim()
        .parse()
        .ok()
}

/// Every `kB` line of /proc/PID/status.
pub fn status_kib_all(pid: impl Display) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for l in std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
    {
        if let Some((k, v)) = l.split_once(':')
            && let Some(kb) = v.trim().strip_suffix(" kB")
            && let Ok(n) = kb.trim().parse()
        {
            m.insert(k.to_string(), n);
        }
    }
    m
}

/// The `kB` lines of /proc/PID/smaps_rollup named in `keys`.
pub fn smaps_rollup_kib(pid: impl Display, keys: &[&str]) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for l in std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
    {
        if let Some((k, val)) = l.split_once(':')
            && let Some(kb) = val.trim().strip_suffix(" kB")
            && let Ok(n) = kb.trim().parse::<u64>()
            && keys.contains(&k)
        {
            v.push((k.to_string(), n));
        }
    }
    v
}

/// Resident memory by mapping (file name, [heap], [stack], anonymous), largest first.
pub fn smaps_top(pid: impl Display, n: usize) -> Vec<(String, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: BTreeMap<String, u64> = BTreeMap::new();
    let mut cur = String::from("[anon]");
    for l in text.lines() {
        let first = l.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            let name = l.split_whitespace().nth(5).unwrap_or("[anon]");
            cur = Path::new(name)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .filter(|_| name.starts_with('/'))
                .unwrap_or_else(|| name.to_string());
        } else if let Some(v) = l.strip_prefix("Rss:") {
            let kb: u64 = v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0);
            *by.entry(cur.clone()).or_default() += kb;
        }
    }
    let mut v: Vec<_> = by.into_iter().filter(|(_, kb)| *kb > 0).collect();
    v.sort_by_key(|e| std::cmp::Reverse(e.1));
    v.truncate(n);
    v
}

/// UDP counters of the whole machine (`/proc/net/snmp`).
pub fn udp_counters() -> BTreeMap<String, u64> {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
    let mut m = BTreeMap::new();
    if let [names, values] = lines[..] {
        for (k, v) in names
            .split_whitespace()
            .zip(values.split_whitespace())
            .skip(1)
        {
            if let Ok(v) = v.parse() {
                m.insert(k.to_string(), v);
            }
        }
    }
    m
}

/// Datagrams the kernel dropped at the loopback UDP sockets whose local
/// port `want` accepts (receive buffer full): the `drops` column of
/// /proc/net/udp.
pub fn udp_drops(want: impl Fn(u16) -> bool) -> u64 {
    let s = std::fs::read_to_string("/proc/net/udp").unwrap_or_default();
    s.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            want(port).then(|| f.last()?.parse::<u64>().ok()).flatten()
        })
        .sum()
}

/// Bytes queued in the receive buffers of the UDP sockets on the ports
/// `want` accepts (`/proc/net/udp`'s `rx_queue`: what the kernel charges
/// for the packets waiting to be read, not their payload).
pub fn udp_rx_queue(want: impl Fn(u16) -> bool) -> u64 {
    rx_queue_of(
        &std::fs::read_to_string("/proc/net/udp").unwrap_or_default(),
        want,
    )
}

fn rx_queue_of(table: &str, want: impl Fn(u16) -> bool) -> u64 {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            let rx = f.get(4)?.split(':').nth(1)?;
            want(port)
                .then(|| u64::from_str_radix(rx, 16).ok())
                .flatten()
        })
        .sum()
}

/// A /proc/sys value, trimmed (`?` if unreadable).
pub fn sysctl(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Pins every thread of process `pid` to `cpu` (`taskset -a -p`).
pub fn taskset_all(pid: impl Display, cpu: usize) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &pid.to_string()])
        .output()
        .map_err(|e| format!("taskset: {e} (util-linux)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// Sets the nice value of every thread of process `pid` (`renice` on each
/// task: on Linux a nice value belongs to a thread; threads started later
/// inherit their creator's); returns the threads changed.
pub fn renice_all(pid: impl Display, nice: i32) -> Result<usize, String> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).map_err(|e| e.to_string())?;
    let mut n = 0;
    for t in tasks.flatten() {
        let out = Command::new("renice")
            .args(["-n", &nice.to_string(), "-p"])
            .arg(t.file_name())
            .output()
            .map_err(|e| format!("renice: {e} (util-linux)"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        n += 1;
    }
    Ok(n)
}

/// Pins every thread of this process (threads and children started later
/// inherit it) to `cpu`; returns the allowed list the kernel then reports.
pub fn pin_self(cpu: usize) -> Result<String, String> {
    taskset_all(std::process::id(), cpu)?;
    status_field("self", "Cpus_allowed_list").ok_or_else(|| "no Cpus_allowed_list".into())
}

/// The file system type `dir` lives on (`findmnt`).
pub fn fs_type(dir: &Path) -> String {
    Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE", "-T"])
        .arg(dir)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rx_queue_is_summed_for_the_wanted_ports_only() {
        // /proc/net/udp: local port 0x2710 (10000) holds 0x3400 bytes, port
        // 0x2711 0x10, another 0x20 on 10000 (a second socket).
        let table = "   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
 1: 0100007F:2710 00000000:0000 07 00000000:00003400 00:00000000 00000000     0        0 1 2 0000000000000000 5
 2: 0100007F:2711 00000000:0000 07 00000000:00000010 00:00000000 00000000     0        0 2 2 0000000000000000 0
 3: 0100007F:2710 0100007F:2711 01 00000000:00000020 00:00000000 00000000     0        0 3 2 0000000000000000 0
";
        assert_eq!(rx_queue_of(table, |p| p == 10000), 0x3420);
        assert_eq!(rx_queue_of(table, |p| p == 10001), 0x10);
        assert_eq!(rx_queue_of(table, |p| p == 1), 0);
    }
}
