//! A YAML tree that remembers where every node came from.
//!
//! Compose files are parsed into [`Node`]s, not into typed structs, because three steps must run
//! on the raw tree before any type is known: interpolation (`${VAR}` inside any string), merging
//! of several `-f` files, and `extends`. Keeping a position on every node lets each later error,
//! even one inside an interpolated value, say `file:line:col`.
//!
//! Parsing is bounded: input size, nesting depth and the number of nodes that alias expansion may
//! create are all capped, so hostile input ("billion laughs", deep nesting) fails fast with a
//! clear error instead of exhausting memory.

use std::collections::HashMap;
use std::sync::Arc;

use granit_parser::{Event, Options, Parser, ScalarStyle, Span};
use indexmap::IndexMap;

use crate::diag::{Pos, SpecError};

/// Resource bounds for parsing one file.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest accepted source text, in bytes.
    pub max_bytes: usize,
    /// Deepest accepted nesting of mappings and sequences.
    pub max_depth: usize,
    /// Most nodes a file may produce, counting every node that alias expansion copies.
    pub max_nodes: usize,
    /// Most bytes of scalar text that alias expansion may copy (one long string aliased many
    /// times is a bomb of bytes, not of nodes).
    pub max_alias_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 16 << 20,
            max_depth: 64,
            max_nodes: 1_000_000,
            max_alias_bytes: 64 << 20,
        }
    }
}

/// A node of the tree: a value and where it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    pub pos: Pos,
    pub value: Value,
    /// Compose's override tags: `!reset` removes an inherited value, `!override` replaces it
    /// instead of merging.
    pub tag: Option<Tag>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tag {
    Reset,
    Override,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Null,
    Scalar(Scalar),
    Seq(Vec<Node>),
    Map(Map),
}

/// A scalar as written. Its type (string, integer, boolean…) is decided by the consumer: a
/// field that wants an integer reads `"3"` and `3` alike, as compose does after interpolation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scalar {
    pub text: String,
    /// Plain (unquoted) scalars resolve to numbers and booleans by the YAML core schema;
    /// quoted and block scalars are always strings.
    pub plain: bool,
}

/// What a scalar means under the YAML 1.2 core schema (as Go's yaml.v3 resolves it).
#[derive(Clone, Debug, PartialEq)]
pub enum Resolved<'a> {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(&'a str),
}

impl Scalar {
    pub fn string(text: impl Into<String>) -> Self {
        Scalar {
            text: text.into(),
            plain: false,
        }
    }

    pub fn resolve(&self) -> Resolved<'_> {
        if !self.plain {
            return Resolved::Str(&self.text);
        }
        resolve_plain(&self.text)
    }
}

fn resolve_plain(t: &str) -> Resolved<'_> {
    match t {
        "true" | "True" | "TRUE" => return Resolved::Bool(true),
        "false" | "False" | "FALSE" => return Resolved::Bool(false),
        ".inf" | ".Inf" | ".INF" | "+.inf" | "+.Inf" | "+.INF" => {
            return Resolved::Float(f64::INFINITY);
        }
        "-.inf" | "-.Inf" | "-.INF" => return Resolved::Float(f64::NEG_INFINITY),
        ".nan" | ".NaN" | ".NAN" => return Resolved::Float(f64::NAN),
        _ => {}
    }
    if let Some(i) = parse_yaml_int(t) {
        return Resolved::Int(i);
    }
    if looks_like_float(t)
        && let Ok(f) = t.parse::<f64>()
    {
        return Resolved::Float(f);
    }
    Resolved::Str(t)
}

