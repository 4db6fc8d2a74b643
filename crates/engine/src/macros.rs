//! Coopr's macro language: `%...%` placeholders in cluster config and service action data,
//! expanded for the node a task runs on before the task is handed to a provisioner.
//!
//! ```text
//!   "hdfs://%host.service.namenode%"  ──parse──►  Expression { name, instance, map format, join separator }
//!                                                      │
//!   MacroContext { owner, nodes, task node } ──index──► evaluate ──► values ──map/join──► output
//! ```
//!
//! # Grammar, as implemented
//!
//! ```text
//! text       ::= ( other-text | "%%" | "%" expression "%" )*
//! expression ::= "join(" inner "," literal ")" | inner
//! inner      ::= "map(" basic "," literal ")" | basic
//! basic      ::= name instance?
//! name       ::= ( letter | digit | "_" | "-" | "." )+
//! instance   ::= "[" ascii-digit+ "]"
//! literal    ::= "'" [^']* "'" | '"' [^"]* '"'
//! ```
//!
//! No whitespace is allowed inside an expression. The names, with what they expand to:
//!
//! | name | expands to |
//! | --- | --- |
//! | `cluster.owner` | the cluster owner's user id |
//! | `host.self` | the task node's hostname |
//! | `ip.self`, `ip.<type>.self` | the task node's address of that type (default `bind_v4`) |
//! | `host.service.<svc>` | hostnames of the nodes with `<svc>`, comma separated |
//! | `ip.service.<svc>`, `ip.<type>.service.<svc>` | their addresses of that type (default `bind_v4`) |
//! | `host.service.<svc>[i]`, `ip[.<type>].service.<svc>[i]` | the same, of the i-th node only (from 0) |
//! | `num.service.<svc>` | how many nodes have `<svc>` (`0` for none) |
//! | `instance.self.service.<svc>` | the task node's position among the nodes with `<svc>` (from 1) |
//!
//! `map(basic,'fmt')` replaces each `$` of `fmt` by one value (`$$` is a literal `$`);
//! `join(inner,'sep')` separates the values with `sep` instead of `,`.
//!
//! # Semantics, following Coopr's `Expander`, `Parser` and `eval/` classes
//!
//! - **Delimiters.** A macro runs from a `%` to the next `%`; `%%` is never a delimiter and is
//!   copied through as it is (Coopr does not unescape it). A lone `%` with no closing one is
//!   plain text; text between two `%` must be a valid expression (`"50% of 60%"` is a syntax
//!   error, as in Coopr: write `50%% of 60%%`).
//! - **Node order.** List macros give the nodes in node id order (Coopr keeps nodes in a set
//!   ordered by id); instance macros (`[i]`, `instance.self`) order them by nodenum. Node ids of
//!   this project are derived from the nodenum so that both orders agree for real clusters.
//! - **Left as is.** A macro whose service no node has (`host.service.x`, `ip...service.x`),
//!   `host.self` on a node without a hostname and `instance.self.service.x` on a node without
//!   `x` stay in the text unexpanded, `%` signs included (Coopr's "cannot be expanded, left
//!   unexpanded"; Coopr drops such a macro when another one of the same string expanded, which
//!   is not followed here).
//! - **Errors** where Coopr throws: a malformed expression (`syntax`), a name that is not a
//!   macro (`unknown_macro`), `[i]` beyond the nodes with the service
//!   (`instance_out_of_range`), a node with the service but without a hostname
//!   (`missing_hostname`) or without an address of the asked type (`missing_ip`, also for
//!   `ip.self`), a `self` macro with no task node (`no_task_node`). Stricter than Coopr: `[i]`
//!   on a macro that is not a host or ip list is a syntax error (Coopr ignores it), an instance
//!   node without a hostname or address is an error (Coopr writes `null`), and
//!   `host.self.service.<svc>` / `ip.self.service.<svc>`, which Coopr's guide mentions but its
//!   code does not implement, are `unknown_macro`.
//! - **JSON.** Every string value inside objects and arrays is expanded; object keys, numbers,
//!   booleans and nulls are left untouched (as Coopr's `Expander`).
//! - **Bounds.** One call produces at most [`MAX_EXPANSION_BYTES`] of output (for a JSON value:
//!   all its strings together), else `too_large`; a JSON value may nest at most
//!   [`MAX_VALUE_DEPTH`] levels, else `too_deep`. Parsing is linear in the input and each value
//!   is written once, so the work of one call is bounded by input plus output size.

