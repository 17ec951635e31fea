//! The subset of CEL (Common Expression Language) that Telemetry access-log filters use
//! (`accessLogging[].filter.expression`, Envoy's `envoy.access_loggers.filters.cel`):
//! [`Filter::compile`] parses an expression once per configuration, [`Filter::accepts`] decides
//! for one request ([`crate::access_log::Entry`]) whether its line is written. A pure library.
//!
//! Accepted (everything else is a compile error naming it and its byte offset):
//! - literals: integers (`400`, `-1`, `400u`), strings (`'GET'`, `"x"`, with `\\`, `\'`, `\"`,
//!   `\n`, `\t` escapes), `true`, `false`, lists of literals (`[500, 503]`);
//! - Envoy's attributes: `request.path` (with the query), `request.url_path` (without),
//!   `request.host`, `request.scheme`, `request.method`, `request.id`, `request.useragent`,
//!   `request.referer`, `request.protocol`, `request.size` (body bytes received),
//!   `request.headers['name']`, `response.code`, `response.code_details`, `response.size`
//!   (body bytes sent), `response.headers['name']`, `response.grpc_status`,
//!   `source.address`, `source.port`, `destination.address`, `destination.port`,
//!   `upstream.address`, `upstream.port`, `xds.cluster_name`, `xds.route_name`,
//!   `connection.requested_server_name`;
//! - `==`, `!=`, `<`, `<=`, `>`, `>=` between two ints or two strings (`==`/`!=` between
//!   booleans too), `&&`, `||`, `!`, parentheses, `x in [..]`, `'name' in request.headers`
//!   (and `response.headers`), and the string methods `startsWith`, `endsWith`, `contains`,
//!   `matches` (RE2, within [`crate::regex`]'s limits).
//!
//! Types are checked at compile time (`response.code == '200'` is refused, as CEL's checker
//! refuses it). At evaluation an absent attribute (a header the request lacks, TCP's
//! `request.method`) is an error value, which `&&` and `||` absorb as CEL does
//! (`false && error` is false, `true || error` is true); a filter whose result is an error
//! writes no line, as Envoy's CEL filter does.
//!
//! Limits: [`MAX_EXPRESSION_BYTES`] of text, [`MAX_DEPTH`] nested operations, [`MAX_NODES`]
//! operations in all.

use std::fmt;
use std::net::SocketAddr;

use crate::access_log::Entry;

/// The longest expression accepted, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 4096;
/// The deepest nesting of operations.
pub const MAX_DEPTH: usize = 32;
/// The most operations (operators, calls, attributes, literals) in one expression.
pub const MAX_NODES: usize = 512;

/// Why an expression is refused: what, and where (a byte offset into it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at byte {position})")]
pub struct CelError {
    pub position: usize,
    pub message: String,
}

fn err<T>(position: usize, message: impl Into<String>) -> Result<T, CelError> {
    Err(CelError {
        position,
        message: message.into(),
    })
}

/// A static type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Type {
    Int,
    Str,
    Bool,
    List(Elem),
    Map,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Elem {
    Int,
    Str,
    Bool,
    Empty,
}

impl fmt::Display for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Type::Int => "int",
            Type::Str => "string",
            Type::Bool => "bool",
            Type::List(_) => "list",
            Type::Map => "map(string, string)",
        })
    }
}

/// An attribute of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Attr {
    /// A request header (lowercase; pseudo-headers `:path`, `:authority`...).
    Request(String),
    /// A response header (lowercase).
    Response(String),
    UrlPath,
    Protocol,
    RequestSize,
    ResponseCode,
    CodeDetails,
    ResponseSize,
    GrpcStatus,
    SourceAddress,
    SourcePort,
    DestinationAddress,
    DestinationPort,
    UpstreamAddress,
    UpstreamPort,
    ClusterName,
    RouteName,
    Sni,
}

