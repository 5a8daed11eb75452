//! Refusals (404, busy) and a cancel between two boxes reach the other phone.

use super::*;

#[test]
fn refusals_and_cancel_between_two_boxes_reach_the_other_phone() {
    let TwoBoxLab {
        boxes: TwoBoxes { a, b, pa, .. },
        callee_port,
        lab,
        ..
    } = &two_boxes("sip-refuse");
    // An extension nobody registered: 404 to the caller.
    let s = caller_until_invite(
        "201",
        &fill(&sipp_file("caller-refused.xml"), &[("CODE", "404")]),
    );
    let (out, trace) = sipp_call("u1", &lab.dir, a, "to-399", &s, "399", "201", pa);
    assert!(
        out.status.success(),
        "404 for 399:\n{trace}\nA:\n{}",
        a.log()
    );
    // B's phone is busy: its 486 reaches A's phone as 486.
    let port = callee_port.to_string();
    for (name, callee, rest) in [
        (
            "busy",
            sipp_file("callee-busy.xml"),
            fill(&sipp_file("caller-refused.xml"), &[("CODE", "486")]),
        ),
        (
            "cancel",
            sipp_file("callee-rings-until-cancel.xml"),
            sipp_file("caller-cancels.xml"),
        ),
    ] {
        let run = Sipp {
            bin: &sipp37(),
            dir: &lab.dir,
            name: &format!("callee-{name}"),
            scenario: &callee,
            target: &format!("127.0.0.1:{}", b.sip_port),
            args: &["-p", &port, "-timeout", "20s"],
            limit: Duration::from_secs(25),
        }
        .spawn();
        let s = caller_until_invite("201", &rest);
        let (out, trace) = sipp_call(
            "u1",
            &lab.dir,
            a,
            &format!("caller-{name}"),
            &s,
            "301",
            "201",
            pa,
        );
        let st = wait_child(run, Duration::from_secs(25));
        let callee_out =
            std::fs::read_to_string(lab.dir.join(format!("callee-{name}.out"))).unwrap_or_default();
        assert!(
            out.status.success(),
            "{name}: caller:\n{trace}\nA:\n{}\nB:\n{}",
            a.log(),
            b.log()
        );
        assert!(
            st.success(),
            "{name}: callee:\n{callee_out}\nB:\n{}",
            b.log()
        );
    }
    for gw in [&a, &b] {
        wait_for(Duration::from_secs(5), "no call left", || {
            gw.metric("voxgate_sip_calls_active") == 0.0
        });
    }
    assert!(b.log().contains("phone refused the call"), "{}", b.log());
}