use std::borrow::Cow;
use std::collections::BTreeMap;

use coopr_types::{Node, NodeId, ShortStr};
use serde_json::Value;
use thiserror::Error;

/// The most output one call of [`expand_str`] or [`expand_value`] may produce, in bytes.
pub const MAX_EXPANSION_BYTES: usize = 1 << 20;
/// The deepest nesting of arrays and objects [`expand_value`] walks through.
pub const MAX_VALUE_DEPTH: usize = 128;
/// The ip type of `ip.self` and `ip.service.<svc>`.
pub const DEFAULT_IP_TYPE: &str = "bind_v4";
/// Macro texts quoted in errors are cut to this many characters.
const MAX_QUOTED_CHARS: usize = 120;

/// One node of the cluster, as macros see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MacroNode {
    pub id: NodeId,
    pub nodenum: u32,
    /// Empty while the node has no hostname yet.
    pub hostname: String,
    /// Addresses by type (`access_v4`, `bind_v4`, ...).
    pub ipaddresses: BTreeMap<String, String>,
    pub services: Vec<ShortStr>,
}

impl From<&Node> for MacroNode {
    fn from(node: &Node) -> Self {
        MacroNode {
            id: node.id.clone(),
            nodenum: node.properties.nodenum,
            hostname: node.properties.hostname.to_string(),
            ipaddresses: node.properties.ipaddresses.clone(),
            services: node.properties.services.clone(),
        }
    }
}

/// What macros are expanded against: one cluster, seen from the node a task runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MacroContext {
    /// The cluster owner's user id (`%cluster.owner%`).
    pub cluster_owner: String,
    /// Every node of the cluster, in any order.
    pub nodes: Vec<MacroNode>,
    /// The node the task runs on (the `self` macros); `None` for cluster-wide text.
    pub task_node: Option<NodeId>,
}

/// Why a text could not be expanded. Each variant quotes the macro (cut to 120 characters).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MacroError {
    /// The text between two `%` is not a well-formed expression.
    #[error("macro '%{macro_text}%' is malformed: {reason}")]
    Syntax { macro_text: String, reason: String },
    /// Well-formed, but the name is not one of the macros.
    #[error("macro '%{macro_text}%' is unknown: {reason}")]
    UnknownMacro { macro_text: String, reason: String },
    /// `[instance]` is not below the number of nodes with the service.
    #[error(
        "macro '%{macro_text}%' asks for instance {instance} of service '{service}', \
         but {count} node(s) have it (instances count from 0)"
    )]
    InstanceOutOfRange {
        macro_text: String,
        service: String,
        instance: usize,
        count: usize,
    },
    /// A node the macro lists has no hostname.
    #[error("macro '%{macro_text}%' cannot be expanded: node {node} has no hostname")]
    MissingHostname { macro_text: String, node: NodeId },
    /// A node the macro lists has no address of the macro's type.
    #[error("macro '%{macro_text}%' cannot be expanded: node {node} has no '{ip_type}' address")]
    MissingIp {
        macro_text: String,
        node: NodeId,
        ip_type: String,
    },
    /// A `self` macro, but the context names no task node or one that is not in the cluster.
    #[error("macro '%{macro_text}%' needs the task's node: {reason}")]
    NoTaskNode { macro_text: String, reason: String },
    /// The output would exceed [`MAX_EXPANSION_BYTES`].
    #[error("expansion exceeds {limit_bytes} bytes (at macro '%{macro_text}%')")]
    TooLarge {
        macro_text: String,
        limit_bytes: usize,
    },
    /// The JSON value nests deeper than [`MAX_VALUE_DEPTH`].
    #[error("value nests deeper than {limit} levels")]
    TooDeep { limit: usize },
}

