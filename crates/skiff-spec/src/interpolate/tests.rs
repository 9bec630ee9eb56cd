use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::node::{Limits, parse};

fn env() -> HashMap<&'static str, &'static str> {
    HashMap::from([
        ("TAG", "1.4.2"),
        ("EMPTY", ""),
        ("B", "bee"),
        ("lower", "yes"),
    ])
}

fn run(s: &str) -> Result<String, InterpolateError> {
    let e = env();
    interpolate_str(s, &|k: &str| e.get(k).map(|v| v.to_string())).map(|r| r.value)
}

#[test]
fn the_compose_spec_table() {
    for (input, want) in [
        ("$TAG", "1.4.2"),
        ("${TAG}", "1.4.2"),
        ("v${TAG}-x", "v1.4.2-x"),
        ("${UNSET:-d}", "d"),
        ("${EMPTY:-d}", "d"),
        ("${UNSET-d}", "d"),
        ("${EMPTY-d}", ""),
        ("${TAG:-d}", "1.4.2"),
        ("${TAG:+r}", "r"),
        ("${EMPTY:+r}", ""),
        ("${EMPTY+r}", "r"),
        ("${UNSET+r}", ""),
        ("${UNSET:+r}", ""),
        ("$$HOME", "$HOME"),
        ("$${PATH}", "${PATH}"),
        ("${UNSET:-${TAG}}", "1.4.2"),
        ("${UNSET:-${ALSO_UNSET:-deep}}", "deep"),
        ("${UNSET:-a-b:c}", "a-b:c"),
        ("${lower}", "yes"),
        ("$1 and $ alone and $-", "$1 and $ alone and $-"),
        ("cost: 5$", "cost: 5$"),
        ("${UNSET}", ""),
        ("$UNSET.x", ".x"),
    ] {
        assert_eq!(run(input).as_deref(), Ok(want), "{input}");
    }
}

#[test]
fn required_variables_fail_with_their_message() {
    assert_eq!(
        run("${UNSET:?set UNSET to the database URL}")
            .unwrap_err()
            .to_string(),
        "required variable UNSET is missing a value: set UNSET to the database URL"
    );
    assert!(run("${EMPTY:?no}").is_err());
    assert_eq!(run("${EMPTY?no}").as_deref(), Ok(""));
    assert_eq!(
        run("${UNSET?}").unwrap_err().to_string(),
        "required variable UNSET is missing a value"
    );
    assert_eq!(run("${TAG:?x}").as_deref(), Ok("1.4.2"));
}

#[test]
fn bad_templates_are_syntax_errors() {
    for bad in [
        "${", "${}", "${TAG", "${1X}", "${TAG:x}", "${TAG x}", "${ TAG}",
    ] {
        assert!(
            matches!(run(bad), Err(InterpolateError::Syntax { .. })),
            "{bad}: {:?}",
            run(bad)
        );
    }
}

#[test]
fn unset_variables_are_reported_once_each() {
    let r = interpolate_str("$A ${A} ${B:-x} $C", &|_| None).unwrap();
    assert_eq!(r.unset, vec!["A", "C"]);
}

#[test]
fn tree_interpolation_positions_errors_and_types_results_as_strings() {
    let mut doc = parse(
        "c.yaml",
        "services:\n  web:\n    environment:\n      DB: ${UNSET_VAR:?set it}\n",
        &Limits::default(),
    )
    .unwrap()
    .remove(0);
    let e = interpolate_tree(&mut doc, "", &|_| None, &mut Vec::new()).unwrap_err();
    assert_eq!(
        e.to_string(),
        "c.yaml:4:11: services.web.environment.DB: required variable UNSET_VAR is missing a value: set it"
    );

    let mut doc = parse("c.yaml", "n: ${N}\nkeep: 3\n$K: 1\n", &Limits::default())
        .unwrap()
        .remove(0);
    let mut warnings = Vec::new();
    interpolate_tree(
        &mut doc,
        "",
        &|k| (k == "N").then(|| "3".to_string()),
        &mut warnings,
    )
    .unwrap();
    let m = doc.as_map().unwrap();
    assert!(matches!(&m.get("n").unwrap().value, Value::Scalar(s) if s.text == "3" && !s.plain));
    assert!(matches!(&m.get("keep").unwrap().value, Value::Scalar(s) if s.plain));
    assert!(m.contains_key("$K"), "keys are never interpolated");
    assert!(warnings.is_empty());
}

proptest! {
    #[test]
    fn text_without_dollar_is_unchanged(s in "[^$]*") {
        prop_assert_eq!(run(&s).unwrap(), s);
    }

    #[test]
    fn escaping_every_dollar_round_trips(s in ".*") {
        let escaped = s.replace('$', "$$");
        prop_assert_eq!(run(&escaped).unwrap(), s);
    }

    #[test]
    fn colon_dash_defaults_when_unset_or_empty(v in proptest::option::of("[a-z0-9 ]{0,8}"), d in "[a-z0-9 ]{0,8}") {
        let got = interpolate_str("${V:-DEF}".replace("DEF", &d).as_str(), &|k| if k == "V" { v.clone() } else { None }).unwrap().value;
        let want = match &v { Some(x) if !x.is_empty() => x.clone(), _ => d.clone() };
        prop_assert_eq!(got, want);
    }

    #[test]
    fn dash_defaults_only_when_unset(v in proptest::option::of("[a-z0-9 ]{0,8}"), d in "[a-z0-9 ]{0,8}") {
        let got = interpolate_str(&format!("${{V-{d}}}"), &|k| if k == "V" { v.clone() } else { None }).unwrap().value;
        prop_assert_eq!(got, v.clone().unwrap_or(d));
    }

    #[test]
    fn colon_plus_replaces_only_when_set_and_not_empty(v in proptest::option::of("[a-z0-9]{0,8}"), r in "[a-z0-9]{0,8}") {
        let got = interpolate_str(&format!("${{V:+{r}}}"), &|k| if k == "V" { v.clone() } else { None }).unwrap().value;
        let want = match &v { Some(x) if !x.is_empty() => r.clone(), Some(x) => x.clone(), None => String::new() };
        prop_assert_eq!(got, want);
    }

    #[test]
    fn never_panics_and_stays_bounded(s in "[${}:?+a-zA-Z_ -]{0,64}") {
        if let Ok(r) = interpolate_str(&s, &|k| Some(k.repeat(3))) {
            prop_assert!(r.value.len() <= MAX_OUTPUT);
        }
    }
}
