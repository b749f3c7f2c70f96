//! The document walked as the upstream will execute it: the operation chosen, fragments and
//! inline fragments expanded, every root field listed with its alias and arguments, nesting
//! measured, and directives checked everywhere the walk goes.

use std::collections::HashMap;

use apollo_parser::cst;

use super::error::GraphqlError;
use super::types::name_of;
use super::value::{self, Variables};
use super::{Limits, OperationType, RootField};

/// Fragment spreads nested deeper than this are refused, whatever the field depth: the walk's
/// own recursion stays bounded.
const MAX_SPREAD_NESTING: usize = 64;

/// Selections visited (after fragments are expanded) before a document is refused as too large
/// to check: a few fragments spread many times each could otherwise take exponential time.
pub(super) const MAX_VISITS: usize = 20_000;

/// The executable definitions of a document.
pub(super) struct Definitions {
    operations: Vec<cst::OperationDefinition>,
    fragments: HashMap<String, cst::FragmentDefinition>,
}

impl Definitions {
    /// Operations and fragments; anything else (type definitions), a name defined twice, or an
    /// anonymous operation beside others is not a request the upstream runs one way.
    pub(super) fn of(doc: cst::Document) -> Result<Definitions, GraphqlError> {
        let (mut operations, mut fragments) = (Vec::new(), HashMap::new());
        for def in doc.definitions() {
            match def {
                cst::Definition::OperationDefinition(op) => operations.push(op),
                cst::Definition::FragmentDefinition(f) => {
                    let name = name_of(f.fragment_name().and_then(|n| n.name()));
                    if fragments.insert(name.clone(), f).is_some() {
                        return Err(GraphqlError::Invalid(format!(
                            "fragment {name} is defined twice"
                        )));
                    }
                }
                other => {
                    return Err(GraphqlError::Invalid(format!(
                        "a request holds operations and fragments only, not a {}",
                        other.kind()
                    )))
                }
            }
        }
        let names: Vec<Option<String>> = operations
            .iter()
            .map(|op| op.name().map(|n| n.text().to_string()))
            .collect();
        for (i, name) in names.iter().enumerate() {
            match name {
                None if names.len() > 1 => {
                    return Err(GraphqlError::Invalid(
                        "an operation without a name must be the only operation of the document"
                            .into(),
                    ))
                }
                Some(n) if names[..i].contains(name) => {
                    return Err(GraphqlError::Invalid(format!(
                        "operation {n} is defined twice"
                    )))
                }
                _ => {}
            }
        }
        Ok(Definitions {
            operations,
            fragments,
        })
    }

    /// The operation to run: the only one, or the one `operationName` names.
    pub(super) fn select(
        &self,
        operation_name: Option<&str>,
    ) -> Result<&cst::OperationDefinition, GraphqlError> {
        let named = |op: &&cst::OperationDefinition| {
            op.name().map(|n| n.text().to_string()).as_deref() == operation_name
        };
        match (operation_name, self.operations.as_slice()) {
            (_, []) => Err(GraphqlError::Invalid(
                "the document holds no operation".into(),
            )),
            (None, [only]) => Ok(only),
            (None, many) => Err(GraphqlError::SeveralOperations {
                count: many.len(),
                names: many
                    .iter()
                    .map(|op| name_of(op.name()))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
            (Some(name), ops) => ops
                .iter()
                .find(named)
                .ok_or_else(|| GraphqlError::UnknownOperation(name.to_string())),
        }
    }
}

/// The operation type a definition runs (`{ … }` alone is a query).
pub(super) fn operation_type(op: &cst::OperationDefinition) -> OperationType {
    match op.operation_type() {
        Some(t) if t.mutation_token().is_some() => OperationType::Mutation,
        Some(t) if t.subscription_token().is_some() => OperationType::Subscription,
        _ => OperationType::Query,
    }
}

/// The first root field written in a selection set, to name an operation refused whole.
pub(super) fn first_field(op: &cst::OperationDefinition) -> String {
    op.selection_set()
        .iter()
        .flat_map(|s| s.selections())
        .find_map(|s| match s {
            cst::Selection::Field(f) => Some(name_of(f.name())),
            _ => None,
        })
        .unwrap_or_else(|| name_of(op.name()))
}

/// Refuses every directive but `@include` and `@skip`. `at` says where, for the message.
pub(super) fn directives(dirs: Option<cst::Directives>, at: &str) -> Result<(), GraphqlError> {
    for d in dirs.iter().flat_map(|d| d.directives()) {
        let name = name_of(d.name());
        if name != "include" && name != "skip" {
            return Err(GraphqlError::Directive {
                directive: name,
                at: at.to_string(),
            });
        }
    }
    Ok(())
}

/// One walk over the chosen operation.
pub(super) struct Walk<'a> {
    fragments: &'a HashMap<String, cst::FragmentDefinition>,
    vars: &'a Variables,
    limits: &'a Limits,
    /// The depth of each fragment's selection set, once measured, and whether an alias is
    /// written anywhere in it.
    depths: HashMap<String, (usize, bool)>,
    /// Whether an alias is written below the root field being measured.
    aliased: bool,
    /// The fragments being expanded, innermost last: a spread of one of them is a cycle.
    active: Vec<String>,
    visits: usize,
    /// The root field being measured, for messages.
    root: String,
}

impl<'a> Walk<'a> {
    pub(super) fn new(defs: &'a Definitions, vars: &'a Variables, limits: &'a Limits) -> Self {
        Walk {
            fragments: &defs.fragments,
            vars,
            limits,
            depths: HashMap::new(),
            aliased: false,
            active: Vec::new(),
            visits: 0,
            root: String::new(),
        }
    }

