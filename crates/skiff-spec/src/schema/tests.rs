use crate::project::load_str;

fn err(yaml: &str, env: &[(&str, &str)]) -> String {
    match load_str(&[("compose.yaml", yaml)], env) {
        Ok(_) => panic!("should be rejected:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_schema_compiles() {
    let _ = &*super::SCHEMA;
}

#[test]
fn interpolated_values_are_cast_where_compose_casts_them() {
    // `required` is boolean-only in the schema; compose-go casts the interpolated string.
    let yaml = "services:\n  web:\n    image: nginx\n    depends_on:\n      db:\n        \
                condition: service_started\n        required: ${REQ}\n  db:\n    image: pg\n";
    load_str(&[("compose.yaml", yaml)], &[("REQ", "false")]).unwrap();
    assert_eq!(
        err(yaml, &[("REQ", "maybe")]),
        "compose.yaml:7:19: services.web.depends_on.db.required: expected a boolean, got \"maybe\""
    );
}

#[test]
fn x_keys_are_allowed_everywhere_and_every_error_is_listed_in_order() {
    let yaml = "x-top: 1\nservices:\n  web:\n    image: nginx\n    x-any: {a: 1}\n    \
                healthcheck: {x-h: 1, retries: many, intervall: 1s}\n    ports:\n      - \
                {target: 80, x-p: 1, bogus: 2}\n";
    assert_eq!(
        err(yaml, &[]),
        "compose.yaml:6:42: services.web.healthcheck.intervall: unknown field, did you mean \
         \"interval\"?\ncompose.yaml:8:30: services.web.ports[0].bogus: unknown field (only fields \
         starting with x- may be added)"
    );
}

#[test]
fn an_override_file_is_checked_merged_with_the_files_before_it() {
    let base = "services:\n  web:\n    image: nginx\n";
    let over = "services:\n  web:\n    restart: [always]\n";
    let e = load_str(&[("compose.yaml", base), ("override.yaml", over)], &[])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "override.yaml:3:14: services.web.restart: expected a string, got a sequence"
    );
}
