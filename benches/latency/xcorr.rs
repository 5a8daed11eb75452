//! The ground truth of the latency budget: the delay of the output audio
//! behind the input audio, by cross-correlation (the method of issue 17).

/// Mean of |x| over blocks of `n` samples: a 1 kHz envelope at 48 kHz.
fn envelope(x: &[i16], n: usize) -> Vec<f64> {
    x.chunks(n)
        .map(|c| c.iter().map(|&v| f64::from(v).abs()).sum::<f64>() / c.len() as f64)
        .collect()
}

/// Normalised correlation of `a` with `b` delayed by `lag` (b[i + lag] ~ a[i]).
fn corr_at(a: &[f64], b: &[f64], lag: usize) -> f64 {
    let n = a.len().min(b.len().saturating_sub(lag));
    if n == 0 {
        return 0.0;
    }
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (x, y) = (a[i], b[i + lag]);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        0.0
    } else {
        ab / (aa * bb).sqrt()
    }
}

/// Delay of `output` behind `input` over the input's samples `from..to`.
pub(crate) fn segment_delay_ms(
    input: &[i16],
    output: &[i16],
    from: usize,
    to: usize,
    max_ms: usize,
) -> Option<(f64, f64)> {
    let to = to.min(input.len());
    if from >= to || from >= output.len() {
        return None;
    }
    delay_ms(&input[from..to], &output[from..], max_ms)
}

/// Delay of `output` behind `input` (both 48 kHz mono), searched up to
/// `max_ms`: the envelope peak at 1 ms steps, then the waveform peak within
/// ±2 ms of it. Returns (delay in ms, envelope correlation) or `None` when
/// nothing correlates (the output is silence).
pub(crate) fn delay_ms(input: &[i16], output: &[i16], max_ms: usize) -> Option<(f64, f64)> {
    let (ei, eo) = (envelope(input, 48), envelope(output, 48));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (mi, mo) = (mean(&ei), mean(&eo));
    let ei: Vec<f64> = ei.iter().map(|v| v - mi).collect();
    let eo: Vec<f64> = eo.iter().map(|v| v - mo).collect();
    let (best, score) = (0..=max_ms)
        .map(|l| (l, corr_at(&ei, &eo, l)))
        .fold((0, f64::MIN), |m, x| if x.1 > m.1 { x } else { m });
    if score < 0.3 {
        return None;
    }
    let a: Vec<f64> = input.iter().map(|&v| f64::from(v)).collect();
    let b: Vec<f64> = output.iter().map(|&v| f64::from(v)).collect();
    let lo = (best * 48).saturating_sub(96);
    let fine = (lo..=best * 48 + 96)
        .map(|l| (l, corr_at(&a, &b, l)))
        .fold((lo, f64::MIN), |m, x| if x.1 > m.1 { x } else { m });
    // The waveform peak where the codec kept the phase, else the envelope's.
    let ms = if fine.1 > 0.3 {
        fine.0 as f64 / 48.0
    } else {
        best as f64
    };
    Some((ms, score))
}

pub(crate) fn read_raw(path: &std::path::Path) -> Vec<i16> {
    std::fs::read(path)
        .unwrap_or_default()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect()
}