impl MacroError {
    /// A stable machine-readable code for the error.
    pub fn code(&self) -> &'static str {
        match self {
            MacroError::Syntax { .. } => "syntax",
            MacroError::UnknownMacro { .. } => "unknown_macro",
            MacroError::InstanceOutOfRange { .. } => "instance_out_of_range",
            MacroError::MissingHostname { .. } => "missing_hostname",
            MacroError::MissingIp { .. } => "missing_ip",
            MacroError::NoTaskNode { .. } => "no_task_node",
            MacroError::TooLarge { .. } => "too_large",
            MacroError::TooDeep { .. } => "too_deep",
        }
    }
}

/// Checks that every macro of `text` is well formed and names a macro, without a cluster
/// (for templates, before any node exists).
pub fn validate(text: &str) -> Result<(), MacroError> {
    let mut pos = 0;
    while let Some((open, close)) = next_macro(text, pos) {
        parse(&text[open + 1..close])?;
        pos = close + 1;
    }
    Ok(())
}

/// Expands every macro of `text`.
pub fn expand_str(text: &str, context: &MacroContext) -> Result<String, MacroError> {
    let cluster = Cluster::new(context);
    let mut budget = MAX_EXPANSION_BYTES;
    expand_text(text, &cluster, &mut budget)
}

/// Expands every string inside `value` (recursively through arrays and object values; keys and
/// other scalars untouched) into a new value. All strings of the result together hold at most
/// [`MAX_EXPANSION_BYTES`].
pub fn expand_value(value: &Value, context: &MacroContext) -> Result<Value, MacroError> {
    let cluster = Cluster::new(context);
    let mut budget = MAX_EXPANSION_BYTES;
    expand_json(value, &cluster, &mut budget, 0)
}

fn expand_json(
    value: &Value,
    cluster: &Cluster<'_>,
    budget: &mut usize,
    depth: usize,
) -> Result<Value, MacroError> {
    if depth >= MAX_VALUE_DEPTH && (value.is_array() || value.is_object()) {
        return Err(MacroError::TooDeep {
            limit: MAX_VALUE_DEPTH,
        });
    }
    match value {
        Value::String(text) => Ok(Value::String(expand_text(text, cluster, budget)?)),
        Value::Array(items) => items
            .iter()
            .map(|item| expand_json(item, cluster, budget, depth + 1))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        Value::Object(map) => {
            let mut expanded = serde_json::Map::with_capacity(map.len());
            for (key, item) in map {
                expanded.insert(key.clone(), expand_json(item, cluster, budget, depth + 1)?);
            }
            Ok(Value::Object(expanded))
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => Ok(value.clone()),
    }
}

/// Finds the next macro at or after `pos`: the byte positions of its opening and closing `%`.
/// A `%%` pair is never a delimiter, inside or outside a macro (Coopr's `findNextPercent`).
fn next_macro(text: &str, pos: usize) -> Option<(usize, usize)> {
    let open = next_percent(text.as_bytes(), pos)?;
    let close = next_percent(text.as_bytes(), open + 1)?;
    Some((open, close))
}

fn next_percent(bytes: &[u8], mut pos: usize) -> Option<usize> {
    while pos < bytes.len() {
        if bytes[pos] == b'%' {
            if bytes.get(pos + 1) == Some(&b'%') {
                pos += 2;
                continue;
            }
            return Some(pos);
        }
        pos += 1;
    }
    None
}

/// Expands one text, charging what it writes to `budget`.
fn expand_text(
    text: &str,
    cluster: &Cluster<'_>,
    budget: &mut usize,
) -> Result<String, MacroError> {
    let mut out = Output {
        text: String::new(),
        budget,
        macro_text: "",
    };
    let mut pos = 0;
    while let Some((open, close)) = next_macro(text, pos) {
        out.push(&text[pos..open])?;
        let macro_text = &text[open + 1..close];
        out.macro_text = macro_text;
        let expression = parse(macro_text)?;
        match cluster.evaluate(&expression, macro_text)? {
            Some(values) => expression.write(&values, &mut out)?,
            // Coopr leaves a macro it cannot expand in place.
            None => out.push(&text[open..=close])?,
        }
        pos = close + 1;
    }
    out.push(&text[pos..])?;
    Ok(out.text)
}

/// The text being built, and what may still be written to it.
struct Output<'a, 'b> {
    text: String,
    budget: &'b mut usize,
    /// The macro being written, for a `too_large` error.
    macro_text: &'a str,
}

impl Output<'_, '_> {
    fn push(&mut self, s: &str) -> Result<(), MacroError> {
        if s.len() > *self.budget {
            return Err(MacroError::TooLarge {
                macro_text: quote(self.macro_text),
                limit_bytes: MAX_EXPANSION_BYTES,
            });
        }
        *self.budget -= s.len();
        self.text.push_str(s);
        Ok(())
    }
}

/// Cuts a macro text for an error message.
fn quote(macro_text: &str) -> String {
    match macro_text.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", &macro_text[..cut]),
        None => macro_text.to_string(),
    }
}

