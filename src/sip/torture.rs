//! Parser fixtures after RFC 4475 (SIP torture test messages). Line ends are
//! written as `\n` and converted to CRLF, as in the RFC's encoded messages.
//! The messages are reconstructions of the RFC's, trimmed where a detail
//! (IPv6, multipart bodies) is outside what this parser claims.

use super::message::{Message, ParseError};
use super::uri::Method;

fn crlf(s: &str) -> Vec<u8> {
    s.replace('\n', "\r\n").into_bytes()
}

const WSINV_BODY: &str = "v=0\no=mhandley 29739 7272939 IN IP4 192.0.2.3\ns=-\nc=IN IP4 192.0.2.4\nt=0 0\nm=audio 49217 RTP/AVP 0 12\nm=video 3227 RTP/AVP 31\na=rtpmap:31 LPC\n";

/// RFC 4475 3.1.1.1 "wsinv": folding, escapes, LWS, mixed compact forms.
const WSINV_HEAD: &str = r#"INVITE sip:vivekg@chair-dnrc.example.com;unknownparam SIP/2.0
TO :
 sip:vivekg@chair-dnrc.example.com ;   tag    = 1918181833n
from   : "J Rosenberg \\\""       <sip:jdrosen@example.com>
  ;
  tag = 98asjd8
MaX-fOrWaRdS: 0068
Call-ID: wsinv.ndaksdj@192.0.2.1
Content-Length   : 150
cseq: 0009
  INVITE
Via  : SIP  /   2.0
 /UDP
    192.0.2.2;branch=390skdjuw
s :
NewFangledHeader:   newfangled value
 continued newfangled value
UnknownHeaderWithUnusualValue: ;;,,;;,;
Content-Type: application/sdp
Route:
 <sip:services.example.com;lr;unknownwith=value;unknown-no-value>
v:  SIP  / 2.0  / TCP     spindle.example.com   ;
  branch  =   z9hG4bK9ikj8  ,
 SIP  /    2.0   / UDP  192.168.255.111   ; branch=
 z9hG4bK30239
m:"Quoted string \"\"" <sip:jdrosen@example.com> ; newparam =
      newvalue ;
  secondparam ; q = 0.33

"#;

