//! Any input: loading never panics, and a project that loads renders (`skiff config`) to text
//! that loads back to an equal project.
#![no_main]

use libfuzzer_sys::fuzz_target;
use skiff_spec::project::load_str;
use skiff_spec::render::to_yaml;

const ENV: &[(&str, &str)] = &[("TAG", "1.4.2"), ("EMPTY", "")];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(first) = load_str(&[("compose.yaml", text)], ENV) else { return };
    let out = to_yaml(&first.project).expect("a loaded project renders");
    let second = load_str(&[("compose.yaml", &out)], ENV)
        .unwrap_or_else(|e| panic!("config output does not load again: {e}\n{out}"));
    assert_eq!(first.project, second.project, "config output reads back differently:\n{out}");
});
