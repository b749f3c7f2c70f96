//! Values as the upstream will read them: the operation's variables checked against their
//! declared types and resolved (passed, else default, else absent), and every argument turned
//! into JSON with the variables substituted, so `f(a: 1)` and `f(a: $a)` with `{"a": 1}` give the
//! same arguments.

use std::cell::Cell;
use std::collections::HashMap;

use apollo_parser::cst;
use serde_json::{Map, Number, Value};

use super::error::GraphqlError;
use super::types::{name_of, TypeRef as Ty};

/// The JSON type of a value, for messages that must not echo the value itself.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Whether `v` may be passed for a variable of type `ty`. Scalars are checked by their
/// built-in names; a type named `…Input` must be an object (GraphQL's convention for input
/// objects, GitHub's included); other named types (enums, custom scalars) are the schema's to
/// check, and the contract's argument schema checks them after substitution.
fn fits(ty: &Ty, v: &Value, at: &str) -> Result<(), String> {
    let wrong = |want: &str| Err(format!("{at} must be {want} but is {}", kind(v)));
    match (ty, v) {
        (Ty::NonNull(_), Value::Null) => {
            Err(format!("{at} is null, but its type does not allow null"))
        }
        (Ty::NonNull(inner), _) => fits(inner, v, at),
        (_, Value::Null) => Ok(()),
        (Ty::List(inner), Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| fits(inner, item, &format!("{at}[{i}]"))),
        // GraphQL coerces a single value to a list of one.
        (Ty::List(inner), _) => fits(inner, v, at),
        (Ty::Named(name), _) => match name.as_str() {
            "Int" if is_int32(v) => Ok(()),
            "Int" => wrong("a 32-bit integer (Int)"),
            "Float" if v.is_number() => Ok(()),
            "Float" => wrong("a number (Float)"),
            "String" if v.is_string() => Ok(()),
            "String" => wrong("a string (String)"),
            "Boolean" if v.is_boolean() => Ok(()),
            "Boolean" => wrong("a boolean (Boolean)"),
            "ID" if v.is_string() || v.is_i64() || v.is_u64() => Ok(()),
            "ID" => wrong("a string or an integer (ID)"),
            n if n.ends_with("Input") && !v.is_object() => wrong(&format!("an object ({n})")),
            _ => Ok(()),
        },
    }
}

fn is_int32(v: &Value) -> bool {
    let fits32 = |f: f64| f.fract() == 0.0 && f >= f64::from(i32::MIN) && f <= f64::from(i32::MAX);
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => i32::try_from(i).is_ok(),
            None => n.as_f64().is_some_and(fits32),
        },
        _ => false,
    }
}

/// The operation's variables: what each resolves to (`None`: not given and no default, so an
/// argument that names it is left out, as GraphQL does).
#[derive(Debug, Default)]
pub(super) struct Variables {
    /// Each variable's value and its size as JSON.
    values: HashMap<String, (Option<Value>, usize)>,
    /// Bytes of arguments built so far, over every field the walk visits.
    spent: Cell<usize>,
}

/// The arguments of a whole document, variables substituted, at most (as JSON bytes): a
/// variable used many times (or a fragment with arguments spread many times) cannot make
/// toolgate build more than this.
pub(super) const MAX_ARGUMENT_BYTES: usize = 8 * 1024 * 1024;

impl Variables {
    /// Declared variables checked against what was passed. Passed variables the operation
    /// does not declare reach no field, and are left to the upstream.
    pub(super) fn resolve(
        defs: Option<cst::VariableDefinitions>,
        passed: &Map<String, Value>,
    ) -> Result<Variables, GraphqlError> {
        let mut values = HashMap::new();
        for def in defs.iter().flat_map(|d| d.variable_definitions()) {
            let name = name_of(def.variable().and_then(|v| v.name()));
            let ty = def.ty().map_or(Ty::unknown(), Ty::of);
            let err = |why: String| GraphqlError::Variable {
                name: name.clone(),
                why,
            };
            if values.contains_key(&name) {
                return Err(err("is declared twice".into()));
            }
            let default = match def.default_value().and_then(|d| d.value()) {
                Some(v) => const_value(v).map_err(|why| err(format!("default value: {why}")))?,
                None => None,
            };
            let value = match passed.get(&name) {
                Some(v) => {
                    fits(&ty, v, "the value passed")
                        .map_err(|why| err(format!("declared {}: {why}", ty.show())))?;
                    Some(v.clone())
                }
                None => default,
            };
            if value.is_none() && matches!(ty, Ty::NonNull(_)) {
                return Err(err(format!(
                    "is declared {} but no value was passed in variables",
                    ty.show()
                )));
            }
            let size = value
                .as_ref()
                .map_or(0, |v| serde_json::to_vec(v).map_or(0, |b| b.len()));
            values.insert(name, (value, size));
        }
        Ok(Variables {
            values,
            spent: Cell::new(0),
        })
    }