impl Attr {
    fn ty(&self) -> Type {
        match self {
            Attr::RequestSize
            | Attr::ResponseCode
            | Attr::ResponseSize
            | Attr::GrpcStatus
            | Attr::SourcePort
            | Attr::DestinationPort
            | Attr::UpstreamPort => Type::Int,
            _ => Type::Str,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Method {
    StartsWith,
    EndsWith,
    Contains,
}

#[derive(Clone, Debug)]
enum Lit {
    Int(i64),
    Str(String),
    Bool(bool),
}

#[derive(Clone, Debug)]
enum Expr {
    Lit(Lit),
    Attr(Attr),
    /// `request.headers` / `response.headers` as a whole (only right of `in`).
    Headers(bool),
    List(Vec<Lit>),
    Not(Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Cmp(Cmp, Box<Expr>, Box<Expr>),
    InList(Box<Expr>, Vec<Lit>),
    /// `'name' in request.headers` (true: request, false: response).
    HasHeader(String, bool),
    Call(Method, Box<Expr>, Box<Expr>),
    Matches(Box<Expr>, Box<regex::Regex>),
}

/// A compiled filter.
#[derive(Clone, Debug)]
pub struct Filter {
    expr: Expr,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
    /// `response.grpc_status` reads the `grpc-status` trailer (or header).
    reads_grpc_status: bool,
}

/// A value at evaluation; `None` stands for CEL's error value.
#[derive(Debug, PartialEq)]
enum Val<'a> {
    Int(i64),
    Str(std::borrow::Cow<'a, str>),
    Bool(bool),
}

impl Filter {
    /// Parses and type-checks `text`; the error names what is wrong and where.
    pub fn compile(text: &str) -> Result<Filter, CelError> {
        if text.len() > MAX_EXPRESSION_BYTES {
            return err(
                0,
                format!(
                    "the expression is {} bytes, over the limit of {MAX_EXPRESSION_BYTES}",
                    text.len()
                ),
            );
        }
        let mut p = Parser {
            text,
            pos: 0,
            depth: 0,
            nodes: 0,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
        };
        let (expr, ty) = p.expr()?;
        p.skip_ws();
        if p.pos < text.len() {
            return err(p.pos, "unexpected text after the expression");
        }
        if ty != Type::Bool {
            return err(0, format!("the expression is a {ty}, not a bool"));
        }
        let reads_grpc_status = p.response_headers.iter().any(|h| h == "grpc-status");
        Ok(Filter {
            expr,
            request_headers: p.request_headers,
            response_headers: p.response_headers,
            reads_grpc_status,
        })
    }

    /// Lowercase names of the request headers (pseudo-headers included) the filter reads.
    pub fn request_headers(&self) -> &[String] {
        &self.request_headers
    }

    /// Lowercase names of the response headers the filter reads.
    pub fn response_headers(&self) -> &[String] {
        &self.response_headers
    }

    /// Lowercase names of the response trailers the filter reads (`grpc-status` for
    /// `response.grpc_status`).
    pub fn response_trailers(&self) -> &[String] {
        static GRPC_STATUS: std::sync::LazyLock<[String; 1]> =
            std::sync::LazyLock::new(|| ["grpc-status".to_string()]);
        if self.reads_grpc_status {
            &GRPC_STATUS[..]
        } else {
            &[]
        }
    }

    /// Whether the request's line is written: the expression is true (an error is not).
    pub fn accepts(&self, e: &Entry<'_>) -> bool {
        matches!(eval(&self.expr, e), Some(Val::Bool(true)))
    }
}

/// The value of `text` when it is exactly one CEL string literal (`'v1'`, `"a b"`, escapes
/// as [`Filter::compile`] reads them): what Telemetry `tagOverrides` values may be in rustmesh.
pub fn string_literal(text: &str) -> Option<String> {
    if text.len() > MAX_EXPRESSION_BYTES {
        return None;
    }
    let mut p = Parser {
        text,
        pos: 0,
        depth: 0,
        nodes: 0,
        request_headers: Vec::new(),
        response_headers: Vec::new(),
    };
    let Ok(Some((Lit::Str(v), _))) = p.literal() else {
        return None;
    };
    p.skip_ws();
    (p.pos == text.len()).then_some(v)
}

fn addr_text(a: Option<SocketAddr>) -> Option<Val<'static>> {
    a.map(|a| Val::Str(a.to_string().into()))
}

fn port(a: Option<SocketAddr>) -> Option<Val<'static>> {
    a.map(|a| Val::Int(i64::from(a.port())))
}

fn str_val<'a>(s: Option<&'a str>) -> Option<Val<'a>> {
    s.map(|s| Val::Str(s.into()))
}

