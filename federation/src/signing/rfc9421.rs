//! Generic RFC 9421 (HTTP Message Signatures) machinery, independent of Parley's profile:
//! the message components a signature can cover, the signature base (§2.5), and the
//! `Signature-Input` / `Signature` fields (§4) as Structured Fields (RFC 9651, via `sfv`).
//!
//! Supported components: `@method`, `@authority`, `@path`, `@query`, `@request-target`,
//! `@status`, and HTTP fields by name; the `req` parameter (a response signature covering
//! a component of its request). `@scheme`, `@target-uri`, `@query-param` and the field
//! parameters `sf`, `key`, `bs`, `tr` are refused as unsupported rather than guessed.
//! The profile ([`super::profile`]) restricts this further.

use sfv::{BareItem, FieldType as _, InnerList, Item, ListEntry, Parser};

/// The parts of an HTTP request that a signature can cover.
///
/// `path` and `query` are as sent on the wire (percent-encoded, not decoded); `query`
/// excludes the `?`. `authority` is the target's host and port as the signer meant them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestParts {
    pub method: String,
    pub authority: String,
    pub path: String,
    pub query: Option<String>,
    /// Field lines in order; names in any case. Repeated names are combined (§2.1).
    pub headers: Vec<(String, String)>,
}

impl RequestParts {
    /// The combined value of a field: every line with that name, trimmed, joined by
    /// `", "` (RFC 9421 §2.1). `None` when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        combined_field(&self.headers, name)
    }
}

/// The parts of an HTTP response that a signature can cover, with the request it
/// answers (for components marked `req`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseParts<'a> {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub request: Option<&'a RequestParts>,
}

/// A message to sign or verify.
#[derive(Debug, Clone, Copy)]
pub enum Message<'a> {
    Request(&'a RequestParts),
    Response(&'a ResponseParts<'a>),
}

fn combined_field(headers: &[(String, String)], name: &str) -> Option<String> {
    let mut values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim_matches(|c| c == ' ' || c == '\t'))
        .peekable();
    values.peek()?;
    Some(values.collect::<Vec<_>>().join(", "))
}

/// Why a signature base could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BaseError {
    #[error("component {0} is covered twice")]
    Duplicate(String),
    #[error("covered component {0} is not in the message")]
    Missing(String),
    #[error("component {0} is not supported")]
    Unsupported(String),
    #[error("component identifier {0} is not a lowercase string")]
    BadIdentifier(String),
    #[error("the value of {0} contains a newline or a non-ASCII character")]
    BadValue(String),
}

/// The covered components and parameters of one signature: the inner list of a
/// `Signature-Input` member, whose serialization is the `@signature-params` value.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureInput {
    list: InnerList,
}

