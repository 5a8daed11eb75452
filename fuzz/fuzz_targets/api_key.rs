#![no_main]
//! API keys as presented in `Authorization`: any string either fails the
//! format check or splits into an id and secret that compose back to it;
//! scope lists parse or name the unknown scope.
use libfuzzer_sys::fuzz_target;
use voxgate::relay::api_key;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = api_key::parse(s) {
        assert_eq!(api_key::compose(p.id, p.secret), s);
        assert!(api_key::valid_id(p.id));
    }
    if let Ok(scopes) = api_key::Scopes::parse(s) {
        assert_eq!(api_key::Scopes::parse(&scopes.to_string()), Ok(scopes));
    }
});
