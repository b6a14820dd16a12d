//! Parameter declarations (`params => '{"age": "integer"}'`) and the values given to `start`.
//!
//! This module is plain Rust: it validates the shapes and turns JSON values into the text that the
//! declared type's input function will read. Resolving type names and calling input functions is
//! done by `pg::types`, so that a value is always converted by Postgres itself.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{DripError, DripResult};

/// One declared parameter.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDecl {
    pub name: String,
    /// The type as the user wrote it; resolved by Postgres (`to_regtype`).
    pub type_name: String,
    pub default: Option<Value>,
    pub required: bool,
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || !c.is_ascii())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || !c.is_ascii())
}

/// Parse a declaration object. Parameters come back sorted by name, which is also the order of
/// their positional numbers ($1, $2, ...).
pub fn parse_declarations(decl: &Value) -> DripResult<Vec<ParamDecl>> {
    let obj = match decl {
        Value::Object(o) => o,
        Value::Null => return Ok(Vec::new()),
        other => {
            return Err(DripError::BadParamDeclaration(format!(
                "expected a JSON object, got {}",
                json_kind(other)
            )))
        }
    };
    let sorted: BTreeMap<&String, &Value> = obj.iter().collect();
    let mut out = Vec::with_capacity(sorted.len());
    for (name, spec) in sorted {
        if !valid_name(name) {
            return Err(DripError::BadParamDeclaration(format!(
                "\"{name}\" is not a valid parameter name (letters, digits and _, not starting with a digit)"
            )));
        }
        let (type_name, default, required) = match spec {
            Value::String(t) => (t.clone(), None, false),
            Value::Object(o) => {
                for key in o.keys() {
                    if !matches!(key.as_str(), "type" | "default" | "required") {
                        return Err(DripError::BadParamDeclaration(format!(
                            "parameter \"{name}\" has unknown attribute \"{key}\" (expected type, default, required)"
                        )));
                    }
                }
                let t = match o.get("type") {
                    Some(Value::String(t)) => t.clone(),
                    _ => {
                        return Err(DripError::BadParamDeclaration(format!(
                            "parameter \"{name}\" needs a \"type\" string"
                        )))
                    }
                };
                let required = match o.get("required") {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => {
                        return Err(DripError::BadParamDeclaration(format!(
                            "\"required\" of parameter \"{name}\" must be true or false"
                        )))
                    }
                };
                let default = o.get("default").filter(|v| !v.is_null()).cloned();
                (t, default, required)
            }
            other => {
                return Err(DripError::BadParamDeclaration(format!(
                    "parameter \"{name}\" must be a type name or an object, got {}",
                    json_kind(other)
                )))
            }
        };
        if type_name.trim().is_empty() {
            return Err(DripError::BadParamDeclaration(format!(
                "parameter \"{name}\" has an empty type"
            )));
        }
        out.push(ParamDecl {
            name: name.clone(),
            type_name,
            default,
            required,
        });
    }
    Ok(out)
}

/// The canonical JSON form stored in the catalog.
pub fn declarations_to_json(decls: &[ParamDecl]) -> Value {
    let mut m = Map::new();
    for d in decls {
        let mut spec = Map::new();
        spec.insert("type".into(), Value::String(d.type_name.clone()));
        if let Some(def) = &d.default {
            spec.insert("default".into(), def.clone());
        }
        spec.insert("required".into(), Value::Bool(d.required));
        m.insert(d.name.clone(), Value::Object(spec));
    }
    Value::Object(m)
}

/// Positional numbers of the parameters: `$name` -> n (1-based).
pub fn positions(decls: &[ParamDecl]) -> BTreeMap<String, usize> {
    decls
        .iter()
        .enumerate()
        .map(|(i, d)| (d.name.clone(), i + 1))
        .collect()
}

/// Check the values given to `start` against the declarations and fill in defaults.
/// Returns the effective values, one per declaration (JSON null for SQL NULL).
pub fn effective_values(decls: &[ParamDecl], values: &Value) -> DripResult<Vec<Value>> {
    let obj = match values {
        Value::Object(o) => o,
        Value::Null => &Map::new(),
        other => return Err(DripError::ValuesNotAnObject(json_kind(other).into())),
    };
    for key in obj.keys() {
        if !decls.iter().any(|d| &d.name == key) {
            return Err(DripError::UnknownParameter {
                name: key.clone(),
                declared: decls.iter().map(|d| d.name.clone()).collect(),
            });
        }
    }
    decls
        .iter()
        .map(|d| {
            let given = obj.get(&d.name).filter(|v| !v.is_null());
            match (given, &d.default) {
                (Some(v), _) => Ok(v.clone()),
                (None, _) if d.required => Err(DripError::MissingParameter(d.name.clone())),
                (None, Some(def)) => Ok(def.clone()),
                (None, None) => Ok(Value::Null),
            }
        })
        .collect()
}