#[test]
fn wsinv_parses() {
    let mut bytes = crlf(WSINV_HEAD);
    bytes.extend(crlf(WSINV_BODY));
    assert_eq!(crlf(WSINV_BODY).len(), 150);
    let m = Message::parse(&bytes).unwrap();
    assert_eq!(m.method(), Some(&Method::Invite));
    assert_eq!(m.to().unwrap().tag(), Some("1918181833n"));
    assert_eq!(m.from().unwrap().tag(), Some("98asjd8"));
    assert_eq!(
        m.from().unwrap().display.as_deref(),
        Some(r#""J Rosenberg \\\"""#)
    );
    assert_eq!(m.cseq().unwrap().seq, 9);
    assert_eq!(m.headers.get("Max-Forwards"), Some("0068"));
    let vias = m.vias().unwrap();
    assert_eq!(vias.len(), 3);
    assert_eq!(
        (vias[1].transport.as_str(), vias[1].host.as_str()),
        ("TCP", "spindle.example.com")
    );
    assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
    assert_eq!(m.headers.get("Subject"), Some(""));
    assert_eq!(
        m.headers.get("newfangledheader"),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(
        m.headers.get("UnknownHeaderWithUnusualValue"),
        Some(";;,,;;,;")
    );
    let contacts = m.contacts().unwrap();
    assert_eq!(contacts.len(), 1);
    assert_eq!(m.body.len(), 150);
    // What we write parses again to the same headers and body.
    let again = Message::parse(&m.encode()).unwrap();
    let no_cl = |h: &super::header::Headers| {
        h.iter()
            .filter(|h| h.name != "Content-Length")
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(no_cl(&again.headers), no_cl(&m.headers));
    assert_eq!(again.body, m.body);
}

/// RFC 4475 3.1.1.2 "intmeth": unusual token characters everywhere.
#[test]
fn intmeth_parses() {
    let msg = "!interesting-Method0123456789_*+`.%indeed'~ sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com SIP/2.0\nVia: SIP/2.0/TCP host1.example.com;branch=z9hG4bK-.!%66*_+`'~\nTo: \"BEL:\\\x07 NUL:\\\x00 DEL:\\\x7f\" <sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*@example.com>\nFrom: token1~` token2'+_ token3*%!.- <sip:mundane@example.com>;fromParam''~+*_!.-%=\"\u{440}\u{430}\u{431}\u{43e}\u{442}\u{430}\";tag=_token~1'+`*%!-.\nCall-ID: intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{\nCSeq: 139122385 !interesting-Method0123456789_*+`.%indeed'~\nMax-Forwards: 255\nextensionHeader-!.%*+_`'~:\u{feff}\u{5927}\u{505c}\u{96fb}\nContent-Length: 0\n\n";
    let m = Message::parse(&crlf(msg)).unwrap();
    assert_eq!(
        m.method().map(Method::as_str),
        Some("!interesting-Method0123456789_*+`.%indeed'~")
    );
    assert_eq!(m.request_uri().unwrap().host, "example.com");
    assert_eq!(m.from().unwrap().tag(), Some("_token~1'+`*%!-."));
    assert_eq!(m.cseq().unwrap().seq, 139122385);
}

/// RFC 4475 3.1.1.10 "semiuri" and 3.1.1.x "noreason"/"unreason".
#[test]
fn semicolon_user_and_reasonless_responses() {
    let m = Message::parse(&crlf("OPTIONS sip:user;par=u%40example.net@example.com SIP/2.0\nTo: sip:j_user@example.com\nFrom: sip:caller@example.org;tag=33242\nMax-Forwards: 3\nCall-ID: semiuri.0ha0isndaksdj\nCSeq: 8 OPTIONS\nAccept: application/sdp, application/pkcs7-mime,\n        multipart/mixed, multipart/signed,\n        message/sip, message/sipfrag\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKkdjuw\nl: 0\n\n")).unwrap();
    assert_eq!(
        m.request_uri().unwrap().user.as_deref(),
        Some("user;par=u%40example.net")
    );
    assert_eq!(m.headers.get_all("Accept").count(), 6);
    let r = Message::parse(&crlf("SIP/2.0 100 \nVia: SIP/2.0/UDP 192.0.2.105;branch=z9hG4bK2398ndaoe\nCall-ID: noreason.asndj203insdf99223ndf\nCSeq: 35 INVITE\nFrom: <sip:user@example.com>;tag=39ansfi3\nTo: <sip:user@example.edu>;tag=902jndnke3\nContent-Length: 0\n\n")).unwrap();
    assert_eq!(r.code(), Some(100));
    let r = Message::parse(&crlf("SIP/2.0 200 = 2**3 * 5**2 \u{43d}\u{43e} \u{441}\u{442}\u{43e}\nVia: SIP/2.0/UDP 192.0.2.198;branch=z9hG4bK1324923\nCall-ID: unreason.1234ksdfak3j2erwedfsASdf\nCSeq: 35 INVITE\nFrom: sip:user@example.com;tag=11141343\nTo: sip:user@example.edu;tag=2229\nContent-Length: 0\n\n")).unwrap();
    assert_eq!(r.code(), Some(200));
}

fn options_with(extra: &str, first: &str) -> Vec<u8> {
    crlf(&format!(
        "{first}\nVia: SIP/2.0/UDP host4.example.com:5060;branch=z9hG4bKkdju43234\nMax-Forwards: 70\nFrom: <sip:a@example.com>;tag=433423\nTo: <sip:t@example.org>\nCall-ID: x.sdf0234n2nds0a099u23h3hnnw009cdkne3\nCSeq: 3923239 OPTIONS\n{extra}\n"
    ))
}

const OPT_LINE: &str = "OPTIONS sip:user@example.org SIP/2.0";

#[test]
fn invalid_torture_messages_give_clear_errors() {
    let e = |b: Vec<u8>| Message::parse(&b).unwrap_err();
    // 3.1.2.2 "ncl": negative Content-Length.
    assert_eq!(
        e(options_with("Content-Length: -999\n", OPT_LINE)),
        ParseError::BadContentLength
    );
    // 3.1.2.1 "clerr": Content-Length larger than the body.
    assert_eq!(
        e(options_with("Content-Length: 9999\n\nshort", OPT_LINE)),
        ParseError::BodyTruncated
    );
    // 3.1.2.3 "scalar02": CSeq and Max-Forwards out of range.
    let big_cseq = String::from_utf8(options_with("l: 0\n", OPT_LINE))
        .unwrap()
        .replace("3923239 OPTIONS", "36893488147419103232 OPTIONS");
    assert!(matches!(
        e(big_cseq.into_bytes()),
        ParseError::BadHeader { name: "CSeq", .. }
    ));
    let big_mf = String::from_utf8(options_with("l: 0\n", OPT_LINE))
        .unwrap()
        .replace("Max-Forwards: 70", "Max-Forwards: 300");
    assert_eq!(e(big_mf.into_bytes()), ParseError::BadMaxForwards);
    // 3.1.2.7 "quotbal": unterminated quoted string.
    let quot = String::from_utf8(options_with("l: 0\n", OPT_LINE))
        .unwrap()
        .replace(
            "To: <sip:t@example.org>",
            "To: \"Mr. J. User <sip:j.user@example.com>",
        );
    assert!(matches!(
        e(quot.into_bytes()),
        ParseError::BadHeader { name: "To", .. }
    ));
    // 3.1.2.8 "ltgtruri": Request-URI in angle brackets.
    assert_eq!(
        e(options_with(
            "l: 0\n",
            "OPTIONS <sip:user@example.org> SIP/2.0"
        )),
        ParseError::BadRequestUri
    );
    // 3.1.2.9 "lwsruri": LWS inside the Request-URI.
    assert_eq!(
        e(options_with(
            "l: 0\n",
            "OPTIONS sip:user@example.org; lr SIP/2.0"
        )),
        ParseError::BadStartLine
    );
    // 3.1.2.10 "lwsstart": several spaces between start-line elements.
    assert_eq!(
        e(options_with(
            "l: 0\n",
            "OPTIONS  sip:user@example.org  SIP/2.0"
        )),
        ParseError::BadStartLine
    );
    // 3.1.2.11 "trws": trailing whitespace on the request line.
    assert_eq!(
        e(options_with(
            "l: 0\n",
            "OPTIONS sip:user@example.org SIP/2.0 "
        )),
        ParseError::BadStartLine
    );
    // 3.1.2.16 "badvers": unknown protocol version (answer 505).
    assert_eq!(
        e(options_with(
            "l: 0\n",
            "OPTIONS sip:user@example.org SIP/7.0"
        )),
        ParseError::BadVersion
    );
    // 3.1.2.12 "badaspec"-like: spaces inside an addr-spec.
    let aspec = String::from_utf8(options_with("l: 0\n", OPT_LINE))
        .unwrap()
        .replace(
            "To: <sip:t@example.org>",
            "To: \"Watson, Thomas\" < sip:t.watson@example.org >",
        );
    assert!(matches!(
        e(aspec.into_bytes()),
        ParseError::BadHeader { name: "To", .. }
    ));
    // 3.1.2.17 "mismatch01": CSeq method differs from the request method.
    assert_eq!(
        e(options_with(
            "l: 0\n",
            "INVITE sip:user@example.org SIP/2.0"
        )),
        ParseError::CSeqMismatch
    );
    // 3.1.2.? "mcl01": disagreeing Content-Length values.
    assert_eq!(
        e(options_with("Content-Length: 0\nl: 3\n\nabc", OPT_LINE)),
        ParseError::BadContentLength
    );
    // 3.1.2.14 "insuf": mandatory headers missing.
    assert_eq!(
        e(crlf(
            "INVITE sip:user@example.com SIP/2.0\nCSeq: 193942 INVITE\nVia: SIP/2.0/UDP 192.0.2.95;branch=z9hG4bKkdj.insuf\nContent-Length: 0\n\n"
        )),
        ParseError::MissingHeader("From")
    );
}

#[test]
fn bounds_and_garbage() {
    assert!(matches!(
        Message::parse(&[b'x'; 9000]),
        Err(ParseError::TooLarge(_))
    ));
    let mut many = String::from(OPT_LINE);
    many.push('\n');
    for i in 0..100 {
        many.push_str(&format!("X-H{i}: v\n"));
    }
    many.push('\n');
    assert!(matches!(
        Message::parse(&crlf(&many)),
        Err(ParseError::TooManyHeaders(_))
    ));
    let long = options_with(&format!("X-Long: {}\nl: 0\n", "a".repeat(3000)), OPT_LINE);
    assert!(matches!(
        Message::parse(&long),
        Err(ParseError::HeaderTooLong(_))
    ));
    assert_eq!(
        Message::parse(b"\xff\xfe\r\n\r\n"),
        Err(ParseError::BadEncoding)
    );
    assert_eq!(Message::parse(b""), Err(ParseError::Incomplete));
    // A multi-byte character across byte 4 of the first or last token.
    assert_eq!(
        Message::parse(&options_with("l: 0\n", "ABC\u{e9}X sip:a@b SIP/2.0")),
        Err(ParseError::BadStartLine)
    );
    assert_eq!(
        Message::parse(&options_with("l: 0\n", "OPTIONS sip:a@b ABC\u{e9}X")),
        Err(ParseError::BadStartLine)
    );
    assert_eq!(Message::parse(b"\r\n\r\n"), Err(ParseError::Incomplete));
    // Every prefix of a valid message is refused or parsed, never a panic.
    let mut full = crlf(WSINV_HEAD);
    full.extend(crlf(WSINV_BODY));
    for cut in 0..full.len() {
        let _ = Message::parse(&full[..cut]);
    }
}

#[test]
fn datagram_extra_bytes_ignored_and_missing_length_takes_rest() {
    let m = Message::parse(&options_with("Content-Length: 2\n\nabEXTRA", OPT_LINE)).unwrap();
    assert_eq!(m.body, b"ab");
    let m = Message::parse(&options_with("\nrest", OPT_LINE)).unwrap();
    assert_eq!(m.body, b"rest\r\n");
}

#[test]
fn response_copies_and_tags() {
    let req = Message::parse(&options_with("l: 0\n", OPT_LINE)).unwrap();
    let mut r = Message::response_to(&req, 200);
    r.set_to_tag("srv1");
    let parsed = Message::parse(&r.encode()).unwrap();
    assert_eq!(parsed.to().unwrap().tag(), Some("srv1"));
    assert_eq!(parsed.call_id().unwrap(), req.call_id().unwrap());
    assert_eq!(parsed.top_via().unwrap(), req.top_via().unwrap());
    assert!(
        String::from_utf8(r.encode())
            .unwrap()
            .starts_with("SIP/2.0 200 OK\r\n")
    );
}