impl SignatureInput {
    /// Covered components (plain names, no component parameters) and no parameters yet.
    pub fn new<'a>(components: impl IntoIterator<Item = &'a str>) -> Result<Self, sfv::Error> {
        let items = components
            .into_iter()
            .map(|c| {
                Ok(Item::new(
                    sfv::String::from_string(c.to_owned()).map_err(|(e, _)| e)?,
                ))
            })
            .collect::<Result<Vec<_>, sfv::Error>>()?;
        Ok(Self {
            list: InnerList::new(items),
        })
    }

    /// Covered components written as an inner list, with component parameters, e.g.
    /// `("@authority";req "content-digest")`.
    pub fn parse(inner_list: &str) -> Result<Self, FieldError> {
        let entry = parse_signature_fields(&format!("x={inner_list}"), "x=:AA==:")?.remove(0);
        Ok(entry.input)
    }

    /// Adds a String parameter (`keyid`, `nonce`, `alg`, `tag`).
    pub fn with_str(mut self, name: &str, value: &str) -> Result<Self, sfv::Error> {
        let value = sfv::String::from_string(value.to_owned()).map_err(|(e, _)| e)?;
        self.list.params.insert(key(name)?, BareItem::String(value));
        Ok(self)
    }

    /// Adds an Integer parameter (`created`, `expires`).
    pub fn with_int(mut self, name: &str, value: i64) -> Result<Self, sfv::Error> {
        let value = sfv::Integer::try_from(value)?;
        self.list
            .params
            .insert(key(name)?, BareItem::Integer(value));
        Ok(self)
    }

    /// The covered components as `(name, has component parameters)`, in order.
    pub fn components(&self) -> impl Iterator<Item = (&str, bool)> {
        self.list.items.iter().map(|item| {
            let name = item.bare_item.as_string().map(|s| s.as_str()).unwrap_or("");
            (name, !item.params.is_empty())
        })
    }

    /// True when `name` is covered without component parameters.
    pub fn covers(&self, name: &str) -> bool {
        self.components().any(|(n, p)| n == name && !p)
    }

    /// A String parameter; `None` when absent or of another type.
    pub fn param_str(&self, name: &str) -> Option<&str> {
        self.list
            .params
            .get(name)
            .and_then(|v| v.as_string())
            .map(|s| s.as_str())
    }

    /// An Integer parameter; `None` when absent or of another type.
    pub fn param_int(&self, name: &str) -> Option<i64> {
        self.list
            .params
            .get(name)
            .and_then(|v| v.as_integer())
            .map(i64::from)
    }

    /// True when the parameter is present (whatever its type).
    pub fn has_param(&self, name: &str) -> bool {
        self.list.params.contains_key(name)
    }

    /// Parameter names in order.
    pub fn param_names(&self) -> impl Iterator<Item = &str> {
        self.list.params.keys().map(|k| k.as_str())
    }

    /// The `@signature-params` value: this inner list, serialized (§2.3).
    pub fn serialize(&self) -> String {
        vec![ListEntry::InnerList(self.list.clone())]
            .serialize()
            .unwrap_or_default()
    }

    /// The signature base for `message` (§2.5): one line per covered component, then
    /// the `@signature-params` line, joined by LF with no trailing newline.
    pub fn signature_base(&self, message: Message<'_>) -> Result<String, BaseError> {
        let mut base = String::new();
        let mut seen: Vec<String> = Vec::with_capacity(self.list.items.len());
        for item in &self.list.items {
            let id = item.serialize();
            let Some(name) = item.bare_item.as_string().map(|s| s.as_str()) else {
                return Err(BaseError::BadIdentifier(id));
            };
            if name.is_empty() || name.bytes().any(|b| b.is_ascii_uppercase()) {
                return Err(BaseError::BadIdentifier(id));
            }
            if seen.contains(&id) {
                return Err(BaseError::Duplicate(id));
            }
            let value = component_value(name, item, message, &id)?;
            if value
                .bytes()
                .any(|b| b == b'\n' || b == b'\r' || !b.is_ascii())
            {
                return Err(BaseError::BadValue(id));
            }
            base.push_str(&id);
            base.push_str(": ");
            base.push_str(&value);
            base.push('\n');
            seen.push(id);
        }
        base.push_str("\"@signature-params\": ");
        base.push_str(&self.serialize());
        Ok(base)
    }
}

fn key(name: &str) -> Result<sfv::Key, sfv::Error> {
    sfv::Key::from_string(name.to_owned()).map_err(|(e, _)| e)
}