/// The effective values as a JSON object, as stored in `drip.runs.params`.
pub fn values_to_json(decls: &[ParamDecl], values: &[Value]) -> Value {
    Value::Object(
        decls
            .iter()
            .zip(values)
            .map(|(d, v)| (d.name.clone(), v.clone()))
            .collect(),
    )
}

/// The text handed to the type's input function, or None for SQL NULL.
/// Strings are taken as they are; numbers and booleans by their JSON spelling; a JSON array
/// for an array type becomes an array literal; anything else (for json/jsonb) its JSON text.
pub fn input_text(value: &Value, is_array_type: bool) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Array(items) if is_array_type => Some(array_literal(items)),
        other => Some(other.to_string()),
    }
}

fn array_literal(items: &[Value]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|v| match v {
            Value::Null => "NULL".to_string(),
            Value::Array(inner) => array_literal(inner),
            Value::String(s) => quote_array_element(s),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Object(_) => quote_array_element(&v.to_string()),
        })
        .collect();
    format!("{{{}}}", parts.join(","))
}

/// Double-quote an array element, escaping `"` and `\` as array_in expects.
fn quote_array_element(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_numbers_keep_their_exact_text() {
        // Digits are kept exactly; serde_json only spells an exponent with its sign.
        for (json, text) in [
            ("0.12345678901234567890123", "0.12345678901234567890123"),
            ("1e400", "1e+400"),
            ("-0.0", "-0.0"),
            (
                "12345678901234567890123456789",
                "12345678901234567890123456789",
            ),
        ] {
            let v: Value = serde_json::from_str(json).unwrap();
            assert_eq!(input_text(&v, false).as_deref(), Some(text));
            let arr: Value = serde_json::from_str(&format!("[{json}]")).unwrap();
            assert_eq!(input_text(&arr, true), Some(format!("{{{text}}}")));
        }
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_three_declaration_forms_sorted() {
        let d = parse_declarations(&json!({
            "since": {"type": "date", "required": true},
            "age": "integer",
            "domain": {"type": "text", "default": "example.com"}
        }))
        .unwrap();
        let names: Vec<_> = d.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, vec!["age", "domain", "since"]);
        assert_eq!(d[1].default, Some(json!("example.com")));
        assert!(d[2].required && !d[0].required);
        assert_eq!(positions(&d)["since"], 3);
    }

    #[test]
    fn rejects_bad_declarations() {
        assert!(parse_declarations(&json!([1, 2])).is_err());
        assert!(parse_declarations(&json!({"a": 5})).is_err());
        assert!(parse_declarations(&json!({"a": {"default": 1}})).is_err());
        assert!(parse_declarations(&json!({"a": {"type": "int", "color": 1}})).is_err());
        assert!(parse_declarations(&json!({"1a": "int"})).is_err());
        assert!(parse_declarations(&json!({"a b": "int"})).is_err());
        assert!(parse_declarations(&json!({"a": ""})).is_err());
    }

    #[test]
    fn effective_values_apply_defaults_nulls_and_required() {
        let d = parse_declarations(&json!({
            "age": "integer",
            "domain": {"type": "text", "default": "example.com"},
            "since": {"type": "date", "required": true}
        }))
        .unwrap();
        let v = effective_values(&d, &json!({"since": "2024-01-01"})).unwrap();
        assert_eq!(
            v,
            vec![Value::Null, json!("example.com"), json!("2024-01-01")]
        );
        assert_eq!(
            effective_values(&d, &json!({})).unwrap_err(),
            DripError::MissingParameter("since".into())
        );
        assert!(matches!(
            effective_values(&d, &json!({"since": "x", "color": 1})),
            Err(DripError::UnknownParameter { .. })
        ));
        assert!(matches!(
            effective_values(&d, &json!([1])),
            Err(DripError::ValuesNotAnObject(_))
        ));
    }

    #[test]
    fn input_text_for_each_json_kind() {
        assert_eq!(input_text(&json!(30), false).as_deref(), Some("30"));
        assert_eq!(
            input_text(&json!("thirty"), false).as_deref(),
            Some("thirty")
        );
        assert_eq!(input_text(&json!(null), false), None);
        assert_eq!(input_text(&json!(true), false).as_deref(), Some("true"));
        assert_eq!(
            input_text(&json!([1, null, "a\"b\\c", [2]]), true).as_deref(),
            Some(r#"{1,NULL,"a\"b\\c",{2}}"#)
        );
        assert_eq!(
            input_text(&json!({"k": 1}), false).as_deref(),
            Some(r#"{"k":1}"#)
        );
        assert_eq!(input_text(&json!([1]), false).as_deref(), Some("[1]"));
    }
}
