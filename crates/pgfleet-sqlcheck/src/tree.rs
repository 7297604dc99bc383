//! A complete, untyped view of one statement's parse tree.
//!
//! pg_query derives `serde::Serialize` for every protobuf message, so serialising
//! a statement into [`Tree`] visits every field of every node — including the
//! many node types pg_query's own `nodes()` iterator skips (array constructors,
//! LIMIT expressions, window definitions, JSON and XML constructs…). Hidden
//! writes are searched for in this tree, so nothing can hide in a node kind this
//! crate forgot about.
//!
//! The protobuf `Node` wrapper and its `oneof` are collapsed: a [`Node`] carries
//! the message name as its `kind` (`"FuncCall"`, `"DeleteStmt"`…). Absent
//! fields, empty lists and source locations (but an option's) are left out.

use std::fmt;

use serde::Serialize;
use serde::ser;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tree {
    Node(Node),
    List(Vec<Tree>),
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Absent,
}

/// One protobuf message of the parse tree.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Node {
    /// The protobuf message name, e.g. `"SelectStmt"`.
    pub(crate) kind: &'static str,
    pub(crate) fields: Vec<(&'static str, Tree)>,
}

static ABSENT: Tree = Tree::Absent;

/// Whether [`Tree::walk`] should visit a node's children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Descend {
    Yes,
    No,
}

impl Tree {
    pub(crate) fn as_node(&self) -> Option<&Node> {
        match self {
            Tree::Node(node) => Some(node),
            _ => None,
        }
    }

    pub(crate) fn as_text(&self) -> Option<&str> {
        match self {
            Tree::Text(text) => Some(text),
            _ => None,
        }
    }

    pub(crate) fn as_list(&self) -> &[Tree] {
        match self {
            Tree::List(items) => items,
            _ => &[],
        }
    }

    /// Visits every node in pre-order.
    pub(crate) fn walk<'t>(&'t self, visit: &mut impl FnMut(&'t Node) -> Descend) {
        match self {
            Tree::Node(node) => {
                if visit(node) == Descend::Yes {
                    for (_, child) in &node.fields {
                        child.walk(visit);
                    }
                }
            }
            Tree::List(items) => {
                for item in items {
                    item.walk(visit);
                }
            }
            Tree::Text(_) | Tree::Int(_) | Tree::Float(_) | Tree::Bool(_) | Tree::Absent => {}
        }
    }
}

impl Node {
    pub(crate) fn field(&self, name: &str) -> &Tree {
        self.fields
            .iter()
            .find(|(key, _)| *key == name)
            .map_or(&ABSENT, |(_, value)| value)
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        !matches!(self.field(name), Tree::Absent)
    }

    pub(crate) fn node(&self, name: &str) -> Option<&Node> {
        self.field(name).as_node()
    }

    pub(crate) fn text(&self, name: &str) -> Option<&str> {
        self.field(name).as_text()
    }

    pub(crate) fn list(&self, name: &str) -> &[Tree] {
        self.field(name).as_list()
    }

    pub(crate) fn int(&self, name: &str) -> i64 {
        match self.field(name) {
            Tree::Int(value) => *value,
            _ => 0,
        }
    }

    pub(crate) fn bool(&self, name: &str) -> bool {
        matches!(self.field(name), Tree::Bool(true))
    }
}

/// The `sval` of every `String` node in a list (how names are spelled in the tree).
pub(crate) fn string_values(list: &[Tree]) -> Vec<&str> {
    list.iter()
        .filter_map(Tree::as_node)
        .filter(|n| n.kind == "String")
        .filter_map(|n| n.text("sval"))
        .collect()
}

/// `schema.name` (or `name`) of a `RangeVar` node.
pub(crate) fn relation_name(range_var: Option<&Node>) -> String {
    let Some(rv) = range_var else {
        return String::from("?");
    };
    let name = rv.text("relname").unwrap_or("?");
    match rv.text("schemaname") {
        Some(schema) if !schema.is_empty() => format!("{schema}.{name}"),
        _ => name.to_owned(),
    }
}