/// Integers as Go's `strconv.ParseInt(s, 0, 64)` reads them: optional sign, then decimal,
/// `0x` hex, `0o`/leading-`0` octal or `0b` binary.
pub fn parse_yaml_int(t: &str) -> Option<i64> {
    let (neg, body) = match t.as_bytes().first()? {
        b'-' => (true, &t[1..]),
        b'+' => (false, &t[1..]),
        _ => (false, t),
    };
    if body.is_empty() {
        return None;
    }
    let (radix, digits) = if let Some(d) = body.strip_prefix("0x").or(body.strip_prefix("0X")) {
        (16, d)
    } else if let Some(d) = body.strip_prefix("0o").or(body.strip_prefix("0O")) {
        (8, d)
    } else if let Some(d) = body.strip_prefix("0b").or(body.strip_prefix("0B")) {
        (2, d)
    } else if body.len() > 1 && body.starts_with('0') {
        (8, &body[1..])
    } else {
        (10, body)
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    let magnitude = i128::from_str_radix(digits, radix).ok()?;
    let v = if neg { -magnitude } else { magnitude };
    i64::try_from(v).ok()
}

fn looks_like_float(t: &str) -> bool {
    // YAML 1.2 core: [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?
    let b = t.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - s;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'-' || b[i] == b'+') {
            i += 1;
        }
        let s = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == s {
            return false;
        }
    }
    i == b.len()
}

/// A mapping with string keys, in source order, each key with its own position.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Map {
    entries: IndexMap<String, Entry>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key_pos: Pos,
    pub value: Node,
}