/// One parsed macro.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expression<'a> {
    name: Name<'a>,
    /// `[i]`, for the host and ip lists only.
    instance: Option<usize>,
    /// `map(..., 'format')`.
    format: Option<&'a str>,
    /// `join(..., 'separator')`; `,` otherwise.
    separator: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Name<'a> {
    ClusterOwner,
    HostSelf,
    IpSelf { ip_type: &'a str },
    HostService { service: &'a str },
    IpService { ip_type: &'a str, service: &'a str },
    NumService { service: &'a str },
    InstanceSelf { service: &'a str },
}

impl Expression<'_> {
    /// Writes the values, each through the map format, separated by the join separator.
    fn write(&self, values: &[Cow<'_, str>], out: &mut Output<'_, '_>) -> Result<(), MacroError> {
        for (i, value) in values.iter().enumerate() {
            if i > 0 {
                out.push(self.separator.unwrap_or(","))?;
            }
            match self.format {
                None => out.push(value)?,
                Some(format) => write_formatted(format, value, out)?,
            }
        }
        Ok(())
    }
}

/// `$` in `format` becomes `value`; `$$` becomes `$`.
fn write_formatted(format: &str, value: &str, out: &mut Output<'_, '_>) -> Result<(), MacroError> {
    let mut rest = format;
    while let Some(dollar) = rest.find('$') {
        out.push(&rest[..dollar])?;
        if rest[dollar + 1..].starts_with('$') {
            out.push("$")?;
            rest = &rest[dollar + 2..];
        } else {
            out.push(value)?;
            rest = &rest[dollar + 1..];
        }
    }
    out.push(rest)
}

/// Parses the text between two `%` (Coopr's `Parser`, then its `Evaluators` for the name).
fn parse(macro_text: &str) -> Result<Expression<'_>, MacroError> {
    let syntax = |reason: String| MacroError::Syntax {
        macro_text: quote(macro_text),
        reason,
    };
    let mut parser = Parser {
        input: macro_text,
        pos: 0,
    };
    let (basic, format, separator) = if parser.eat("join(") {
        let (basic, format) = parser.inner().map_err(syntax)?;
        parser.expect(',').map_err(syntax)?;
        let separator = parser.literal().map_err(syntax)?;
        parser.expect(')').map_err(syntax)?;
        (basic, format, Some(separator))
    } else {
        let (basic, format) = parser.inner().map_err(syntax)?;
        (basic, format, None)
    };
    if parser.pos < macro_text.len() {
        return Err(syntax(format!(
            "unexpected characters after the macro at position {}",
            parser.pos
        )));
    }
    let (name_text, instance) = basic;
    let name = resolve_name(name_text).map_err(|error| match error {
        NameError::Syntax(reason) => syntax(reason),
        NameError::Unknown(reason) => MacroError::UnknownMacro {
            macro_text: quote(macro_text),
            reason,
        },
    })?;
    if instance.is_some() && !matches!(name, Name::HostService { .. } | Name::IpService { .. }) {
        return Err(syntax(format!(
            "an instance number applies only to host.service.<service> and \
             ip[.<type>].service.<service>, not to '{}'",
            quote(name_text)
        )));
    }
    Ok(Expression {
        name,
        instance,
        format,
        separator,
    })
}

/// A macro name and its `[instance]`.
type Basic<'a> = (&'a str, Option<usize>);

struct Parser<'a> {
    input: &'a str,
    /// A byte offset into `input`, always at a character boundary.
    pos: usize,
}

