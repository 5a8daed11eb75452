//! A phone's media into the recording service: PCMU from a pcap over UDP
//! and TCP signalling, Opus forwarded without transcoding, 30 ms packets
//! repacketized.

use super::*;

#[test]
fn sipp_plays_pcmu_speech_from_a_pcap_into_the_recording_service() {
    pcap_speech_to_901(20);
}

/// A phone that packs 30 ms per packet (a=ptime:30; Opus has no 30 ms
/// frame): the box repacketizes it into 20 ms Opus frames.
#[test]
fn a_tcp_phone_registers_and_calls_with_its_signalling_over_tcp() {
    pcap_speech_to_901_over("t1", 20);
}

#[test]
fn an_opus_phone_is_forwarded_into_the_recording_without_transcoding() {
    let lab = Lab::new("sip-opus", "mode = \"none\"");
    let relay = lab.start_relay();
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let pw = gw.add_phone("201");
    gw.start(&lab);
    // The phone's Opus: speech at 48 kHz encoded by libopus, 20 ms packets.
    let speech = speech_fixture(&lab.dir, TEXT).with_extension("wav");
    let raw = lab.dir.join("speech-48k.s16");
    let st = std::process::Command::new("sox")
        .arg(&speech)
        .args([
            "-r", "48000", "-c", "1", "-e", "signed", "-b", "16", "-t", "raw",
        ])
        .arg(&raw)
        .status()
        .unwrap();
    assert!(st.success(), "sox");
    let pcm: Vec<i16> = std::fs::read(&raw)
        .unwrap()
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut enc =
        opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
    enc.set_bitrate(opus::Bitrate::Bits(24_000)).unwrap();
    let silence = vec![0i16; 960 * 10];
    let mut payloads = Vec::new();
    for frame in silence
        .chunks(960)
        .chain(pcm.chunks(960))
        .chain(silence.chunks(960))
    {
        let mut f = frame.to_vec();
        f.resize(960, 0);
        let mut buf = [0u8; 1275];
        let n = enc.encode(&f, &mut buf).unwrap();
        payloads.push(buf[..n].to_vec());
    }
    let mut packets = Vec::new();
    let mut s = Stream::new(0x5150_0096);
    for (i, p) in payloads.iter().enumerate() {
        packets.push((s.at, rtp(96, i == 0, s.seq, s.ts, s.ssrc, p)));
        s.seq = s.seq.wrapping_add(1);
        s.ts = s.ts.wrapping_add(960);
        s.at += Duration::from_millis(20);
    }
    let scenario = call_playing(&lab.dir.join("speech-opus.pcap"), &packets, s.at, 20)
        .replace(&sdp(20), &sipp_file("opus-sdp.txt"))
        .replace("RTP/AVP 0( 101)?", "RTP/AVP 96( 101)?");
    assert!(scenario.contains("opus/48000/2"));
    let (out, trace) = sipp_call(
        "u1", &lab.dir, &gw, "opus-901", &scenario, "901", "201", &pw,
    );
    assert_call_ok("Opus call to 901", &out, &trace, &gw);
    assert!(trace.contains("media m=audio"), "Opus answered:\n{trace}");
    let rec = finished_call_recording(&relay);
    // Forwarded, not transcoded: the recording holds the phone's own
    // packets, byte for byte (a decode and re-encode never reproduces them).
    let sent: std::collections::HashSet<&[u8]> = payloads.iter().map(|p| p.as_slice()).collect();
    let mut reader = ogg::PacketReader::new(std::fs::File::open(&rec).unwrap());
    let (mut recorded, mut identical) = (0usize, 0usize);
    let mut index = 0;
    while let Some(p) = reader.read_packet().expect("the recording is valid Ogg") {
        index += 1;
        if index <= 2 {
            continue; // OpusHead, OpusTags
        }
        recorded += 1;
        identical += usize::from(sent.contains(p.data.as_slice()));
    }
    let wav = opusdec(&rec);
    let sc = score(&speech, &wav);
    println!(
        "sipp Opus phone -> gateway (forwarded) -> relay 901 recording: {identical} of {} packets \
         recorded verbatim ({recorded} in the recording), PESQ-WB {:.3}, STOI {:.3}",
        payloads.len(),
        sc.pesq_wb,
        sc.stoi
    );
    assert!(
        identical * 100 >= payloads.len() * 95,
        "only {identical} of {} packets reached the recording unchanged",
        payloads.len()
    );
    assert!(sc.overlap_s > sc.ref_duration_s * 0.9, "{sc:?}");
    assert!(sc.pesq_wb > 3.0, "{sc:?}");
    assert_eq!(gw.metric("voxgate_sip_calls_active"), 0.0);
}

