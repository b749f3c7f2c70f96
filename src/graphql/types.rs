//! Types as GraphQL writes them, in documents (variable declarations) and schemas (arguments,
//! input fields).

use apollo_parser::cst;

/// The text of a name node (absent only in a tree with errors, which is never walked).
pub fn name_of(name: Option<cst::Name>) -> String {
    name.map(|n| n.text().to_string()).unwrap_or_default()
}

/// A type as a document or a schema writes it: `[ID!]!` is `NonNull(List(NonNull(ID)))`.
#[derive(Debug, Clone, PartialEq)]
pub enum TypeRef {
    Named(String),
    List(Box<TypeRef>),
    NonNull(Box<TypeRef>),
}

impl TypeRef {
    pub fn of(ty: cst::Type) -> TypeRef {
        match ty {
            cst::Type::NamedType(n) => TypeRef::Named(name_of(n.name())),
            cst::Type::ListType(l) => {
                TypeRef::List(Box::new(l.ty().map_or(TypeRef::unknown(), TypeRef::of)))
            }
            cst::Type::NonNullType(n) => {
                let inner = match (n.named_type(), n.list_type()) {
                    (Some(named), _) => TypeRef::Named(name_of(named.name())),
                    (None, Some(list)) => {
                        TypeRef::List(Box::new(list.ty().map_or(TypeRef::unknown(), TypeRef::of)))
                    }
                    (None, None) => TypeRef::unknown(),
                };
                TypeRef::NonNull(Box::new(inner))
            }
        }
    }

    pub fn unknown() -> TypeRef {
        TypeRef::Named(String::new())
    }

    pub fn show(&self) -> String {
        match self {
            TypeRef::Named(n) => n.clone(),
            TypeRef::List(t) => format!("[{}]", t.show()),
            TypeRef::NonNull(t) => format!("{}!", t.show()),
        }
    }

    /// Whether the type is non-null (`T!`).
    pub fn is_non_null(&self) -> bool {
        matches!(self, TypeRef::NonNull(_))
    }
}
