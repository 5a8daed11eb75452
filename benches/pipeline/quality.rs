//! Speech quality: PESQ-WB of the recording and of the reference encoders.

use super::*;

pub(crate) fn score_json(reference: &Path, degraded: &Path) -> Value {
    let mut j = Value::obj();
    match try_score(reference, degraded) {
        Ok(s) => {
            j.set("pesq_wb", s.pesq_wb)
                .set("stoi", s.stoi)
                .set("offset_ms", s.offset_ms)
                .set("overlap_s", s.overlap_s);
        }
        Err(e) => {
            j.set("error", e);
        }
    }
    j
}

pub(crate) fn opusdec(ogg: &Path, wav: &Path) -> Result<(), String> {
    let out = Command::new("opusdec")
        .args(["--quiet", "--rate", "48000"])
        .arg(ogg)
        .arg(wav)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("opusdec: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "opusdec {}: {}",
            ogg.display(),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Encode with `argv` (an opusenc command writing `ogg`), decode, score.
pub(crate) fn opusenc_score(argv: &[String], ogg: &Path, fx: &Fixture) -> Value {
    let out = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output();
    let mut j = match out {
        Ok(o) if o.status.success() => {
            let wav = ogg.with_extension("wav");
            match opusdec(ogg, &wav) {
                Ok(()) => score_json(&fx.wav, &wav),
                Err(e) => {
                    let mut j = Value::obj();
                    j.set("error", e);
                    j
                }
            }
        }
        Ok(o) => {
            let mut j = Value::obj();
            j.set("error", String::from_utf8_lossy(&o.stderr).into_owned());
            j
        }
        Err(e) => {
            let mut j = Value::obj();
            j.set("error", e.to_string());
            j
        }
    };
    j.set("command", argv.join(" "));
    j
}

/// Packets from the in-process libopus written as Ogg Opus (the relay's
/// recorder), decoded and scored: the codec alone, no network or device.
pub(crate) fn inprocess_score(packets: &[Vec<u8>], n: u32, dir: &Path, fx: &Fixture) -> Value {
    let ogg = dir.join("libopus-inprocess.ogg");
    let write = || -> Result<(), String> {
        let f = std::fs::File::create(&ogg).map_err(|e| e.to_string())?;
        let mut rec = voxgate::relay::recorder::OggOpusRecorder::new(
            std::io::BufWriter::new(f),
            1,
            "voxgate-bench",
        )
        .map_err(|e| e.to_string())?;
        for (i, p) in packets.iter().enumerate() {
            rec.push(i as u16, (i as u32).wrapping_mul(n), p)
                .map_err(|e| e.to_string())?;
        }
        rec.finish().map_err(|e| e.to_string())?;
        Ok(())
    };
    let wav = ogg.with_extension("wav");
    match write().and_then(|()| opusdec(&ogg, &wav)) {
        Ok(()) => score_json(&fx.wav, &wav),
        Err(e) => {
            let mut j = Value::obj();
            j.set("error", e);
            j
        }
    }
}