#[derive(Debug)]
pub(crate) struct TreeError(String);

impl fmt::Display for TreeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TreeError {}

impl ser::Error for TreeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        TreeError(msg.to_string())
    }
}

/// Builds the untyped tree of any pg_query protobuf value.
pub(crate) fn build<T: Serialize + ?Sized>(value: &T) -> Result<Tree, TreeError> {
    value.serialize(Builder)
}

struct Builder;

fn keep_field(kind: &str, key: &str, value: &Tree) -> bool {
    // An option's location is kept: a refused option is reported where it is.
    let noise = (key == "location" && kind != "DefElem") || key.ends_with("_location");
    let empty = matches!(value, Tree::Absent) || matches!(value, Tree::List(items) if items.is_empty());
    !noise && !empty
}

impl ser::Serializer for Builder {
    type Ok = Tree;
    type Error = TreeError;
    type SerializeSeq = SeqBuilder;
    type SerializeTuple = SeqBuilder;
    type SerializeTupleStruct = SeqBuilder;
    type SerializeTupleVariant = SeqBuilder;
    type SerializeMap = SeqBuilder;
    type SerializeStruct = StructBuilder;
    type SerializeStructVariant = StructBuilder;

    fn serialize_bool(self, v: bool) -> Result<Tree, TreeError> {
        Ok(Tree::Bool(v))
    }
    fn serialize_i8(self, v: i8) -> Result<Tree, TreeError> {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_i16(self, v: i16) -> Result<Tree, TreeError> {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_i32(self, v: i32) -> Result<Tree, TreeError> {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_i64(self, v: i64) -> Result<Tree, TreeError> {
        Ok(Tree::Int(v))
    }
    fn serialize_u8(self, v: u8) -> Result<Tree, TreeError> {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_u16(self, v: u16) -> Result<Tree, TreeError> {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_u32(self, v: u32) -> Result<Tree, TreeError> {
        Ok(Tree::Int(v.into()))
    }
    fn serialize_u64(self, v: u64) -> Result<Tree, TreeError> {
        Ok(Tree::Int(i64::try_from(v).unwrap_or(i64::MAX)))
    }
    fn serialize_f32(self, v: f32) -> Result<Tree, TreeError> {
        Ok(Tree::Float(v.into()))
    }
    fn serialize_f64(self, v: f64) -> Result<Tree, TreeError> {
        Ok(Tree::Float(v))
    }
    fn serialize_char(self, v: char) -> Result<Tree, TreeError> {
        Ok(Tree::Text(v.to_string()))
    }
    fn serialize_str(self, v: &str) -> Result<Tree, TreeError> {
        Ok(Tree::Text(v.to_owned()))
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Tree, TreeError> {
        Ok(Tree::Text(String::from_utf8_lossy(v).into_owned()))
    }
    fn serialize_none(self) -> Result<Tree, TreeError> {
        Ok(Tree::Absent)
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<Tree, TreeError> {
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<Tree, TreeError> {
        Ok(Tree::Absent)
    }
    fn serialize_unit_struct(self, _name: &'static str) -> Result<Tree, TreeError> {
        Ok(Tree::Absent)
    }
    fn serialize_unit_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
    ) -> Result<Tree, TreeError> {
        Ok(Tree::Text(variant.to_owned()))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        value: &T,
    ) -> Result<Tree, TreeError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<Tree, TreeError> {
        // A `oneof` arm: the message inside already carries its own kind.
        match value.serialize(Builder)? {
            node @ Tree::Node(_) => Ok(node),
            other => Ok(Tree::Node(Node {
                kind: variant,
                fields: vec![("value", other)],
            })),
        }
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_tuple(self, len: usize) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len)))
    }
    fn serialize_tuple_struct(self, _name: &'static str, len: usize) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len)))
    }
    fn serialize_tuple_variant(
        self,
        _name: &'static str,
        _index: u32,
        _variant: &'static str,
        len: usize,
    ) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len)))
    }
    fn serialize_map(self, len: Option<usize>) -> Result<SeqBuilder, TreeError> {
        Ok(SeqBuilder(Vec::with_capacity(len.unwrap_or(0))))
    }
    fn serialize_struct(self, name: &'static str, len: usize) -> Result<StructBuilder, TreeError> {
        Ok(StructBuilder {
            node: Node {
                kind: name,
                fields: Vec::with_capacity(len),
            },
        })
    }
    fn serialize_struct_variant(
        self,
        _name: &'static str,
        _index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<StructBuilder, TreeError> {
        Ok(StructBuilder {
            node: Node {
                kind: variant,
                fields: Vec::with_capacity(len),
            },
        })
    }
}

struct SeqBuilder(Vec<Tree>);

impl ser::SerializeSeq for SeqBuilder {
    type Ok = Tree;
    type Error = TreeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        self.0.push(value.serialize(Builder)?);
        Ok(())
    }
    fn end(self) -> Result<Tree, TreeError> {
        Ok(Tree::List(self.0))
    }
}