#[test]
fn a_phone_at_30_ms_packets_is_repacketized_into_the_recording() {
    pcap_speech_to_901(30);
}

/// A phone at `ptime` ms sends speech from a pcap to 901; the relay's recording is scored.
pub(crate) fn pcap_speech_to_901(ptime: u32) {
    pcap_speech_to_901_over("u1", ptime)
}

/// The phone's signalling goes over `transport` (SIPp's `u1` or `t1`);
/// RTP is UDP either way.
pub(crate) fn pcap_speech_to_901_over(transport: &str, ptime: u32) {
    let lab = Lab::new(&format!("sip-pcap{ptime}-{transport}"), "mode = \"none\"");
    let relay = lab.start_relay();
    let mut gw = SipGateway::configure(&lab, "gw-a", "[\"sha-256\", \"md5\"]", "");
    let pw = gw.add_phone("201");
    gw.start(&lab);
    if transport != "u1" {
        // Registered over the same transport first, as a TCP desk phone does.
        let (ok, trace) = register(transport, &lab.dir, &gw, "201", &pw, 200, "reg-tcp");
        assert!(
            ok,
            "REGISTER over {transport}:\n{trace}\ngateway:\n{}",
            gw.log()
        );
        assert!(trace.contains("SIP/2.0/TCP"), "not over TCP:\n{trace}");
        gw.wait_registered(1.0);
    }
    let speech = speech_fixture(&lab.dir, TEXT).with_extension("wav");
    let ulaw = ulaw_of(&speech, &lab.dir);
    let mut packets = Vec::new();
    let mut s = Stream::new(0x5150_0001);
    s.silence(210, ptime, &mut packets);
    s.pcmu(&ulaw, ptime, &mut packets);
    s.silence(210, ptime, &mut packets);
    let scenario = call_playing(
        &lab.dir.join(format!("speech-pcmu-{ptime}.pcap")),
        &packets,
        s.at,
        ptime,
    );
    let (out, trace) = sipp_call(
        transport, &lab.dir, &gw, "pcap-901", &scenario, "901", "201", &pw,
    );
    assert_call_ok(
        &format!("sipp call to 901 over {transport}"),
        &out,
        &trace,
        &gw,
    );
    assert!(trace.contains("answer direction sendrecv"), "{trace}");
    assert!(trace.contains("media m=audio"), "PCMU answered:\n{trace}");
    let rec = finished_call_recording(&relay);
    let wav = opusdec(&rec);
    let sc = score(&speech, &wav);
    println!(
        "sipp ({transport}) pcap PCMU ptime {ptime} -> gateway -> Opus 8 kHz -> relay 901 recording: PESQ-NB {:?}, PESQ-WB {:.3}, STOI {:.3}, {:.1} s of {:.1} s",
        sc.pesq_nb, sc.pesq_wb, sc.stoi, sc.overlap_s, sc.ref_duration_s
    );
    assert!(sc.overlap_s > sc.ref_duration_s * 0.9, "{sc:?}");
    assert!(sc.stoi > 0.85, "{sc:?}");
    assert!(sc.pesq_nb.unwrap_or(0.0) > 3.0, "{sc:?}");
    let log = gw.log();
    assert!(log.contains("\"to\":\"901\""), "{log}");
    assert!(log.contains("call ended"), "{log}");
    assert_eq!(gw.metric("voxgate_sip_calls_active"), 0.0);
}

/// Phone 201's call that plays `packets` (written to `pcap`, `ptime` ms
/// apart), waits half a second after `end` and hangs up.
fn call_playing(
    pcap: &std::path::Path,
    packets: &voxgate_testkit::rtp::Timed,
    end: Duration,
    ptime: u32,
) -> String {
    write_pcap(pcap, packets);
    call_scenario(
        "201",
        pcap,
        end.as_millis() as u64 + 500,
        ptime,
        false,
        &sipp_file("caller-bye.xml"),
    )
}