impl<'a> Parser<'a> {
    fn eat(&mut self, prefix: &str) -> bool {
        if self.input[self.pos..].starts_with(prefix) {
            self.pos += prefix.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.input[self.pos..].starts_with(c) {
            self.pos += c.len_utf8();
            Ok(())
        } else {
            Err(format!("'{c}' expected at position {}", self.pos))
        }
    }

    /// `map(basic,'format')` or `basic`.
    fn inner(&mut self) -> Result<(Basic<'a>, Option<&'a str>), String> {
        if self.eat("map(") {
            let basic = self.basic()?;
            self.expect(',')?;
            let format = self.literal()?;
            self.expect(')')?;
            Ok((basic, Some(format)))
        } else {
            Ok((self.basic()?, None))
        }
    }

    /// A macro name, then an optional `[instance]`.
    fn basic(&mut self) -> Result<Basic<'a>, String> {
        let rest = &self.input[self.pos..];
        let name_len = rest
            .char_indices()
            .find(|&(_, c)| !(c.is_alphanumeric() || c == '_' || c == '-' || c == '.'))
            .map_or(rest.len(), |(i, _)| i);
        if name_len == 0 {
            return Err(format!("a macro name expected at position {}", self.pos));
        }
        let name = &rest[..name_len];
        self.pos += name_len;
        if !self.eat("[") {
            return Ok((name, None));
        }
        let digits_start = self.pos;
        let rest = &self.input[digits_start..];
        let digits_len = rest
            .char_indices()
            .find(|&(_, c)| !c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let digits = &rest[..digits_len];
        self.pos += digits_len;
        let after = &rest[digits_len..];
        if !after.is_empty() && !after.starts_with(']') {
            return Err(format!(
                "an instance number consists of digits only (position {})",
                self.pos
            ));
        }
        if digits.is_empty() {
            return Err(format!("no instance number at position {digits_start}"));
        }
        if !self.eat("]") {
            return Err("no closing ']' after the instance number".to_string());
        }
        let instance = digits
            .parse::<usize>()
            .map_err(|_| format!("instance number {digits} is too large"))?;
        Ok((name, Some(instance)))
    }

    /// `'...'` or `"..."`, without escapes.
    fn literal(&mut self) -> Result<&'a str, String> {
        let rest = &self.input[self.pos..];
        let delimiter = match rest.chars().next() {
            Some(c @ ('\'' | '"')) => c,
            _ => return Err(format!("' or \" expected at position {}", self.pos)),
        };
        match rest[1..].find(delimiter) {
            Some(end) => {
                self.pos += end + 2;
                Ok(&rest[1..end + 1])
            }
            None => Err(format!(
                "no closing {delimiter} for the string at position {}",
                self.pos
            )),
        }
    }
}

enum NameError {
    Syntax(String),
    Unknown(String),
}