impl Map {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries.get(key).map(|e| &e.value)
    }

    pub fn get_mut(&mut self, key: &str) -> Option<&mut Node> {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    pub fn entry(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Inserts or replaces; a replaced key keeps its place in the order.
    pub fn insert(&mut self, key: impl Into<String>, key_pos: Pos, value: Node) {
        self.entries.insert(key.into(), Entry { key_pos, value });
    }

    pub fn remove(&mut self, key: &str) -> Option<Entry> {
        self.entries.shift_remove(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&String, &mut Entry)> {
        self.entries.iter_mut()
    }

    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.entries.keys()
    }

    pub fn retain(&mut self, mut keep: impl FnMut(&str, &mut Entry) -> bool) {
        self.entries.retain(|k, e| keep(k, e));
    }

    pub fn into_entries(self) -> Vec<(String, Entry)> {
        self.entries.into_iter().collect()
    }

    pub fn sort_keys(&mut self) {
        self.entries.sort_keys();
    }
}

impl Node {
    pub fn new(pos: Pos, value: Value) -> Self {
        Node {
            pos,
            value,
            tag: None,
        }
    }

    pub fn string(pos: Pos, text: impl Into<String>) -> Self {
        Node::new(pos, Value::Scalar(Scalar::string(text)))
    }

    pub fn map(pos: Pos, map: Map) -> Self {
        Node::new(pos, Value::Map(map))
    }

    pub fn as_map(&self) -> Option<&Map> {
        match &self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_map_mut(&mut self) -> Option<&mut Map> {
        match &mut self.value {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    pub fn as_seq(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Seq(s) => Some(s),
            _ => None,
        }
    }

    /// The text of a scalar of any style.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar(s) => Some(&s.text),
            _ => None,
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(self.value, Value::Null)
    }

    /// How a value is named in "expected X, got Y" messages.
    pub fn describe(&self) -> String {
        match &self.value {
            Value::Null => "null".into(),
            Value::Seq(_) => "a sequence".into(),
            Value::Map(_) => "a mapping".into(),
            Value::Scalar(s) => {
                let mut t: String = s.text.chars().take(60).collect();
                if t.len() < s.text.len() {
                    t.push('…');
                }
                format!("{t:?}")
            }
        }
    }

    /// Number of nodes in this subtree, itself included.
    pub fn count(&self) -> usize {
        1 + match &self.value {
            Value::Seq(s) => s.iter().map(Node::count).sum(),
            Value::Map(m) => m.entries.values().map(|e| e.value.count()).sum(),
            _ => 0,
        }
    }

    /// Bytes of scalar text and keys in this subtree.
    pub fn text_bytes(&self) -> usize {
        match &self.value {
            Value::Scalar(s) => s.text.len(),
            Value::Seq(s) => s.iter().map(Node::text_bytes).sum(),
            Value::Map(m) => m
                .entries
                .iter()
                .map(|(k, e)| k.len() + e.value.text_bytes())
                .sum(),
            Value::Null => 0,
        }
    }
}

/// Parses one YAML source into its documents (compose files usually hold one).
///
/// An empty file yields no documents. Positions name `file`.
pub fn parse(file: &str, text: &str, limits: &Limits) -> Result<Vec<Node>, SpecError> {
    let file: Arc<str> = Arc::from(file);
    let top = Pos::new(file.clone(), 1, 1);
    if text.len() > limits.max_bytes {
        return Err(SpecError::at(
            &top,
            "",
            format!(
                "file is {} bytes, more than the limit of {} bytes",
                text.len(),
                limits.max_bytes
            ),
        ));
    }
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut options = Options::default();
    options.flow_nesting_limit = limits.max_depth;
    options.block_nesting_limit = limits.max_depth;
    let mut builder = Builder {
        file,
        limits,
        parser: Parser::new_from_str_with_options(text, options),
        text,
        anchors: HashMap::new(),
        open_anchors: Vec::new(),
        path: Vec::new(),
        nodes: 0,
        alias_bytes: 0,
        depth: 0,
    };
    builder.stream()
}

/// The first tab in the leading whitespace of a line at or after `from_line` (1-based), as
/// (line, column).
fn indenting_tab(text: &str, from_line: usize) -> Option<(u32, u32)> {
    text.lines()
        .enumerate()
        .skip(from_line.saturating_sub(1))
        .find_map(|(i, line)| {
            let indent = line.len() - line.trim_start_matches([' ', '\t']).len();
            line[..indent]
                .find('\t')
                .map(|c| (i as u32 + 1, c as u32 + 1))
        })
}

struct Builder<'a, 'input> {
    file: Arc<str>,
    limits: &'a Limits,
    parser: Parser<'input, granit_parser::StrInput<'input>>,
    text: &'input str,
    /// Finished anchors: the node, its node count and its text bytes.
    anchors: HashMap<usize, (Node, usize, usize)>,
    /// Anchors whose node is still being read: an alias to one of them is a cycle.
    open_anchors: Vec<usize>,
    /// Keys and indices from the document root to the node being read, for error paths.
    path: Vec<PathSeg>,
    nodes: usize,
    alias_bytes: usize,
    depth: usize,
}

enum PathSeg {
    Key(String),
    Index(usize),
}

impl<'input> Builder<'_, 'input> {
    /// The dotted path of the node being read (`services.web.ports[0]`).
    fn path(&self) -> String {
        let mut out = String::new();
        for seg in &self.path {
            out = match seg {
                PathSeg::Key(k) => crate::diag::join_path(&out, k),
                PathSeg::Index(i) => crate::diag::index_path(&out, *i),
            };
        }
        out
    }

    fn fail<T>(&self, pos: &Pos, message: impl Into<String>) -> Result<T, SpecError> {
        Err(SpecError::at(pos, self.path(), message))
    }

    fn pos(&self, span: &Span) -> Pos {
        Pos::new(
            self.file.clone(),
            span.start.line() as u32,
            span.start.col() as u32 + 1,
        )
    }

    fn next(&mut self) -> Result<(Event<'input>, Span), SpecError> {
        match self.parser.next() {
            Some(Ok(ev)) => Ok(ev),
            Some(Err(e)) => {
                let m = e.marker();
                let info = e.info();
                if info.contains("tab")
                    && let Some((line, col)) = indenting_tab(self.text, m.line())
                {
                    // The scanner notices a tab where it stops, often at the end of the line
                    // before: point at the tab itself.
                    let pos = Pos::new(self.file.clone(), line, col);
                    return self.fail(
                        &pos,
                        "invalid YAML: a tab in indentation (YAML indents with spaces only)",
                    );
                }
                let pos = Pos::new(self.file.clone(), m.line() as u32, m.col() as u32 + 1);
                self.fail(&pos, format!("invalid YAML: {info}"))
            }
            None => Err(SpecError::at(
                &Pos::new(self.file.clone(), 1, 1),
                "",
                "invalid YAML: unexpected end of input",
            )),
        }
    }

    fn stream(&mut self) -> Result<Vec<Node>, SpecError> {
        let mut docs = Vec::new();
        loop {
            let (ev, span) = self.next()?;
            match ev {
                Event::StreamStart | Event::DocumentEnd => {}
                Event::StreamEnd => return Ok(docs),
                Event::DocumentStart(..) => {
                    self.anchors.clear();
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::DocumentEnd) {
                        continue;
                    }
                    let node = self.node(ev, span)?;
                    docs.push(node);
                }
                _ => {
                    let pos = self.pos(&span);
                    return Err(SpecError::at(&pos, "", "invalid YAML: unexpected event"));
                }
            }
        }
    }

    fn count(&mut self, n: usize, pos: &Pos) -> Result<(), SpecError> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.max_nodes {
            return self.fail(
                pos,
                format!(
                    "document has more than {} nodes, counting the copies aliases make",
                    self.limits.max_nodes
                ),
            );
        }
        Ok(())
    }

    fn tag(&self, tag: Option<&granit_parser::Tag>, pos: &Pos) -> Result<Option<Tag>, SpecError> {
        let Some(tag) = tag else { return Ok(None) };
        if tag.is_yaml_core_schema() {
            return Ok(None);
        }
        match (tag.handle(), tag.suffix()) {
            ("!", "reset") => Ok(Some(Tag::Reset)),
            ("!", "override") => Ok(Some(Tag::Override)),
            (h, s) => self.fail(
                pos,
                format!("unsupported YAML tag {h}{s}: compose knows only !reset and !override"),
            ),
        }
    }

    fn node(&mut self, ev: Event<'input>, span: Span) -> Result<Node, SpecError> {
        let pos = self.pos(&span);
        self.count(1, &pos)?;
        let (node, anchor) = match ev {
            Event::Scalar(text, style, anchor, tag) => {
                let ctag = self.tag(tag.as_deref(), &pos)?;
                let forced_str = tag
                    .as_deref()
                    .is_some_and(|t| t.is_yaml_core_schema_tag("str"));
                let plain = style == ScalarStyle::Plain && !forced_str;
                let value = if plain && matches!(&*text, "" | "~" | "null" | "Null" | "NULL") {
                    Value::Null
                } else {
                    Value::Scalar(Scalar {
                        text: text.into_owned(),
                        plain,
                    })
                };
                let mut n = Node::new(pos, value);
                n.tag = ctag;
                (n, anchor)
            }
            Event::Alias(id) => {
                if self.open_anchors.contains(&id) {
                    return self.fail(
                        &pos,
                        "alias refers to the anchor that contains it (a cycle): YAML cannot \
                         hold a node inside itself",
                    );
                }
                let Some((target, size, bytes)) = self.anchors.get(&id) else {
                    return self.fail(&pos, "invalid YAML: unknown alias");
                };
                let (mut copy, size, bytes) = (target.clone(), *size, *bytes);
                self.count(size, &pos)?;
                self.alias_bytes = self.alias_bytes.saturating_add(bytes);
                if self.alias_bytes > self.limits.max_alias_bytes {
                    return self.fail(
                        &pos,
                        format!(
                            "aliases copy more than {} bytes of text",
                            self.limits.max_alias_bytes
                        ),
                    );
                }
                copy.pos = pos;
                return Ok(copy);
            }
            Event::SequenceStart(_, anchor, tag) => {
                let ctag = self.tag(tag.as_deref(), &pos)?;
                self.enter(&pos)?;
                self.open_anchors.push(anchor);
                let mut items = Vec::new();
                loop {
                    let (ev, span) = self.next()?;
                    if matches!(ev, Event::SequenceEnd) {
                        break;
                    }
                    self.path.push(PathSeg::Index(items.len()));
                    let item = self.node(ev, span)?;
                    self.path.pop();
                    items.push(item);
                }
                self.open_anchors.pop();
                self.depth -= 1;
                let mut n = Node::new(pos, Value::Seq(items));
                n.tag = ctag;
                (n, anchor)
            }
            Event::MappingStart(_, anchor, tag) => {
                let ctag = self.tag(tag.as_deref(), &pos)?;
                self.enter(&pos)?;
                self.open_anchors.push(anchor);
                let map = self.mapping()?;
                self.open_anchors.pop();
                self.depth -= 1;
                let mut n = Node::new(pos, Value::Map(map));
                n.tag = ctag;
                (n, anchor)
            }
            _ => return Err(SpecError::at(&pos, "", "invalid YAML: unexpected event")),
        };
        if anchor != 0 {
            let (size, bytes) = (node.count(), node.text_bytes());
            self.anchors.insert(anchor, (node.clone(), size, bytes));
        }
        Ok(node)
    }

    fn enter(&mut self, pos: &Pos) -> Result<(), SpecError> {
        self.depth += 1;
        if self.depth > self.limits.max_depth {
            return self.fail(
                pos,
                format!("nesting deeper than {} levels", self.limits.max_depth),
            );
        }
        Ok(())
    }

    /// Reads mapping entries up to MappingEnd. Applies YAML merge keys (`<<`): merged entries
    /// never replace keys written in the mapping itself, and earlier merge sources win over
    /// later ones, as in yaml.v3.
    fn mapping(&mut self) -> Result<Map, SpecError> {
        let mut map = Map::new();
        let mut merges: Vec<Node> = Vec::new();
        loop {
            let (ev, span) = self.next()?;
            if matches!(ev, Event::MappingEnd) {
                break;
            }
            let key_pos = self.pos(&span);
            let key = self.node(ev, span)?;
            let key_text = match &key.value {
                Value::Scalar(s) if !matches!(s.resolve(), Resolved::Str(_)) => {
                    // yaml.v3 reads `1:` or `true:` as a number or boolean key, and compose
                    // rejects every non-string key.
                    return self.fail(
                        &key_pos,
                        format!(
                            "mapping key {} is not a string: quote it (\"{}\") if it is meant as \
                             one",
                            s.text, s.text
                        ),
                    );
                }
                Value::Scalar(s) => s.text.clone(),
                Value::Null => return self.fail(&key_pos, "mapping key must not be null"),
                _ => {
                    return self.fail(
                        &key_pos,
                        format!("mapping key must be a string, got {}", key.describe()),
                    );
                }
            };
            let (ev, span) = self.next()?;
            // On an error the path is left as it is: it names where the error is, and the
            // builder is not used again.
            self.path.push(PathSeg::Key(key_text));
            let value = self.node(ev, span)?;
            let Some(PathSeg::Key(key_text)) = self.path.pop() else {
                unreachable!("pushed a key above")
            };
            if key_text == "<<" && matches!(&key.value, Value::Scalar(s) if s.plain) {
                merges.push(value);
                continue;
            }
            if let Some(prev) = map.entry(&key_text) {
                return self.fail(
                    &key_pos,
                    format!(
                        "mapping key {key_text:?} already defined at line {}",
                        prev.key_pos.line
                    ),
                );
            }
            map.insert(key_text, key_pos, value);
        }
        for source in merges {
            let sources: Vec<Node> = match source.value {
                Value::Map(_) => vec![source],
                Value::Seq(items) => items,
                _ => {
                    return self.fail(
                        &source.pos,
                        "merge key << needs a mapping or a sequence of mappings",
                    );
                }
            };
            for s in sources {
                let Value::Map(m) = s.value else {
                    return self.fail(
                        &s.pos,
                        "merge key << needs a mapping or a sequence of mappings",
                    );
                };
                for (k, e) in m.entries {
                    if !map.contains_key(&k) {
                        map.insert(k, e.key_pos, e.value);
                    }
                }
            }
        }
        Ok(map)
    }
}

#[cfg(test)]
mod tests;
