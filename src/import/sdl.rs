//! A GraphQL schema (SDL) as `contracts graphql` reads it: parsed with apollo-parser's CST, never
//! with patterns, into owned types: the root operation types, each object type's fields with
//! their arguments, input objects, enums and scalars, with descriptions and deprecations.
//! Interfaces and unions are only named (they are output types: no argument can take one).
//! Type extensions (`extend type Mutation { … }`, `extend input …`, `extend enum …`,
//! `extend schema { … }`) are merged into what they extend.

use std::collections::BTreeMap;

use apollo_parser::cst;
use serde_json::Value;

use crate::graphql::{constant as const_value, name_of, OperationType, TypeRef as Ty};

/// The parser's nesting limit: SDL nests only in list types and default values.
const PARSER_RECURSION: usize = 500;

/// An argument of a field, or a field of an input object.
#[derive(Debug, Clone)]
pub(super) struct InputValue {
    pub name: String,
    pub ty: Ty,
    /// Whether the SDL gives a default (which makes the value optional).
    pub has_default: bool,
    /// The default value, as JSON (an enum value is its name), when it reads as a constant.
    pub default: Option<Value>,
    pub description: Option<String>,
    /// `@deprecated`: its reason.
    pub deprecated: Option<String>,
}

impl InputValue {
    /// GraphQL requires a value for a non-null argument or input field without a default.
    pub(super) fn required(&self) -> bool {
        self.ty.is_non_null() && !self.has_default
    }
}

/// A field of an object type (a root field, when the type is a root operation type).
#[derive(Debug, Clone)]
pub(super) struct Field {
    pub name: String,
    pub description: Option<String>,
    pub deprecated: Option<String>,
    pub arguments: Vec<InputValue>,
}

#[derive(Debug, Clone)]
pub(super) struct EnumValue {
    pub name: String,
    pub description: Option<String>,
    pub deprecated: Option<String>,
}

/// A named type of the schema.
#[derive(Debug, Clone)]
pub(super) enum TypeDef {
    Object {
        fields: Vec<Field>,
    },
    Input {
        description: Option<String>,
        fields: Vec<InputValue>,
        /// `@oneOf`: exactly one field is given.
        one_of: bool,
    },
    Enum {
        description: Option<String>,
        values: Vec<EnumValue>,
    },
    Scalar {
        description: Option<String>,
    },
    /// An interface or a union: an output type, named only.
    Output(&'static str),
}

/// The schema's types and its root operation types.
#[derive(Debug, Default)]
pub(super) struct Sdl {
    pub types: BTreeMap<String, TypeDef>,
    /// From `schema { … }` (and `extend schema`); empty when the SDL has none.
    roots: BTreeMap<OperationType, String>,
}

impl Sdl {
    /// Parses an SDL document. The error says where (line and column) and what is wrong.
    pub(super) fn parse(text: &str) -> Result<Sdl, String> {
        let tree = apollo_parser::Parser::new(text)
            .recursion_limit(PARSER_RECURSION)
            .parse();
        if let Some(e) = tree.errors().next() {
            let (line, column) = position(text, e.index());
            return Err(format!("{} at line {line}, column {column}", e.message()));
        }
        let doc = tree.document();
        let mut sdl = Sdl::default();
        // Definitions first, then the extensions, whichever order the file has them in.
        for def in doc.definitions() {
            sdl.define(def, text)?;
        }
        for def in doc.definitions() {
            sdl.extend(def)?;
        }
        Ok(sdl)
    }

    /// The name of the type of `op`'s root: as `schema { … }` says, else `Query`, `Mutation` or
    /// `Subscription` when the SDL has no schema definition.
    pub(super) fn root(&self, op: OperationType) -> Option<&str> {
        if !self.roots.is_empty() {
            return self.roots.get(&op).map(String::as_str);
        }
        let name = match op {
            OperationType::Query => "Query",
            OperationType::Mutation => "Mutation",
            OperationType::Subscription => "Subscription",
        };
        self.types.contains_key(name).then_some(name)
    }

    fn define(&mut self, def: cst::Definition, text: &str) -> Result<(), String> {
        use cst::Definition as D;
        let (name, ty) = match def {
            D::OperationDefinition(_) | D::FragmentDefinition(_) => {
                let at = def_position(&def, text);
                return Err(format!(
                    "an operation or fragment (a request, not a schema) at {at}: give the schema's type definitions (schema.graphql)"
                ));
            }
            D::SchemaDefinition(s) => return self.roots_of(s.root_operation_type_definitions()),
            D::ObjectTypeDefinition(o) => (
                o.name(),
                TypeDef::Object {
                    fields: fields(o.fields_definition()),
                },
            ),
            D::InputObjectTypeDefinition(i) => (
                i.name(),
                TypeDef::Input {
                    description: description(i.description()),
                    fields: input_fields(i.input_fields_definition()),
                    one_of: has_directive(i.directives(), "oneOf"),
                },
            ),
            D::EnumTypeDefinition(e) => (
                e.name(),
                TypeDef::Enum {
                    description: description(e.description()),
                    values: enum_values(e.enum_values_definition()),
                },
            ),
            D::ScalarTypeDefinition(s) => (
                s.name(),
                TypeDef::Scalar {
                    description: description(s.description()),
                },
            ),
            D::InterfaceTypeDefinition(i) => (i.name(), TypeDef::Output("interface")),
            D::UnionTypeDefinition(u) => (u.name(), TypeDef::Output("union")),
            _ => return Ok(()),
        };
        let name = name_of(name);
        if self.types.insert(name.clone(), ty).is_some() {
            return Err(format!("type {name} is defined twice"));
        }
        Ok(())
    }

