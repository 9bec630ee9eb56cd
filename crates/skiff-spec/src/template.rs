//! Config templates (`configs.<name>.x-skiff.template: true`): checked when a release is
//! made, rendered per instance by the agent.
//!
//! A template reads four names: `values` (the environment's values), `service("x")` (how the
//! instance reaches service `x`: `.address`, `.host`, `.port`), `instance` (its `index`,
//! `name`, `service`, `stack`, `env`, `release`, `host`, `port`, `ports`) and `env` (the
//! instance's environment). Anything else is an error here, not at an instance's start.

use std::collections::BTreeMap;

use indexmap::IndexMap;
use skiff_model::StackSpec;

use crate::model::Service;

/// The names a template may read.
pub const NAMES: [&str; 4] = ["values", "service", "instance", "env"];

/// Work one render may do (minijinja fuel): bounds a hostile template's time.
pub const FUEL: u64 = 1_000_000;

/// Checks a template's syntax, that it reads only [`NAMES`], and that every `service("x")` it
/// calls names a service of the file.
pub fn check(text: &str, services: &IndexMap<String, Service>) -> Result<(), String> {
    let env = environment();
    let template = env.template_from_str(text).map_err(|e| describe(&e))?;
    let mut unknown: Vec<String> = template
        .undeclared_variables(false)
        .into_iter()
        .filter(|n| !NAMES.contains(&n.as_str()))
        .collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        return Err(format!(
            "reads {name:?}, which no template has: use values.KEY (the environment's values), \
             service(\"x\"), instance or env"
        ));
    }
    for name in crate::validate::template_services(text) {
        if !services.contains_key(&name) {
            return Err(format!("service({name:?}) names no service of this file"));
        }
    }
    Ok(())
}

/// Gives `spec` the environment's `values`, and each template config the values it reads
/// (all of them when it reads `values` as a whole, e.g. in a loop). A value a template reads
/// and `values` lacks is an error naming the service, the config and the key.
pub fn apply_values(spec: &mut StackSpec, values: &BTreeMap<String, String>) -> Result<(), String> {
    let env = environment();
    let mut missing = Vec::new();
    for (service, svc) in &mut spec.services {
        for config in svc.configs.iter_mut().filter(|c| c.template) {
            let Ok(template) = env.template_from_str(&config.content) else {
                continue; // checked when the spec was made
            };
            let read = template.undeclared_variables(true);
            config.values = if read.contains("values") {
                values.clone()
            } else {
                let mut wanted = BTreeMap::new();
                for key in read.iter().filter_map(|n| n.strip_prefix("values.")) {
                    match values.get(key) {
                        Some(v) => {
                            wanted.insert(key.to_string(), v.clone());
                        }
                        None => missing.push(format!(
                            "service {service}: config {}: the template reads values.{key}, \
                             which the environment does not set",
                            config.name
                        )),
                    }
                }
                wanted
            };
        }
    }
    spec.values = values.clone();
    if missing.is_empty() {
        Ok(())
    } else {
        missing.sort();
        missing.dedup();
        Err(missing.join("\n"))
    }
}

/// The environment every config template is read and rendered in: strict about undefined
/// names, bounded by [`FUEL`].
pub fn environment() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    // A config file keeps its last newline (Jinja drops it by default).
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    env
}

/// A minijinja error in one line, with the template line it points at.
pub fn describe(e: &minijinja::Error) -> String {
    let what = e
        .detail()
        .map(|d| format!("{}: {d}", e.kind()))
        .unwrap_or_else(|| e.kind().to_string());
    match e.line() {
        Some(line) => format!("{what} (template line {line})"),
        None => what,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::{ConfigFile, ServiceSpec};

    fn services(names: &[&str]) -> IndexMap<String, Service> {
        names
            .iter()
            .map(|n| (n.to_string(), Service::default()))
            .collect()
    }

    #[test]
    fn a_template_may_read_values_services_instance_and_env() {
        let text = "db={{ service(\"db\").address }} i={{ instance.index }} \
                    p={{ env.PORT }} mode={{ values.MODE | default(\"x\") }}";
        check(text, &services(&["db", "web"])).unwrap();
    }

    #[test]
    fn a_syntax_error_names_its_line() {
        let e = check("ok\n{{ values.A ", &services(&[])).unwrap_err();
        assert!(e.contains("syntax error") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn a_name_no_template_has_is_refused() {
        let e = check("{{ database_url }}", &services(&[])).unwrap_err();
        assert!(e.contains("\"database_url\""), "{e}");
    }

    #[test]
    fn a_service_the_file_lacks_is_refused() {
        let e = check("{{ service(\"mysql\").address }}", &services(&["db"])).unwrap_err();
        assert!(e.contains("service(\"mysql\")"), "{e}");
    }

    fn spec_with(template: &str) -> StackSpec {
        let svc = ServiceSpec {
            configs: vec![ConfigFile {
                name: "app".into(),
                target: "/app.conf".into(),
                content: template.into(),
                template: true,
                ..Default::default()
            }],
            ..Default::default()
        };
        StackSpec {
            services: [("web".to_string(), svc)].into(),
            ..Default::default()
        }
    }

    fn values(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_template_keeps_only_the_values_it_reads() {
        let mut spec = spec_with("{{ values.A }} {{ values.B }}");
        apply_values(&mut spec, &values(&[("A", "1"), ("B", "2"), ("C", "3")])).unwrap();
        let c = &spec.services["web"].configs[0];
        assert_eq!(c.values, values(&[("A", "1"), ("B", "2")]));
        assert_eq!(spec.values.len(), 3);
    }

    #[test]
    fn a_template_that_reads_values_whole_or_by_subscript_keeps_them_all() {
        for text in [
            "{% for k, v in values|items %}{{ k }}={{ v }}\n{% endfor %}",
            "{{ values['A'] }}",
        ] {
            let mut spec = spec_with(text);
            apply_values(&mut spec, &values(&[("A", "1"), ("C", "3")])).unwrap();
            assert_eq!(spec.services["web"].configs[0].values.len(), 2, "{text}");
        }
    }

    #[test]
    fn a_value_the_environment_lacks_names_service_config_and_key() {
        let mut spec = spec_with("{{ values.DB_NAME }}");
        let e = apply_values(&mut spec, &values(&[])).unwrap_err();
        assert!(
            e.contains("service web") && e.contains("config app") && e.contains("DB_NAME"),
            "{e}"
        );
    }

    #[test]
    fn a_hostile_template_runs_out_of_fuel() {
        let env = environment();
        let t = env
            .template_from_str(
                "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            )
            .unwrap();
        let e = t.render(()).unwrap_err();
        assert!(describe(&e).contains("fuel"), "{}", describe(&e));
    }
}