/// Maps a macro name to what it means (Coopr's `Evaluators.evaluatorFor`).
fn resolve_name(name: &str) -> Result<Name<'_>, NameError> {
    fn service(service: &str) -> Result<&str, NameError> {
        if service.is_empty() {
            Err(NameError::Syntax("the service name is missing".to_string()))
        } else {
            Ok(service)
        }
    }
    let unknown = || NameError::Unknown(format!("'{}' is not a macro name", quote(name)));
    if name == "cluster.owner" {
        return Ok(Name::ClusterOwner);
    }
    if name == "host.self" {
        return Ok(Name::HostSelf);
    }
    if name.starts_with("host.self.service.") {
        return Err(NameError::Unknown(
            "host.self.service.<service> is mentioned in Coopr's guide but is not a Coopr macro; \
             use host.self"
                .to_string(),
        ));
    }
    if let Some(rest) = name.strip_prefix("host.service.") {
        return Ok(Name::HostService {
            service: service(rest)?,
        });
    }
    if let Some(rest) = name.strip_prefix("num.service.") {
        return Ok(Name::NumService {
            service: service(rest)?,
        });
    }
    if let Some(rest) = name.strip_prefix("instance.self.service.") {
        return Ok(Name::InstanceSelf {
            service: service(rest)?,
        });
    }
    let Some(rest) = name.strip_prefix("ip.") else {
        return Err(unknown());
    };
    if rest == "self" {
        return Ok(Name::IpSelf {
            ip_type: DEFAULT_IP_TYPE,
        });
    }
    if let Some(rest) = rest.strip_prefix("service.") {
        return Ok(Name::IpService {
            ip_type: DEFAULT_IP_TYPE,
            service: service(rest)?,
        });
    }
    let Some((ip_type, tail)) = rest.split_once('.') else {
        return Err(unknown());
    };
    if ip_type == "self" {
        return Err(NameError::Unknown(
            "ip.self.service.<service> is mentioned in Coopr's guide but is not a Coopr macro; \
             use ip.self or ip.<type>.self"
                .to_string(),
        ));
    }
    if ip_type.is_empty() {
        return Err(NameError::Syntax("the ip type is empty".to_string()));
    }
    if tail == "self" {
        return Ok(Name::IpSelf { ip_type });
    }
    match tail.strip_prefix("service.") {
        Some(rest) => Ok(Name::IpService {
            ip_type,
            service: service(rest)?,
        }),
        None => Err(unknown()),
    }
}

/// The context, indexed once per call: the nodes of each service in both orders.
struct Cluster<'a> {
    context: &'a MacroContext,
    services: BTreeMap<&'a str, ServiceNodes<'a>>,
    /// `Ok(None)` when no task node is named; `Err` names a task node that is not in the cluster.
    task_node: Result<Option<&'a MacroNode>, &'a NodeId>,
}

#[derive(Default)]
struct ServiceNodes<'a> {
    /// For list macros: by node id, as Coopr's node set.
    by_id: Vec<&'a MacroNode>,
    /// For instance macros: by nodenum, as Coopr's `ServiceEvaluator`.
    by_nodenum: Vec<&'a MacroNode>,
}

impl<'a> Cluster<'a> {
    fn new(context: &'a MacroContext) -> Self {
        let mut nodes: Vec<&MacroNode> = context.nodes.iter().collect();
        nodes.sort_by(|a, b| a.id.cmp(&b.id).then(a.nodenum.cmp(&b.nodenum)));
        let mut services: BTreeMap<&str, ServiceNodes<'_>> = BTreeMap::new();
        for node in nodes {
            for service in &node.services {
                let entry = services.entry(service.as_str()).or_default();
                // A node that lists a service twice still counts once.
                if !entry
                    .by_id
                    .last()
                    .is_some_and(|last| std::ptr::eq(*last, node))
                {
                    entry.by_id.push(node);
                }
            }
        }
        for entry in services.values_mut() {
            entry.by_nodenum = entry.by_id.clone();
            // Stable: nodes with equal nodenums keep their id order.
            entry.by_nodenum.sort_by_key(|node| node.nodenum);
        }
        let task_node = match &context.task_node {
            None => Ok(None),
            Some(id) => context
                .nodes
                .iter()
                .find(|node| &node.id == id)
                .map(Some)
                .ok_or(id),
        };
        Cluster {
            context,
            services,
            task_node,
        }
    }