fn component_value(
    name: &str,
    item: &Item,
    message: Message<'_>,
    id: &str,
) -> Result<String, BaseError> {
    let mut message = message;
    for (param, value) in &item.params {
        match (param.as_str(), value) {
            ("req", BareItem::Boolean(true)) => match message {
                Message::Response(ResponseParts {
                    request: Some(req), ..
                }) => message = Message::Request(req),
                _ => return Err(BaseError::Missing(id.to_owned())),
            },
            _ => return Err(BaseError::Unsupported(id.to_owned())),
        }
    }
    let missing = || BaseError::Missing(id.to_owned());
    if !name.starts_with('@') {
        let headers = match message {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        };
        return combined_field(headers, name).ok_or_else(missing);
    }
    match (name, message) {
        ("@status", Message::Response(r)) => Ok(r.status.to_string()),
        ("@status", Message::Request(_)) => Err(missing()),
        (_, Message::Response(_)) => Err(missing()),
        ("@method", Message::Request(r)) => Ok(r.method.clone()),
        ("@authority", Message::Request(r)) => Ok(r.authority.to_ascii_lowercase()),
        ("@path", Message::Request(r)) => Ok(path_or_root(&r.path).to_owned()),
        ("@query", Message::Request(r)) => Ok(format!("?{}", r.query.as_deref().unwrap_or(""))),
        ("@request-target", Message::Request(r)) => Ok(match &r.query {
            Some(q) => format!("{}?{q}", path_or_root(&r.path)),
            None => path_or_root(&r.path).to_owned(),
        }),
        _ => Err(BaseError::Unsupported(id.to_owned())),
    }
}

fn path_or_root(path: &str) -> &str {
    if path.is_empty() { "/" } else { path }
}

/// One signature of a message: its label, covered components and parameters, and bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct SignatureEntry {
    pub label: String,
    pub input: SignatureInput,
    pub signature: Vec<u8>,
}

/// Why the `Signature-Input` / `Signature` fields could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{0} is not a valid Structured Field dictionary")]
    Syntax(&'static str),
    #[error("Signature-Input member {0} is not an inner list of strings")]
    Input(String),
    #[error("Signature member {0} is not a byte sequence")]
    Signature(String),
    #[error("Signature-Input member {0} has no matching Signature member")]
    Unmatched(String),
}

/// Reads every signature from the (combined) `Signature-Input` and `Signature` values.
pub fn parse_signature_fields(
    signature_input: &str,
    signature: &str,
) -> Result<Vec<SignatureEntry>, FieldError> {
    let inputs: sfv::Dictionary = Parser::new(signature_input)
        .parse()
        .map_err(|_| FieldError::Syntax("Signature-Input"))?;
    let signatures: sfv::Dictionary = Parser::new(signature)
        .parse()
        .map_err(|_| FieldError::Syntax("Signature"))?;
    let mut out = Vec::with_capacity(inputs.len());
    for (label, entry) in inputs {
        let label = label.as_str().to_owned();
        let ListEntry::InnerList(list) = entry else {
            return Err(FieldError::Input(label));
        };
        if list.items.iter().any(|i| i.bare_item.as_string().is_none()) {
            return Err(FieldError::Input(label));
        }
        let bytes = match signatures.get(label.as_str()) {
            Some(ListEntry::Item(Item {
                bare_item: BareItem::ByteSequence(b),
                ..
            })) => b.clone(),
            Some(_) => return Err(FieldError::Signature(label)),
            None => return Err(FieldError::Unmatched(label)),
        };
        out.push(SignatureEntry {
            label,
            input: SignatureInput { list },
            signature: bytes,
        });
    }
    Ok(out)
}

