//! HTTP endpoints, one module per area; each endpoint has `METHOD`, `PATH` and its bodies.
//!
//! Paths use axum's `{param}` syntax; [`fill`] substitutes parameters for clients.
//! Every endpoint but `register` and `login` needs `Authorization: Bearer <token>`.

pub mod accounts;
pub mod backup;
pub mod blocks;
pub mod chats;
pub mod contacts;
pub mod keys;
pub mod links;
pub mod media;
pub mod presence;
pub mod push;
pub mod reports;

/// An HTTP method, as the endpoints name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

/// One endpoint of the client API: where it lives and whether it needs a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// `area::endpoint`, the module that defines it.
    pub name: &'static str,
    pub method: Method,
    pub path: &'static str,
    /// Needs `Authorization: Bearer <token>` (or `?access_token=` on the socket).
    pub auth: bool,
}

macro_rules! endpoints {
    ($($area:ident :: $ep:ident $(($auth:literal))?),* $(,)?) => {
        /// Every endpoint of the client API (the homeserver's router and the spec's
        /// OpenAPI document are checked against this list).
        pub const ENDPOINTS: &[Endpoint] = &[$(Endpoint {
            name: concat!(stringify!($area), "::", stringify!($ep)),
            method: $area::$ep::METHOD,
            path: $area::$ep::PATH,
            auth: endpoints!(@auth $($auth)?),
        }),*];
    };
    (@auth) => { true };
    (@auth $a:literal) => { $a };
}

endpoints![
    accounts::register(false),
    accounts::login(false),
    accounts::logout,
    accounts::list_devices,
    accounts::delete_device,
    backup::get,
    backup::put,
    backup::delete,
    blocks::list,
    blocks::block,
    blocks::unblock,
    chats::create,
    chats::list,
    chats::members,
    chats::rename,
    chats::set_admin,
    chats::leave,
    chats::send,
    chats::history,
    chats::receipts,
    chats::mark_read,
    chats::group_info,
    contacts::list,
    contacts::add,
    contacts::remove,
    keys::upload,
    keys::count,
    keys::claim,
    keys::user_devices,
    links::create,
    links::get,
    links::approve,
    links::approval,
    media::exists,
    media::download,
    media::upload_status,
    media::upload,
    presence::get_privacy,
    presence::set_privacy,
    presence::get,
    push::set,
    push::list,
    push::delete,
    reports::create,
];

/// The device socket, `GET /v1/ws` (see [`crate::ws`]).
pub const WEBSOCKET: Endpoint = Endpoint {
    name: "ws",
    method: crate::ws::METHOD,
    path: crate::ws::PATH,
    auth: true,
};

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
    fn endpoints_are_unique_and_versioned() {
        let mut seen = std::collections::HashSet::new();
        for e in super::ENDPOINTS.iter().chain([&super::WEBSOCKET]) {
            assert!(e.path.starts_with(crate::API_PREFIX), "{}", e.name);
            assert!(seen.insert((e.method, e.path)), "{} twice", e.name);
        }
    }

    #[test]
    fn fill_encodes() {
        assert_eq!(
            super::fill(super::chats::send::PATH, &[("chat_id", "!a:b.org:80")]),
            "/v1/chats/!a:b.org:80/events"
        );
        assert_eq!(super::fill("/x/{a}", &[("a", "a/b c")]), "/x/a%2Fb%20c");
    }
}