    fn visit(&mut self) -> Result<(), GraphqlError> {
        self.visits += 1;
        if self.visits > MAX_VISITS {
            return Err(GraphqlError::TooLarge(MAX_VISITS));
        }
        Ok(())
    }

    /// The fragment a spread names, entered (checked for cycles and nesting).
    fn enter(
        &mut self,
        spread: &cst::FragmentSpread,
    ) -> Result<cst::FragmentDefinition, GraphqlError> {
        let name = name_of(spread.fragment_name().and_then(|n| n.name()));
        directives(
            spread.directives(),
            &format!("the spread of fragment {name}"),
        )?;
        let fragment = self.fragments.get(&name).cloned().ok_or_else(|| {
            GraphqlError::Invalid(format!("fragment {name} is spread but not defined"))
        })?;
        if self.active.contains(&name) {
            return Err(GraphqlError::Invalid(format!(
                "fragment {name} spreads itself (through {})",
                self.active.join(" → ")
            )));
        }
        if self.active.len() >= MAX_SPREAD_NESTING {
            return Err(GraphqlError::Invalid(format!(
                "fragment spreads are nested more than {MAX_SPREAD_NESTING} deep"
            )));
        }
        directives(fragment.directives(), &format!("fragment {name}"))?;
        self.active.push(name);
        Ok(fragment)
    }

    /// The root fields of a selection set, fragments expanded, in document order; a response
    /// key used twice for the same field and arguments is one field (GraphQL merges them).
    /// `runs`: whether the set executes (no `@skip`/`@include` above it turns it off).
    pub(super) fn roots(
        &mut self,
        set: Option<cst::SelectionSet>,
        out: &mut Vec<RootField>,
        runs: bool,
    ) -> Result<(), GraphqlError> {
        for selection in set.iter().flat_map(|s| s.selections()) {
            self.visit()?;
            match selection {
                cst::Selection::Field(f) => self.root_field(f, out, runs)?,
                cst::Selection::FragmentSpread(s) => {
                    let fragment = self.enter(&s)?;
                    let runs = runs && self.runs(s.directives())?;
                    let runs = runs && self.runs(fragment.directives())?;
                    self.roots(fragment.selection_set(), out, runs)?;
                    self.active.pop();
                }
                cst::Selection::InlineFragment(i) => {
                    directives(i.directives(), "an inline fragment")?;
                    let runs = runs && self.runs(i.directives())?;
                    self.roots(i.selection_set(), out, runs)?;
                }
            }
        }
        Ok(())
    }