fn attr<'a>(a: &Attr, e: &Entry<'a>) -> Option<Val<'a>> {
    match a {
        Attr::Request(h) => str_val((e.request_header)(h)),
        Attr::Response(h) => str_val((e.response_header)(h)),
        Attr::UrlPath => {
            let p = (e.request_header)(":path")?;
            Some(Val::Str(p.split('?').next().unwrap_or(p).into()))
        }
        Attr::Protocol => str_val(e.protocol),
        Attr::RequestSize => Some(Val::Int(e.bytes_received.min(i64::MAX as u64) as i64)),
        Attr::ResponseCode => e
            .protocol
            .is_some()
            .then_some(Val::Int(i64::from(e.response_code))),
        Attr::CodeDetails => str_val(e.response_code_details),
        Attr::ResponseSize => Some(Val::Int(e.bytes_sent.min(i64::MAX as u64) as i64)),
        Attr::GrpcStatus => (e.response_trailer)("grpc-status")
            .or_else(|| (e.response_header)("grpc-status"))
            .and_then(|s| s.parse().ok())
            .map(Val::Int),
        Attr::SourceAddress => addr_text(e.downstream_remote_address),
        Attr::SourcePort => port(e.downstream_remote_address),
        Attr::DestinationAddress => addr_text(e.downstream_local_address),
        Attr::DestinationPort => port(e.downstream_local_address),
        Attr::UpstreamAddress => addr_text(e.upstream_host),
        Attr::UpstreamPort => port(e.upstream_host),
        Attr::ClusterName => str_val(e.upstream_cluster),
        Attr::RouteName => str_val(e.route_name),
        Attr::Sni => str_val(e.requested_server_name),
    }
}

fn lit(l: &Lit) -> Val<'_> {
    match l {
        Lit::Int(i) => Val::Int(*i),
        Lit::Str(s) => Val::Str(s.as_str().into()),
        Lit::Bool(b) => Val::Bool(*b),
    }
}

fn eval<'v, 'x: 'v, 'a: 'v>(x: &'x Expr, e: &Entry<'a>) -> Option<Val<'v>> {
    Some(match x {
        Expr::Lit(l) => lit(l),
        Expr::Attr(a) => return attr(a, e),
        // Type-checked: never evaluated alone.
        Expr::Headers(_) | Expr::List(_) => return None,
        Expr::Not(a) => match eval(a, e)? {
            Val::Bool(b) => Val::Bool(!b),
            _ => return None,
        },
        Expr::And(a, b) => match (eval(a, e), eval(b, e)) {
            (Some(Val::Bool(false)), _) | (_, Some(Val::Bool(false))) => Val::Bool(false),
            (Some(Val::Bool(true)), Some(Val::Bool(true))) => Val::Bool(true),
            _ => return None,
        },
        Expr::Or(a, b) => match (eval(a, e), eval(b, e)) {
            (Some(Val::Bool(true)), _) | (_, Some(Val::Bool(true))) => Val::Bool(true),
            (Some(Val::Bool(false)), Some(Val::Bool(false))) => Val::Bool(false),
            _ => return None,
        },
        Expr::Cmp(op, a, b) => {
            let ord = match (eval(a, e)?, eval(b, e)?) {
                (Val::Int(x), Val::Int(y)) => x.cmp(&y),
                (Val::Str(x), Val::Str(y)) => x.cmp(&y),
                (Val::Bool(x), Val::Bool(y)) => x.cmp(&y),
                _ => return None,
            };
            Val::Bool(match op {
                Cmp::Eq => ord.is_eq(),
                Cmp::Ne => ord.is_ne(),
                Cmp::Lt => ord.is_lt(),
                Cmp::Le => ord.is_le(),
                Cmp::Gt => ord.is_gt(),
                Cmp::Ge => ord.is_ge(),
            })
        }
        Expr::InList(a, list) => {
            let v = eval(a, e)?;
            Val::Bool(list.iter().any(|l| lit(l) == v))
        }
        Expr::HasHeader(name, request) => Val::Bool(if *request {
            (e.request_header)(name).is_some()
        } else {
            (e.response_header)(name).is_some()
        }),
        Expr::Call(m, a, b) => match (eval(a, e)?, eval(b, e)?) {
            (Val::Str(s), Val::Str(t)) => Val::Bool(match m {
                Method::StartsWith => s.starts_with(t.as_ref()),
                Method::EndsWith => s.ends_with(t.as_ref()),
                Method::Contains => s.contains(t.as_ref()),
            }),
            _ => return None,
        },
        Expr::Matches(a, re) => match eval(a, e)? {
            Val::Str(s) => Val::Bool(re.is_match(&s)),
            _ => return None,
        },
    })
}

