//! Any input: interpolation never panics and its result stays within the size bound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_spec::interpolate::{MAX_OUTPUT, interpolate_str};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let lookup = |k: &str| match k {
        "EMPTY" => Some(String::new()),
        "A" => Some("${B}".to_string()),
        "BIG" => Some("x".repeat(4096)),
        _ if k.len() % 2 == 0 => Some(k.to_lowercase()),
        _ => None,
    };
    if let Ok(r) = interpolate_str(text, &lookup) {
        assert!(r.value.len() <= MAX_OUTPUT);
    }
});