    fn task_node(&self, macro_text: &str) -> Result<&'a MacroNode, MacroError> {
        match self.task_node {
            Ok(Some(node)) => Ok(node),
            Ok(None) => Err(MacroError::NoTaskNode {
                macro_text: quote(macro_text),
                reason: "the text is expanded without one".to_string(),
            }),
            Err(id) => Err(MacroError::NoTaskNode {
                macro_text: quote(macro_text),
                reason: format!("node {id} is not a node of the cluster"),
            }),
        }
    }

    /// The values of one macro, or `None` when it is to be left in place.
    fn evaluate(
        &self,
        expression: &Expression<'_>,
        macro_text: &str,
    ) -> Result<Option<Vec<Cow<'a, str>>>, MacroError> {
        let hostname = |node: &'a MacroNode| -> Result<Cow<'a, str>, MacroError> {
            if node.hostname.is_empty() {
                Err(MacroError::MissingHostname {
                    macro_text: quote(macro_text),
                    node: node.id.clone(),
                })
            } else {
                Ok(Cow::Borrowed(node.hostname.as_str()))
            }
        };
        let ip = |node: &'a MacroNode, ip_type: &str| -> Result<Cow<'a, str>, MacroError> {
            match node.ipaddresses.get(ip_type) {
                Some(address) => Ok(Cow::Borrowed(address.as_str())),
                None => Err(MacroError::MissingIp {
                    macro_text: quote(macro_text),
                    node: node.id.clone(),
                    ip_type: ip_type.to_string(),
                }),
            }
        };
        let values = match expression.name {
            Name::ClusterOwner => vec![Cow::Borrowed(self.context.cluster_owner.as_str())],
            Name::HostSelf => {
                let node = self.task_node(macro_text)?;
                if node.hostname.is_empty() {
                    return Ok(None);
                }
                vec![Cow::Borrowed(node.hostname.as_str())]
            }
            Name::IpSelf { ip_type } => vec![ip(self.task_node(macro_text)?, ip_type)?],
            Name::HostService { service } => {
                match self.service_nodes(service, expression.instance, macro_text)? {
                    None => return Ok(None),
                    Some(nodes) => nodes.into_iter().map(hostname).collect::<Result<_, _>>()?,
                }
            }
            Name::IpService { ip_type, service } => {
                match self.service_nodes(service, expression.instance, macro_text)? {
                    None => return Ok(None),
                    Some(nodes) => nodes
                        .into_iter()
                        .map(|node| ip(node, ip_type))
                        .collect::<Result<_, _>>()?,
                }
            }
            Name::NumService { service } => {
                let count = self.services.get(service).map_or(0, |s| s.by_id.len());
                vec![Cow::Owned(count.to_string())]
            }
            Name::InstanceSelf { service } => {
                let node = self.task_node(macro_text)?;
                let position = self.services.get(service).and_then(|s| {
                    s.by_nodenum
                        .iter()
                        .position(|candidate| std::ptr::eq(*candidate, node))
                });
                match position {
                    None => return Ok(None),
                    Some(index) => vec![Cow::Owned((index + 1).to_string())],
                }
            }
        };
        Ok(Some(values))
    }

    /// The nodes a host or ip list macro names: all nodes with the service (by id), or the
    /// instance-th of them (by nodenum). `None` when no node has the service and no instance
    /// was asked for.
    fn service_nodes(
        &self,
        service: &str,
        instance: Option<usize>,
        macro_text: &str,
    ) -> Result<Option<Vec<&'a MacroNode>>, MacroError> {
        let nodes = self.services.get(service);
        match instance {
            None => Ok(nodes.map(|s| s.by_id.clone())),
            Some(instance) => {
                let by_nodenum = nodes.map_or(&[][..], |s| s.by_nodenum.as_slice());
                match by_nodenum.get(instance) {
                    Some(node) => Ok(Some(vec![*node])),
                    None => Err(MacroError::InstanceOutOfRange {
                        macro_text: quote(macro_text),
                        service: service.to_string(),
                        instance,
                        count: by_nodenum.len(),
                    }),
                }
            }
        }
    }
}