struct Parser<'t> {
    text: &'t str,
    pos: usize,
    depth: usize,
    nodes: usize,
    request_headers: Vec<String>,
    response_headers: Vec<String>,
}

fn is_ident_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'_'
}

fn is_ident(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

impl<'t> Parser<'t> {
    fn skip_ws(&mut self) {
        while self
            .text
            .as_bytes()
            .get(self.pos)
            .is_some_and(|c| c.is_ascii_whitespace())
        {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.text.as_bytes().get(self.pos).copied()
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_ws();
        if self.text[self.pos..].starts_with(token) {
            // A word must end where the token ends (`in` is not the start of `index`).
            let word = token.as_bytes().iter().all(|c| is_ident(*c));
            if word
                && self
                    .text
                    .as_bytes()
                    .get(self.pos + token.len())
                    .is_some_and(|c| is_ident(*c))
            {
                return false;
            }
            self.pos += token.len();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, token: &str) -> Result<(), CelError> {
        if self.eat(token) {
            Ok(())
        } else {
            err(self.pos, format!("expected `{token}`"))
        }
    }

    fn node(&mut self) -> Result<(), CelError> {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return err(
                self.pos,
                format!("more than {MAX_NODES} operations in one expression"),
            );
        }
        Ok(())
    }

    fn nested<T>(
        &mut self,
        f: impl FnOnce(&mut Self) -> Result<T, CelError>,
    ) -> Result<T, CelError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return err(self.pos, format!("nested deeper than {MAX_DEPTH}"));
        }
        let out = f(self);
        self.depth -= 1;
        out
    }

    fn expr(&mut self) -> Result<(Expr, Type), CelError> {
        self.nested(|p| p.logical("||", Self::and, Expr::Or))
    }

    fn and(&mut self) -> Result<(Expr, Type), CelError> {
        self.logical("&&", Self::relation, Expr::And)
    }

    /// A left-associative chain of `op` (`||` or `&&`) over the operands `next` parses; with
    /// more than one operand, each must be a bool.
    fn logical(
        &mut self,
        op: &str,
        next: fn(&mut Self) -> Result<(Expr, Type), CelError>,
        join: fn(Box<Expr>, Box<Expr>) -> Expr,
    ) -> Result<(Expr, Type), CelError> {
        let at = self.pos;
        let (mut left, ty) = next(self)?;
        if !self.eat(op) {
            return Ok((left, ty));
        }
        want_bool(at, ty, op)?;
        loop {
            self.node()?;
            let at = self.pos;
            let (right, ty) = next(self)?;
            want_bool(at, ty, op)?;
            left = join(Box::new(left), Box::new(right));
            if !self.eat(op) {
                return Ok((left, Type::Bool));
            }
        }
    }

    fn relation(&mut self) -> Result<(Expr, Type), CelError> {
        let at = self.pos;
        let (left, lt) = self.unary()?;
        self.skip_ws();
        let op_at = self.pos;
        let op = [
            ("==", Cmp::Eq),
            ("!=", Cmp::Ne),
            ("<=", Cmp::Le),
            (">=", Cmp::Ge),
            ("<", Cmp::Lt),
            (">", Cmp::Gt),
        ]
        .into_iter()
        .find(|(t, _)| self.text[self.pos..].starts_with(t));
        if let Some((t, op)) = op {
            self.pos += t.len();
            self.node()?;
            let (right, rt) = self.unary()?;
            let comparable = lt == rt
                && matches!(lt, Type::Int | Type::Str | Type::Bool)
                && (lt != Type::Bool || matches!(op, Cmp::Eq | Cmp::Ne));
            if !comparable {
                return err(op_at, format!("`{t}` between a {lt} and a {rt}"));
            }
            return Ok((Expr::Cmp(op, Box::new(left), Box::new(right)), Type::Bool));
        }
        if self.eat("in") {
            self.node()?;
            let right_at = self.pos;
            let (right, rt) = self.unary()?;
            return match (right, rt) {
                (Expr::List(items), Type::List(elem)) => {
                    let fits = matches!(
                        (lt, elem),
                        (_, Elem::Empty)
                            | (Type::Int, Elem::Int)
                            | (Type::Str, Elem::Str)
                            | (Type::Bool, Elem::Bool)
                    );
                    if !fits {
                        return err(op_at, format!("`in` a list of other values than {lt}"));
                    }
                    Ok((Expr::InList(Box::new(left), items), Type::Bool))
                }
                (Expr::Headers(request), _) => match left {
                    Expr::Lit(Lit::Str(name)) => {
                        let name = name.to_ascii_lowercase();
                        self.use_header(request, &name);
                        Ok((Expr::HasHeader(name, request), Type::Bool))
                    }
                    _ => err(at, "only a string literal can be looked up `in` headers"),
                },
                _ => err(
                    right_at,
                    format!("`in` needs a list or headers, not a {rt}"),
                ),
            };
        }
        Ok((left, lt))
    }

    fn unary(&mut self) -> Result<(Expr, Type), CelError> {
        self.skip_ws();
        let at = self.pos;
        if self.text[self.pos..].starts_with('!') && !self.text[self.pos..].starts_with("!=") {
            self.pos += 1;
            self.node()?;
            return self.nested(|p| {
                let (x, ty) = p.unary()?;
                want_bool(at, ty, "!")?;
                Ok((Expr::Not(Box::new(x)), Type::Bool))
            });
        }
        self.member()
    }

    fn member(&mut self) -> Result<(Expr, Type), CelError> {
        let (mut x, mut ty) = self.primary()?;
        loop {
            self.skip_ws();
            if !self.text[self.pos..].starts_with('.') {
                return Ok((x, ty));
            }
            let at = self.pos;
            self.pos += 1;
            let name = self.ident()?;
            let method = match name {
                "startsWith" => Some(Method::StartsWith),
                "endsWith" => Some(Method::EndsWith),
                "contains" => Some(Method::Contains),
                "matches" => None,
                other => return err(at + 1, format!("unknown function `{other}`")),
            };
            if ty != Type::Str {
                return err(at, format!("`{name}` on a {ty}, not a string"));
            }
            self.node()?;
            self.expect("(")?;
            let arg_at = self.pos;
            let (arg, at_ty) = self.nested(|p| p.expr())?;
            self.expect(")")?;
            if at_ty != Type::Str {
                return err(arg_at, format!("`{name}` takes a string, not a {at_ty}"));
            }
            x = match method {
                Some(m) => Expr::Call(m, Box::new(x), Box::new(arg)),
                None => {
                    let Expr::Lit(Lit::Str(pattern)) = arg else {
                        return err(arg_at, "`matches` takes a string literal");
                    };
                    let re = crate::regex::compile(&pattern, crate::regex::Anchor::Search)
                        .map_err(|e| CelError {
                            position: arg_at,
                            message: format!("`matches`: {e}"),
                        })?
                        .regex;
                    Expr::Matches(Box::new(x), Box::new(re))
                }
            };
            ty = Type::Bool;
        }
    }

    fn ident(&mut self) -> Result<&'t str, CelError> {
        self.skip_ws();
        let start = self.pos;
        let b = self.text.as_bytes();
        if !b.get(start).is_some_and(|c| is_ident_start(*c)) {
            return err(start, "expected a name");
        }
        let mut end = start;
        while b.get(end).is_some_and(|c| is_ident(*c)) {
            end += 1;
        }
        self.pos = end;
        Ok(&self.text[start..end])
    }

    fn use_header(&mut self, request: bool, name: &str) {
        let list = if request {
            &mut self.request_headers
        } else {
            &mut self.response_headers
        };
        if !list.iter().any(|n| n == name) {
            list.push(name.to_string());
        }
    }

    fn primary(&mut self) -> Result<(Expr, Type), CelError> {
        self.node()?;
        let at = self.pos;
        match self.peek() {
            None => err(self.pos, "the expression ends too early"),
            Some(b'(') => {
                self.pos += 1;
                let out = self.nested(|p| p.expr())?;
                self.expect(")")?;
                Ok(out)
            }
            Some(b'[') => {
                self.pos += 1;
                let mut items = Vec::new();
                let mut elem = Elem::Empty;
                if !self.eat("]") {
                    loop {
                        let item_at = self.pos;
                        self.node()?;
                        let (l, t) = match self.literal()? {
                            Some(x) => x,
                            None => return err(item_at, "a list holds literals only"),
                        };
                        let e = match t {
                            Type::Int => Elem::Int,
                            Type::Str => Elem::Str,
                            _ => Elem::Bool,
                        };
                        if elem != Elem::Empty && elem != e {
                            return err(item_at, "a list of mixed types");
                        }
                        elem = e;
                        items.push(l);
                        if self.eat("]") {
                            break;
                        }
                        self.expect(",")?;
                    }
                }
                Ok((Expr::List(items), Type::List(elem)))
            }
            Some(_) => {
                if let Some((l, t)) = self.literal()? {
                    return Ok((Expr::Lit(l), t));
                }
                self.attribute(at)
            }
        }
    }

    fn literal(&mut self) -> Result<Option<(Lit, Type)>, CelError> {
        self.skip_ws();
        let b = self.text.as_bytes();
        let start = self.pos;
        match b.get(start) {
            Some(b'\'' | b'"') => {
                let quote = b[start];
                let mut out = String::new();
                let mut i = start + 1;
                loop {
                    let Some(c) = self.text[i..].chars().next() else {
                        return err(start, "a string without its closing quote");
                    };
                    i += c.len_utf8();
                    if c as u32 == u32::from(quote) {
                        break;
                    }
                    if c == '\\' {
                        let Some(n) = self.text[i..].chars().next() else {
                            return err(start, "a string without its closing quote");
                        };
                        i += n.len_utf8();
                        out.push(match n {
                            '\\' => '\\',
                            '\'' => '\'',
                            '"' => '"',
                            'n' => '\n',
                            't' => '\t',
                            other => {
                                return err(i - 2, format!("unknown escape `\\{other}`"));
                            }
                        });
                    } else {
                        out.push(c);
                    }
                }
                self.pos = i;
                Ok(Some((Lit::Str(out), Type::Str)))
            }
            Some(c) if c.is_ascii_digit() || *c == b'-' => {
                let mut end = start + 1;
                while b.get(end).is_some_and(|c| c.is_ascii_digit()) {
                    end += 1;
                }
                let digits = &self.text[start..end];
                let Ok(n) = digits.parse::<i64>() else {
                    return err(start, format!("`{digits}` is not an integer CEL can hold"));
                };
                // `400u`: CEL's unsigned literal, compared as a number here.
                if b.get(end) == Some(&b'u') {
                    end += 1;
                }
                if b.get(end).is_some_and(|c| is_ident(*c) || *c == b'.') {
                    return err(start, "only integer literals are supported");
                }
                self.pos = end;
                Ok(Some((Lit::Int(n), Type::Int)))
            }
            _ => {
                if self.eat("true") {
                    Ok(Some((Lit::Bool(true), Type::Bool)))
                } else if self.eat("false") {
                    Ok(Some((Lit::Bool(false), Type::Bool)))
                } else {
                    Ok(None)
                }
            }
        }
    }

    fn attribute(&mut self, at: usize) -> Result<(Expr, Type), CelError> {
        let root = self.ident()?;
        if !self.eat(".") {
            return err(at, format!("unknown name `{root}`"));
        }
        let field = self.ident()?;
        let path = format!("{root}.{field}");
        let header = |p: &mut Self, request: bool| -> Result<(Expr, Type), CelError> {
            if !p.eat("[") {
                return Ok((Expr::Headers(request), Type::Map));
            }
            let key_at = p.pos;
            let Some((Lit::Str(name), _)) = p.literal()? else {
                return err(key_at, "a header is looked up by a string literal");
            };
            p.expect("]")?;
            let name = name.to_ascii_lowercase();
            p.use_header(request, &name);
            Ok((
                Expr::Attr(if request {
                    Attr::Request(name)
                } else {
                    Attr::Response(name)
                }),
                Type::Str,
            ))
        };
        let req = |p: &mut Self, h: &str| {
            p.use_header(true, h);
            Attr::Request(h.to_string())
        };
        let a = match path.as_str() {
            "request.headers" => return header(self, true),
            "response.headers" => return header(self, false),
            "request.path" => req(self, ":path"),
            "request.url_path" => {
                req(self, ":path");
                Attr::UrlPath
            }
            "request.host" => req(self, ":authority"),
            "request.scheme" => req(self, ":scheme"),
            "request.method" => req(self, ":method"),
            "request.id" => req(self, "x-request-id"),
            "request.useragent" => req(self, "user-agent"),
            "request.referer" => req(self, "referer"),
            "request.protocol" => Attr::Protocol,
            "request.size" => Attr::RequestSize,
            "response.code" => Attr::ResponseCode,
            "response.code_details" => Attr::CodeDetails,
            "response.size" => Attr::ResponseSize,
            "response.grpc_status" => {
                self.use_header(false, "grpc-status");
                Attr::GrpcStatus
            }
            "source.address" => Attr::SourceAddress,
            "source.port" => Attr::SourcePort,
            "destination.address" => Attr::DestinationAddress,
            "destination.port" => Attr::DestinationPort,
            "upstream.address" => Attr::UpstreamAddress,
            "upstream.port" => Attr::UpstreamPort,
            "xds.cluster_name" => Attr::ClusterName,
            "xds.route_name" => Attr::RouteName,
            "connection.requested_server_name" => Attr::Sni,
            other => {
                return err(
                    at,
                    format!("the attribute `{other}` is not supported by rustmesh's filters"),
                );
            }
        };
        let ty = a.ty();
        Ok((Expr::Attr(a), ty))
    }
}