    fn extend(&mut self, def: cst::Definition) -> Result<(), String> {
        use cst::Definition as D;
        let (name, more) = match def {
            D::SchemaExtension(s) => return self.roots_of(s.root_operation_type_definitions()),
            D::ObjectTypeExtension(o) => (
                o.name(),
                TypeDef::Object {
                    fields: fields(o.fields_definition()),
                },
            ),
            D::InputObjectTypeExtension(i) => (
                i.name(),
                TypeDef::Input {
                    description: None,
                    fields: input_fields(i.input_fields_definition()),
                    one_of: has_directive(i.directives(), "oneOf"),
                },
            ),
            D::EnumTypeExtension(e) => (
                e.name(),
                TypeDef::Enum {
                    description: None,
                    values: enum_values(e.enum_values_definition()),
                },
            ),
            _ => return Ok(()),
        };
        let name = name_of(name);
        let Some(base) = self.types.get_mut(&name) else {
            return Err(format!(
                "extend {name}: the SDL does not define {name} (an extension needs its definition)"
            ));
        };
        match (base, more) {
            (TypeDef::Object { fields }, TypeDef::Object { fields: more }) => fields.extend(more),
            (
                TypeDef::Input { fields, one_of, .. },
                TypeDef::Input {
                    fields: more,
                    one_of: more_one_of,
                    ..
                },
            ) => {
                fields.extend(more);
                *one_of |= more_one_of;
            }
            (TypeDef::Enum { values, .. }, TypeDef::Enum { values: more, .. }) => {
                values.extend(more)
            }
            _ => return Err(format!("extend {name}: {name} is another kind of type")),
        }
        Ok(())
    }

    fn roots_of(
        &mut self,
        defs: cst::CstChildren<cst::RootOperationTypeDefinition>,
    ) -> Result<(), String> {
        for root in defs {
            let op = match root.operation_type() {
                Some(t) if t.query_token().is_some() => OperationType::Query,
                Some(t) if t.mutation_token().is_some() => OperationType::Mutation,
                _ => OperationType::Subscription,
            };
            let name = name_of(root.named_type().and_then(|n| n.name()));
            if self.roots.insert(op, name).is_some() {
                return Err(format!("the schema names its {} type twice", op.as_str()));
            }
        }
        Ok(())
    }
}

/// A description's text, trimmed; none when empty.
fn description(d: Option<cst::Description>) -> Option<String> {
    let text = String::from(d?.string_value()?);
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn has_directive(dirs: Option<cst::Directives>, name: &str) -> bool {
    dirs.is_some_and(|d| d.directives().any(|d| name_of(d.name()) == name))
}

/// `@deprecated(reason: "…")`: the reason, GraphQL's default when none is given.
fn deprecated(dirs: Option<cst::Directives>) -> Option<String> {
    let dir = dirs?
        .directives()
        .find(|d| name_of(d.name()) == "deprecated")?;
    let reason = dir
        .arguments()
        .into_iter()
        .flat_map(|a| a.arguments())
        .find(|a| name_of(a.name()) == "reason")
        .and_then(|a| match a.value() {
            Some(cst::Value::StringValue(s)) => Some(String::from(&s)),
            _ => None,
        });
    Some(reason.unwrap_or_else(|| "No longer supported".into()))
}

fn fields(defs: Option<cst::FieldsDefinition>) -> Vec<Field> {
    defs.into_iter()
        .flat_map(|f| f.field_definitions())
        .map(|f| Field {
            name: name_of(f.name()),
            description: description(f.description()),
            deprecated: deprecated(f.directives()),
            arguments: f
                .arguments_definition()
                .into_iter()
                .flat_map(|a| a.input_value_definitions())
                .map(input_value)
                .collect(),
        })
        .collect()
}

fn input_fields(defs: Option<cst::InputFieldsDefinition>) -> Vec<InputValue> {
    defs.into_iter()
        .flat_map(|f| f.input_value_definitions())
        .map(input_value)
        .collect()
}

fn input_value(v: cst::InputValueDefinition) -> InputValue {
    let default = v.default_value().and_then(|d| d.value());
    InputValue {
        name: name_of(v.name()),
        ty: v.ty().map_or(Ty::unknown(), Ty::of),
        has_default: default.is_some(),
        // A default that is no constant (a variable, a number out of range) still makes the
        // value optional; the schema then names no default.
        default: default.and_then(|d| const_value(d).ok()),
        description: description(v.description()),
        deprecated: deprecated(v.directives()),
    }
}

fn enum_values(defs: Option<cst::EnumValuesDefinition>) -> Vec<EnumValue> {
    defs.into_iter()
        .flat_map(|e| e.enum_value_definitions())
        .map(|v| EnumValue {
            name: name_of(v.enum_value().and_then(|e| e.name())),
            description: description(v.description()),
            deprecated: deprecated(v.directives()),
        })
        .collect()
}

/// Line and column (from 1) of a byte offset.
fn position(text: &str, index: usize) -> (usize, usize) {
    let mut cut = index.min(text.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let before = &text[..cut];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn def_position(def: &cst::Definition, text: &str) -> String {
    use apollo_parser::cst::CstNode;
    let at = usize::from(def.syntax().text_range().start());
    let (line, column) = position(text, at);
    format!("line {line}, column {column}")
}