/// The `Signature-Input` and `Signature` values for one signature under `label`.
pub fn signature_fields(
    label: &str,
    input: &SignatureInput,
    signature: &[u8],
) -> Result<(String, String), sfv::Error> {
    let label = key(label)?;
    let mut inputs = sfv::Dictionary::new();
    inputs.insert(label.clone(), ListEntry::InnerList(input.list.clone()));
    let mut sigs = sfv::Dictionary::new();
    sigs.insert(label, ListEntry::Item(Item::new(signature.to_vec())));
    Ok((
        inputs.serialize().unwrap_or_default(),
        sigs.serialize().unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> RequestParts {
        RequestParts {
            method: "POST".into(),
            authority: "Example.COM".into(),
            path: "/foo".into(),
            query: Some("param=Value&Pet=dog".into()),
            headers: vec![
                ("X-Multi".into(), " a ".into()),
                ("x-multi".into(), "b,c".into()),
                ("Content-Type".into(), "application/json".into()),
            ],
        }
    }

    #[test]
    fn derived_components_and_fields() {
        let input = SignatureInput::new([
            "@method",
            "@authority",
            "@path",
            "@query",
            "@request-target",
            "x-multi",
        ])
        .unwrap()
        .with_int("created", 1)
        .unwrap();
        let r = req();
        let base = input.signature_base(Message::Request(&r)).unwrap();
        assert_eq!(
            base,
            "\"@method\": POST\n\"@authority\": example.com\n\"@path\": /foo\n\
             \"@query\": ?param=Value&Pet=dog\n\
             \"@request-target\": /foo?param=Value&Pet=dog\n\"x-multi\": a, b,c\n\
             \"@signature-params\": (\"@method\" \"@authority\" \"@path\" \"@query\" \
             \"@request-target\" \"x-multi\");created=1"
        );
    }

    #[test]
    fn empty_query_and_path() {
        let r = RequestParts {
            method: "GET".into(),
            authority: "a".into(),
            ..Default::default()
        };
        let input = SignatureInput::new(["@path", "@query"]).unwrap();
        let base = input.signature_base(Message::Request(&r)).unwrap();
        assert!(base.starts_with("\"@path\": /\n\"@query\": ?\n"), "{base}");
    }

    #[test]
    fn refuses_bad_components() {
        let r = req();
        let cases = [
            (r#"x=("date")"#, BaseError::Missing("\"date\"".into())),
            (
                r#"x=("@method" "@method")"#,
                BaseError::Duplicate("\"@method\"".into()),
            ),
            (
                r#"x=("@target-uri")"#,
                BaseError::Unsupported("\"@target-uri\"".into()),
            ),
            (
                r#"x=("x-multi";sf)"#,
                BaseError::Unsupported("\"x-multi\";sf".into()),
            ),
            (r#"x=("@status")"#, BaseError::Missing("\"@status\"".into())),
            (
                r#"x=("Content-Type")"#,
                BaseError::BadIdentifier("\"Content-Type\"".into()),
            ),
        ];
        for (field, want) in cases {
            let entries = parse_signature_fields(field, "x=:AAAA:").unwrap();
            assert_eq!(
                entries[0].input.signature_base(Message::Request(&r)),
                Err(want),
                "{field}"
            );
        }
    }

    #[test]
    fn response_with_req_components() {
        let r = req();
        let resp = ResponseParts {
            status: 200,
            headers: vec![("cache-control".into(), "max-age=60".into())],
            request: Some(&r),
        };
        let entries = parse_signature_fields(
            r#"s=("@authority";req "@status" "cache-control");tag="t""#,
            "s=:AAAA:",
        )
        .unwrap();
        let base = entries[0]
            .input
            .signature_base(Message::Response(&resp))
            .unwrap();
        assert_eq!(
            base,
            "\"@authority\";req: example.com\n\"@status\": 200\n\"cache-control\": max-age=60\n\
             \"@signature-params\": (\"@authority\";req \"@status\" \"cache-control\");tag=\"t\""
        );
    }

    #[test]
    fn fields_round_trip() {
        let input = SignatureInput::new(["@method"])
            .unwrap()
            .with_int("created", 5)
            .unwrap()
            .with_str("keyid", "k")
            .unwrap();
        let (si, s) = signature_fields("sig1", &input, &[1, 2, 3]).unwrap();
        assert_eq!(si, r#"sig1=("@method");created=5;keyid="k""#);
        assert_eq!(s, "sig1=:AQID:");
        let parsed = parse_signature_fields(&si, &s).unwrap();
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].label, "sig1");
        assert_eq!(parsed[0].input, input);
        assert_eq!(parsed[0].signature, vec![1, 2, 3]);
        assert!(parse_signature_fields("sig1=(", &s).is_err());
        assert!(matches!(
            parse_signature_fields(&si, "other=:AQID:"),
            Err(FieldError::Unmatched(_))
        ));
        assert!(matches!(
            parse_signature_fields(&si, "sig1=\"x\""),
            Err(FieldError::Signature(_))
        ));
        assert!(matches!(
            parse_signature_fields("sig1=\"x\"", &s),
            Err(FieldError::Input(_))
        ));
    }
}