fn want_bool(at: usize, ty: Type, op: &str) -> Result<(), CelError> {
    if ty == Type::Bool {
        Ok(())
    } else {
        err(at, format!("`{op}` needs a bool, not a {ty}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    struct Req {
        code: u16,
        protocol: Option<&'static str>,
        request: HashMap<&'static str, &'static str>,
        response: HashMap<&'static str, &'static str>,
    }

    fn http(code: u16, request: &[(&'static str, &'static str)]) -> Req {
        Req {
            code,
            protocol: Some("HTTP/1.1"),
            request: request.iter().copied().collect(),
            response: HashMap::new(),
        }
    }

    fn run(expr: &str, r: &Req) -> bool {
        let f = Filter::compile(expr).unwrap_or_else(|e| panic!("{expr}: {e}"));
        let req = |n: &str| r.request.get(n).copied();
        let resp = |n: &str| r.response.get(n).copied();
        let none = |_: &str| None;
        let e = Entry {
            start_time: SystemTime::UNIX_EPOCH,
            protocol: r.protocol,
            response_code: r.code,
            response_flags: "",
            response_code_details: Some("via_upstream"),
            connection_termination_details: None,
            upstream_transport_failure_reason: None,
            bytes_received: 12,
            bytes_sent: 34,
            duration: Duration::from_millis(5),
            upstream_host: Some("10.0.0.7:9080".parse().unwrap()),
            upstream_cluster: Some("outbound|9080||reviews.default.svc.cluster.local"),
            upstream_local_address: None,
            downstream_local_address: Some("10.0.0.1:9080".parse().unwrap()),
            downstream_remote_address: Some("10.0.0.2:40000".parse().unwrap()),
            requested_server_name: None,
            route_name: Some("default"),
            request_header: &req,
            response_header: &resp,
            response_trailer: &none,
        };
        f.accepts(&e)
    }

    #[test]
    fn istios_documented_filter_logs_only_errors() {
        let e = "response.code >= 400";
        assert!(run(e, &http(503, &[])));
        assert!(run(e, &http(400, &[])));
        assert!(!run(e, &http(200, &[])));
        // A TCP connection has no response code: an error, no line.
        let tcp = Req {
            protocol: None,
            ..http(0, &[])
        };
        assert!(!run(e, &tcp));
        assert!(!run(
            "response.code >= 400 || !(request.method == 'GET')",
            &tcp
        ));
    }

    #[test]
    fn headers_methods_lists_and_logic() {
        let r = http(
            200,
            &[
                (":method", "POST"),
                (":path", "/api/v1/items?x=1"),
                (":authority", "reviews:9080"),
                ("x-debug", "on"),
                ("user-agent", "curl/8.0"),
            ],
        );
        for (expr, want) in [
            ("request.headers['x-debug'] == 'on'", true),
            ("request.headers['X-Debug'] == \"on\"", true),
            ("'x-debug' in request.headers", true),
            ("'x-trace' in request.headers", false),
            (
                "request.method in ['POST', 'PUT'] && response.code == 200",
                true,
            ),
            ("response.code in [500, 503]", false),
            ("request.path.startsWith('/api/')", true),
            ("request.url_path.endsWith('items')", true),
            ("request.path.endsWith('items')", false),
            ("request.host.contains('reviews')", true),
            ("request.useragent.matches('^curl/')", true),
            ("!(request.method == 'GET')", true),
            ("response.code_details == 'via_upstream'", true),
            ("destination.port == 9080 && source.port > 1024", true),
            ("upstream.address == '10.0.0.7:9080'", true),
            ("xds.cluster_name.startsWith('outbound|9080|')", true),
            ("request.size == 12 && response.size == 34", true),
            ("response.code == 200u", true),
            // Absent header: an error, absorbed by || and && as CEL does.
            ("request.headers['absent'] == 'x'", false),
            (
                "request.headers['absent'] == 'x' || response.code == 200",
                true,
            ),
            (
                "request.headers['absent'] == 'x' && response.code == 500",
                false,
            ),
            ("!(request.headers['absent'] == 'x')", false),
            ("true", true),
            ("false || (1 < 2 && 'a' < 'b')", true),
        ] {
            assert_eq!(run(expr, &r), want, "{expr}");
        }
    }

    #[test]
    fn headers_read_are_listed_for_copying() {
        let f = Filter::compile(
            "request.method == 'GET' && 'X-A' in request.headers && response.headers['b'] == 'c' && response.grpc_status == 0",
        )
        .unwrap();
        assert_eq!(f.request_headers(), [":method", "x-a"]);
        assert_eq!(f.response_headers(), ["b", "grpc-status"]);
    }

    #[test]
    fn what_is_outside_the_subset_or_ill_typed_is_refused_naming_it() {
        for (expr, want) in [
            ("response.code == '200'", "`==` between a int and a string"),
            ("response.flags == 0", "`response.flags` is not supported"),
            ("response.code", "is a int, not a bool"),
            ("request.path.size() > 3", "unknown function `size`"),
            ("response.code.startsWith('2')", "`startsWith` on a int"),
            ("response.code >= 400 &&", "ends too early"),
            ("response.code >= 400 extra", "unexpected text"),
            ("(response.code == 200", "expected `)`"),
            ("'abc", "closing quote"),
            ("'a\\q' == 'b'", "unknown escape"),
            ("99999999999999999999 == 1", "not an integer"),
            ("1.5 == 1", "only integer literals"),
            ("foo == 1", "unknown name `foo`"),
            ("response.code in [1, 'a']", "mixed types"),
            ("response.code in ['a']", "list of other values"),
            ("request.method.matches('(')", "`matches`"),
            ("request.method.matches(request.host)", "string literal"),
            ("request.headers == 'x'", "between a map"),
            ("response.code && true", "`&&` needs a bool"),
            ("!response.code", "`!` needs a bool"),
        ] {
            let e = Filter::compile(expr).unwrap_err().to_string();
            assert!(e.contains(want), "{expr}: {e}");
        }
    }

    #[test]
    fn string_literals_are_read_alone() {
        assert_eq!(string_literal("'v1'").as_deref(), Some("v1"));
        assert_eq!(string_literal(" \"a\\\"b\" ").as_deref(), Some("a\"b"));
        for not in ["v1", "'a' + 'b'", "request.host", "'open", "1", ""] {
            assert_eq!(string_literal(not), None, "{not}");
        }
    }

    #[test]
    fn limits_bound_size_depth_and_operations() {
        let long = format!("request.method == '{}'", "a".repeat(MAX_EXPRESSION_BYTES));
        assert!(
            Filter::compile(&long)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
        let deep = format!("{}true{}", "(".repeat(100), ")".repeat(100));
        assert!(
            Filter::compile(&deep)
                .unwrap_err()
                .to_string()
                .contains("nested deeper")
        );
        let bangs = format!("{}true", "!".repeat(100));
        assert!(
            Filter::compile(&bangs)
                .unwrap_err()
                .to_string()
                .contains("nested deeper")
        );
        let wide = vec!["true"; MAX_NODES].join(" && ");
        assert!(
            Filter::compile(&wide)
                .unwrap_err()
                .to_string()
                .contains("operations")
        );
    }

    proptest::proptest! {
        #[test]
        fn any_text_compiles_or_is_refused_without_panicking(s in "\\PC{0,80}") {
            if let Ok(f) = Filter::compile(&s) {
                let _ = f.request_headers();
            }
        }
    }
}
