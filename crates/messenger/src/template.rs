//! Message templates in MiniJinja (Jinja2 syntax). A template has a subject, a text body and
//! optionally an HTML body (auto-escaped). Templates are checked when stored (a syntax error
//! names its part and line) and rendered when a message is accepted, with **strict undefined
//! variables**: a variable the request did not give is an error, never an empty string.
//!
//! This module does no I/O; rendering is bounded by MiniJinja's fuel so a runaway loop ends.

use minijinja::{Environment, UndefinedBehavior};
use std::collections::BTreeSet;

/// The work one render may do (MiniJinja fuel: about one unit per instruction).
const FUEL: u64 = 2_000_000;
/// The largest rendered part, in bytes.
const MAX_OUTPUT: usize = 256 * 1024;

/// A template's source parts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source<'a> {
    pub subject: &'a str,
    pub body: &'a str,
    pub html: Option<&'a str>,
}

/// A rendered message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    /// One line: line breaks become spaces, surrounding space is trimmed.
    pub subject: String,
    pub body: String,
    pub html: Option<String>,
}

/// Why a template could not be stored or rendered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{part}{}: {detail}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
pub struct TemplateError {
    /// `subject`, `body` or `html`.
    pub part: &'static str,
    /// The line in that part, when known.
    pub line: Option<usize>,
    /// What is wrong.
    pub detail: String,
}

/// Part names double as template names: the `.html` one is auto-escaped.
const PARTS: [(&str, &str); 3] = [
    ("subject", "subject.txt"),
    ("body", "body.txt"),
    ("html", "body.html"),
];

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env
}

fn parts<'a>(src: &Source<'a>) -> impl Iterator<Item = (&'static str, &'static str, &'a str)> {
    let texts = [Some(src.subject), Some(src.body), src.html];
    PARTS
        .into_iter()
        .zip(texts)
        .filter_map(|((part, name), text)| text.map(|t| (part, name, t)))
}

fn error(part: &'static str, e: &minijinja::Error) -> TemplateError {
    let detail = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    TemplateError {
        part,
        line: e.line(),
        detail,
    }
}

/// Checks the syntax of every part; returns the variables the template uses, sorted.
pub fn check(src: &Source<'_>) -> Result<Vec<String>, TemplateError> {
    let env = environment();
    let mut vars = BTreeSet::new();
    for (part, name, text) in parts(src) {
        let t = env
            .template_from_named_str(name, text)
            .map_err(|e| error(part, &e))?;
        vars.extend(t.undeclared_variables(false));
    }
    Ok(vars.into_iter().collect())
}

/// Renders every part with `vars` (a JSON object).
pub fn render(src: &Source<'_>, vars: &serde_json::Value) -> Result<Rendered, TemplateError> {
    let env = environment();
    let ctx = minijinja::Value::from_serialize(vars);
    let mut out: [Option<String>; 3] = [None, None, None];
    for (part, name, text) in parts(src) {
        let slot = match part {
            "subject" => 0,
            "body" => 1,
            _ => 2,
        };
        let t = env
            .template_from_named_str(name, text)
            .map_err(|e| error(part, &e))?;
        let s = t.render(&ctx).map_err(|e| error(part, &e))?;
        if s.len() > MAX_OUTPUT {
            return Err(TemplateError {
                part,
                line: None,
                detail: format!("renders to {} bytes, more than {MAX_OUTPUT}", s.len()),
            });
        }
        out[slot] = Some(s);
    }
    let [subject, body, html] = out;
    let subject = subject
        .unwrap_or_default()
        .split(['\r', '\n'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    Ok(Rendered {
        subject,
        body: body.unwrap_or_default(),
        html,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn src<'a>(subject: &'a str, body: &'a str, html: Option<&'a str>) -> Source<'a> {
        Source {
            subject,
            body,
            html,
        }
    }

    #[test]
    fn renders_every_part_and_escapes_only_html() {
        let s = src(
            "Low battery: {{ vehicle }}\n",
            "{{ vehicle }} is at {{ battery }}% <{{ zone }}>",
            Some("<b>{{ zone }}</b>"),
        );
        let r = render(&s, &json!({"vehicle": "sc-1", "battery": 9, "zone": "a&b"})).unwrap();
        assert_eq!(r.subject, "Low battery: sc-1");
        assert_eq!(r.body, "sc-1 is at 9% <a&b>");
        assert_eq!(r.html.as_deref(), Some("<b>a&amp;b</b>"));
        assert_eq!(
            check(&s).unwrap(),
            vec!["battery".to_owned(), "vehicle".into(), "zone".into()]
        );
    }

    #[test]
    fn a_missing_variable_is_an_error_not_an_empty_string() {
        let s = src("Hi", "line one\n{{ present }} {{ missing }}", None);
        let e = render(&s, &json!({"present": 1})).unwrap_err();
        assert_eq!(e.part, "body");
        assert_eq!(e.line, Some(2));
        assert!(e.detail.contains("undefined"), "{e}");
        // Attribute of a missing object, and a missing one inside `if`, are errors too.
        assert!(render(&src("{{ a.b }}", "", None), &json!({})).is_err());
    }

    #[test]
    fn syntax_errors_name_the_part_and_line() {
        let e = check(&src("ok", "one\ntwo\n{% if x %}never closed", None)).unwrap_err();
        assert_eq!(e.part, "body");
        assert_eq!(e.line, Some(3));
        assert!(
            e.to_string().starts_with("body, line 3: syntax error"),
            "{e}"
        );
        let e = check(&src("ok", "ok", Some("{{ }}"))).unwrap_err();
        assert_eq!(e.part, "html");
    }

    #[test]
    fn a_runaway_loop_runs_out_of_fuel() {
        let s = src(
            "x",
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            None,
        );
        let e = render(&s, &json!({})).unwrap_err();
        assert!(e.detail.contains("fuel"), "{e}");
    }
}