    fn get(&self, name: &str) -> Result<Option<Value>, String> {
        let (value, size) = self.values.get(name).ok_or_else(|| {
            format!("variable ${name} is used but the operation does not declare it")
        })?;
        self.charge(*size)?;
        Ok(value.clone())
    }

    /// Counts `bytes` of arguments built, refusing past [`MAX_ARGUMENT_BYTES`].
    fn charge(&self, bytes: usize) -> Result<(), String> {
        let spent = self.spent.get().saturating_add(bytes);
        self.spent.set(spent);
        match spent > MAX_ARGUMENT_BYTES {
            true => Err(format!(
                "the document's arguments, variables put in, come to more than {MAX_ARGUMENT_BYTES} bytes: pass each value once"
            )),
            false => Ok(()),
        }
    }
}

/// A value with no variables in it (a default value).
fn const_value(v: cst::Value) -> Result<Option<Value>, String> {
    value(v, None)
}

/// A constant value (a default, in a document or a schema) as JSON: an enum value is its name,
/// a variable is refused.
pub fn constant(v: cst::Value) -> Result<Value, String> {
    value(v, None).map(|v| v.unwrap_or(Value::Null))
}

/// A field's (or directive's) arguments as one JSON object, variables substituted. An argument
/// given twice is refused: the upstream might read either.
pub(super) fn arguments(
    args: Option<cst::Arguments>,
    vars: &Variables,
    field: &str,
) -> Result<Value, GraphqlError> {
    let mut out = Map::new();
    let mut seen = std::collections::HashSet::new();
    for arg in args.iter().flat_map(|a| a.arguments()) {
        let name = name_of(arg.name());
        if !seen.insert(name.clone()) {
            return Err(GraphqlError::Invalid(format!(
                "argument {name} of {field} is given twice"
            )));
        }
        let Some(v) = arg.value() else { continue };
        let v = value(v, Some(vars))
            .map_err(|why| GraphqlError::Invalid(format!("argument {name} of {field}: {why}")))?;
        if let Some(v) = v {
            out.insert(name, v);
        }
    }
    Ok(Value::Object(out))
}

/// One value as JSON (`None`: a variable that was not given). `vars` is `None` where variables
/// are not allowed (default values).
fn value(v: cst::Value, vars: Option<&Variables>) -> Result<Option<Value>, String> {
    // Every value built counts (a string by its length): defaults are built once, from the
    // document itself.
    if let Some(vars) = vars {
        let bytes = match &v {
            cst::Value::StringValue(s) => usize::from(cst::CstNode::syntax(s).text().len()),
            _ => 8,
        };
        vars.charge(bytes)?;
    }
    Ok(Some(match v {
        cst::Value::Variable(var) => {
            let name = name_of(var.name());
            let Some(vars) = vars else {
                return Err(format!("a default value cannot use variable ${name}"));
            };
            return vars.get(&name);
        }
        cst::Value::StringValue(s) => Value::String(String::from(&s)),
        cst::Value::IntValue(i) => {
            let text = i
                .int_token()
                .map(|t| t.text().to_string())
                .unwrap_or_default();
            let n: i64 = text
                .parse()
                .map_err(|_| format!("integer {text} is out of range"))?;
            Value::Number(n.into())
        }
        cst::Value::FloatValue(f) => {
            let text = f
                .float_token()
                .map(|t| t.text().to_string())
                .unwrap_or_default();
            text.parse::<f64>()
                .ok()
                .and_then(Number::from_f64)
                .map(Value::Number)
                .ok_or_else(|| format!("number {text} is out of range"))?
        }
        cst::Value::BooleanValue(b) => Value::Bool(b.true_token().is_some()),
        cst::Value::NullValue(_) => Value::Null,
        // An enum value reads as its name, as the same value passed in variables does.
        cst::Value::EnumValue(e) => Value::String(name_of(e.name())),
        cst::Value::ListValue(list) => {
            let mut items = Vec::new();
            for item in list.values() {
                // A list item naming a variable that was not given is null.
                items.push(value(item, vars)?.unwrap_or(Value::Null));
            }
            Value::Array(items)
        }
        cst::Value::ObjectValue(obj) => {
            let mut out = Map::new();
            let mut seen = std::collections::HashSet::new();
            for field in obj.object_fields() {
                let name = name_of(field.name());
                if !seen.insert(name.clone()) {
                    return Err(format!("input field {name} is given twice"));
                }
                let Some(v) = field.value() else { continue };
                if let Some(v) = value(v, vars)? {
                    out.insert(name, v);
                }
            }
            Value::Object(out)
        }
    }))
}