    /// Whether `@skip`/`@include` let a selection run, their conditions read with the
    /// variables (a condition that is not a boolean lets it run: toolgate judges it touched).
    fn runs(&self, dirs: Option<cst::Directives>) -> Result<bool, GraphqlError> {
        for d in dirs.iter().flat_map(|d| d.directives()) {
            let name = name_of(d.name());
            let args = value::arguments(d.arguments(), self.vars, &format!("@{name}"))?;
            match (name.as_str(), args["if"].as_bool()) {
                ("skip", Some(true)) | ("include", Some(false)) => return Ok(false),
                _ => {}
            }
        }
        Ok(true)
    }

    fn root_field(
        &mut self,
        f: cst::Field,
        out: &mut Vec<RootField>,
        runs: bool,
    ) -> Result<(), GraphqlError> {
        let name = name_of(f.name());
        directives(f.directives(), &format!("field {name}"))?;
        let runs = runs && self.runs(f.directives())?;
        self.root = name.clone();
        self.aliased = false;
        self.depth(f.selection_set(), 1)?;
        // `__typename` executes nothing: it names the root type.
        if name == "__typename" {
            return Ok(());
        }
        let field = RootField {
            alias: f.alias().map(|a| name_of(a.name())),
            arguments: value::arguments(f.arguments(), self.vars, &name)?,
            name,
            nested_alias: self.aliased,
            runs,
        };
        let count = out.len();
        match out.iter_mut().find(|o| o.key() == field.key()) {
            Some(same) if same.name == field.name && same.arguments == field.arguments => {
                same.nested_alias |= field.nested_alias;
                same.runs |= field.runs;
                Ok(())
            }
            Some(other) => Err(GraphqlError::Invalid(format!(
                "response key {} is given to {} and to {} with different arguments or fields; give each its own alias",
                field.key(),
                other.name,
                field.name
            ))),
            // Checked as the fields are found, so that a document of thousands costs no more
            // than one at the limit.
            None if count >= self.limits.max_root_fields => Err(GraphqlError::TooManyFields {
                count: count + 1,
                limit: self.limits.max_root_fields,
            }),
            None => {
                out.push(field);
                Ok(())
            }
        }
    }

    /// The depth of the fields below a field at `level` (root fields are at 1), refused past
    /// the limit; directives are checked on the way.
    fn depth(
        &mut self,
        set: Option<cst::SelectionSet>,
        level: usize,
    ) -> Result<usize, GraphqlError> {
        let mut deepest = 0;
        for selection in set.iter().flat_map(|s| s.selections()) {
            self.visit()?;
            let below = match selection {
                cst::Selection::Field(f) => {
                    directives(f.directives(), &format!("field {}", name_of(f.name())))?;
                    self.aliased |= f.alias().is_some();
                    if level + 1 > self.limits.max_depth {
                        return Err(self.too_deep());
                    }
                    match f.selection_set() {
                        Some(sub) => 1 + self.depth(Some(sub), level + 1)?,
                        None => 1,
                    }
                }
                cst::Selection::FragmentSpread(s) => self.spread_depth(&s, level)?,
                cst::Selection::InlineFragment(i) => {
                    directives(i.directives(), "an inline fragment")?;
                    self.depth(i.selection_set(), level)?
                }
            };
            deepest = deepest.max(below);
        }
        if level + deepest > self.limits.max_depth {
            return Err(self.too_deep());
        }
        Ok(deepest)
    }

    fn spread_depth(
        &mut self,
        s: &cst::FragmentSpread,
        level: usize,
    ) -> Result<usize, GraphqlError> {
        let name = name_of(s.fragment_name().and_then(|n| n.name()));
        if let Some(&(d, aliased)) = self.depths.get(&name) {
            directives(s.directives(), &format!("the spread of fragment {name}"))?;
            if level + d > self.limits.max_depth {
                return Err(self.too_deep());
            }
            self.aliased |= aliased;
            return Ok(d);
        }
        let fragment = self.enter(s)?;
        let outer = std::mem::replace(&mut self.aliased, false);
        let d = self.depth(fragment.selection_set(), level)?;
        let aliased = self.aliased;
        self.aliased |= outer;
        self.active.pop();
        self.depths.insert(name, (d, aliased));
        Ok(d)
    }

    fn too_deep(&self) -> GraphqlError {
        GraphqlError::TooDeep {
            field: self.root.clone(),
            limit: self.limits.max_depth,
        }
    }
}
