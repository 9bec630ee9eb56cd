//! Golden tests: `config` output of known inputs, reviewed and committed as snapshots
//! (`tests/snapshots/`). Update with `INSTA_UPDATE=always cargo test -p skiff-spec --test golden`
//! and review the diff.

use std::path::Path;

use skiff_spec::project::load_str;

fn config_of(path: &Path, env: &[(&str, &str)]) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let loaded = load_str(&[(&name, &text)], env).unwrap_or_else(|e| panic!("{e}"));
    skiff_spec::render::to_yaml(&loaded.project).unwrap()
}

fn corpus(file: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/compose-corpus/valid")
        .join(file)
}

macro_rules! golden {
    ($test:ident, $path:expr) => {
        #[test]
        fn $test() {
            insta::assert_snapshot!(config_of(&$path, &[("TAG", "1.4.2")]));
        }
    };
}

golden!(
    config_of_the_example_stack,
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/compose.yaml")
);
golden!(config_of_web_db_health, corpus("web-db-health.yaml"));
golden!(config_of_interpolation, corpus("interpolation.yaml"));
golden!(
    config_of_extends_configs_secrets,
    corpus("extends-configs-secrets.yaml")
);
golden!(config_of_global_placement, corpus("global-placement.yaml"));
golden!(
    config_of_x_extensions_anchors,
    corpus("x-extensions-anchors.yaml")
);
