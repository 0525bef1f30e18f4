//! HTTP endpoints, one module per area; each endpoint has `METHOD`, `PATH` and its bodies.
//!
//! Paths use axum's `{param}` syntax; [`fill`] substitutes parameters for clients.
//! Every endpoint but `register` and `login` needs `Authorization: Bearer <token>`.

pub mod accounts;
pub mod chats;
pub mod contacts;
pub mod keys;
pub mod media;
pub mod presence;
pub mod push;

/// An HTTP method, as the endpoints name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }
}

/// Replaces each `{name}` in `path` by its value (percent-encoding `/`, `?`, `#`, `%`,
/// space and non-ASCII).
pub fn fill(path: &str, params: &[(&str, &str)]) -> String {
    let mut out = path.to_owned();
    for (name, value) in params {
        out = out.replace(&format!("{{{name}}}"), &encode_segment(value));
    }
    out
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn fill_encodes() {
        assert_eq!(
            super::fill(super::chats::send::PATH, &[("chat_id", "!a:b.org:80")]),
            "/v1/chats/!a:b.org:80/events"
        );
        assert_eq!(super::fill("/x/{a}", &[("a", "a/b c")]), "/x/a%2Fb%20c");
    }
}