impl ser::SerializeTuple for SeqBuilder {
    type Ok = Tree;
    type Error = TreeError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Tree, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleStruct for SeqBuilder {
    type Ok = Tree;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Tree, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeTupleVariant for SeqBuilder {
    type Ok = Tree;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Tree, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

impl ser::SerializeMap for SeqBuilder {
    type Ok = Tree;
    type Error = TreeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, key)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), TreeError> {
        ser::SerializeSeq::serialize_element(self, value)
    }
    fn end(self) -> Result<Tree, TreeError> {
        ser::SerializeSeq::end(self)
    }
}

struct StructBuilder {
    node: Node,
}

impl ser::SerializeStruct for StructBuilder {
    type Ok = Tree;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        let value = value.serialize(Builder)?;
        if keep_field(self.node.kind, key, &value) {
            self.node.fields.push((key, value));
        }
        Ok(())
    }
    fn end(mut self) -> Result<Tree, TreeError> {
        // `Node { node: oneof }` is only a wrapper: return what it wraps.
        if self.node.kind == "Node" {
            return Ok(self.node.fields.pop().map_or(Tree::Absent, |(_, inner)| inner));
        }
        Ok(Tree::Node(self.node))
    }
}

impl ser::SerializeStructVariant for StructBuilder {
    type Ok = Tree;
    type Error = TreeError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), TreeError> {
        ser::SerializeStruct::serialize_field(self, key, value)
    }
    fn end(self) -> Result<Tree, TreeError> {
        ser::SerializeStruct::end(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree_of(sql: &str) -> Tree {
        let parsed = pg_query::parse(sql, 0).expect("test SQL parses");
        let stmt = parsed.protobuf.stmts[0].stmt.as_deref().expect("statement");
        build(stmt).expect("tree builds")
    }

    #[test]
    fn wrappers_collapse_and_kinds_survive() {
        let tree = tree_of("SELECT ARRAY[nextval('s')] LIMIT lower('x')::int");
        let root = tree.as_node().expect("root node");
        assert_eq!(root.kind, "SelectStmt");
        let mut calls = Vec::new();
        tree.walk(&mut |node| {
            if node.kind == "FuncCall" {
                calls.extend(
                    string_values(node.list("funcname"))
                        .into_iter()
                        .map(str::to_owned),
                );
            }
            Descend::Yes
        });
        assert_eq!(calls, ["nextval", "lower"]);
    }

    #[test]
    fn locations_are_dropped_so_equal_expressions_compare_equal() {
        let tree = tree_of("DELETE FROM t WHERE 1 = 1");
        let root = tree.as_node().expect("root");
        let cond = root.node("where_clause").expect("where");
        assert_eq!(cond.field("lexpr"), cond.field("rexpr"));
    }
}
