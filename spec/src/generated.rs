//! The spec's generated files, made from the wire types so they cannot drift:
//! `spec/openapi.json` (OpenAPI 3.1, the client HTTP API), `spec/schemas/*.json` (JSON
//! Schemas of the WebSocket frames and federation bodies) and the generated test vectors
//! in `spec/test-vectors/`. `parley-spec-gen` writes them; a test fails when the
//! committed files differ from freshly generated ones.

use std::collections::BTreeMap;

use parley_client_api::http::{self as api, ENDPOINTS, Method, WEBSOCKET};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};

/// Every generated file: path relative to `spec/`, and its contents.
pub fn files() -> Vec<(String, String)> {
    let mut out = vec![("openapi.json".to_owned(), pretty(&openapi()))];
    for (name, schema) in schemas() {
        out.push((format!("schemas/{name}.json"), pretty(&schema)));
    }
    for (name, v) in crate::vectors::generate() {
        out.push((format!("test-vectors/{name}.json"), pretty(&v)));
    }
    out
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}

fn schema<T: JsonSchema>() -> Value {
    let generator = SchemaSettings::draft2020_12().into_generator();
    generator.into_root_schema_for::<T>().to_value()
}

/// The JSON Schemas of the socket frames and the federation bodies, by file name.
pub fn schemas() -> Vec<(&'static str, Value)> {
    use parley_federation::api as fed;
    vec![
        (
            "ws-client-frame",
            schema::<parley_client_api::ws::ClientFrame>(),
        ),
        (
            "ws-server-frame",
            schema::<parley_client_api::ws::ServerFrame>(),
        ),
        ("error", schema::<parley_client_api::ErrorBody>()),
        ("fed-transaction-request", schema::<fed::send::Request>()),
        ("fed-transaction-response", schema::<fed::send::Response>()),
        (
            "fed-keys-claim-request",
            schema::<fed::keys::claim::Request>(),
        ),
        (
            "fed-keys-claim-response",
            schema::<fed::keys::claim::Response>(),
        ),
        (
            "fed-user-devices-response",
            schema::<fed::keys::user_devices::Response>(),
        ),
        (
            "fed-chats-group-info-response",
            schema::<fed::chats::group_info::Response>(),
        ),
        ("fed-version-response", schema::<fed::version::Response>()),
        ("fed-error", schema::<parley_federation::ErrorBody>()),
        (
            "fed-key-directory",
            schema::<parley_federation::directory::DirectoryDocument>(),
        ),
    ]
}

/// What an endpoint takes and answers, beside its method and path.
struct Shape {
    request: Option<Value>,
    /// `(status, schema or None for no body)`, the successful answers.
    responses: Vec<(u16, Option<Value>)>,
    /// Query parameters: `(name, required)`, all integers.
    query: &'static [(&'static str, bool)],
    /// The body is raw bytes (media).
    bytes_in: bool,
    bytes_out: bool,
}

fn shapes(g: &mut SchemaGenerator) -> BTreeMap<&'static str, Shape> {
    use api::{
        accounts, backup, blocks, chats, contacts, keys, links, media, presence, push, reports,
    };
    let mut m = BTreeMap::new();
    macro_rules! s {
        ($name:literal, $req:expr, [$(($status:literal, $resp:expr)),*]) => {
            s!($name, $req, [$(($status, $resp)),*], &[])
        };
        ($name:literal, $req:expr, [$(($status:literal, $resp:expr)),*], $query:expr) => {
            m.insert($name, Shape {
                request: $req,
                responses: vec![$(($status, $resp)),*],
                query: $query,
                bytes_in: false,
                bytes_out: false,
            });
        };
    }
    macro_rules! t {
        ($t:ty) => {
            Some(g.subschema_for::<$t>().to_value())
        };
    }
    s!(
        "accounts::register",
        t!(accounts::register::Request),
        [(201, t!(accounts::register::Response))]
    );
    s!(
        "accounts::login",
        t!(accounts::login::Request),
        [(200, t!(accounts::login::Response))]
    );
    s!("accounts::logout", None, [(204, None)]);
    s!(
        "accounts::list_devices",
        None,
        [(200, t!(accounts::list_devices::Response))]
    );
    s!("accounts::delete_device", None, [(204, None)]);
    s!(
        "chats::create",
        t!(chats::create::Request),
        [
            (201, t!(chats::create::Response)),
            (200, t!(chats::create::Response))
        ]
    );
    s!("chats::list", None, [(200, t!(chats::list::Response))]);
    s!(
        "chats::members",
        None,
        [(200, t!(chats::members::Response))]
    );
    s!("chats::rename", t!(chats::rename::Request), [(204, None)]);
    s!(
        "chats::set_admin",
        t!(chats::set_admin::Request),
        [(204, None)]
    );
    s!("chats::leave", None, [(204, None)]);
    s!(
        "chats::send",
        t!(chats::send::Request),
        [
            (201, t!(chats::send::Response)),
            (200, t!(chats::send::Response)),
            (202, t!(chats::send::Response))
        ]
    );
    s!(
        "chats::history",
        None,
        [(200, t!(chats::history::Response))],
        &[("after", false), ("limit", false)]
    );
    s!(
        "chats::receipts",
        None,
        [(200, t!(chats::receipts::Response))]
    );
    s!(
        "chats::mark_read",
        t!(chats::mark_read::Request),
        [(204, None)]
    );
    s!(
        "chats::group_info",
        None,
        [(200, t!(chats::group_info::Response))]
    );
    s!(
        "keys::upload",
        t!(keys::upload::Request),
        [(200, t!(keys::upload::Response))]
    );
    s!("keys::count", None, [(200, t!(keys::count::Response))]);
    s!(
        "keys::claim",
        t!(keys::claim::Request),
        [(200, t!(keys::claim::Response))]
    );
    s!(
        "keys::user_devices",
        None,
        [(200, t!(keys::user_devices::Response))]
    );
    s!("media::exists", None, [(200, None)]);
    s!("media::download", None, [(200, None), (206, None)]);
    s!(
        "media::upload_status",
        None,
        [(200, t!(media::upload_status::Response))]
    );
    s!(
        "media::upload",
        None,
        [
            (200, t!(media::upload::Response)),
            (201, t!(media::upload::Response))
        ],
        &[("offset", true), ("total", true)]
    );
    s!("backup::get", None, [(200, t!(backup::get::Response))]);
    s!(
        "backup::put",
        t!(backup::put::Request),
        [(200, t!(backup::put::Response))]
    );
    s!("backup::delete", None, [(204, None)]);
    s!("blocks::list", None, [(200, t!(blocks::list::Response))]);
    s!("blocks::block", None, [(200, t!(blocks::block::Response))]);
    s!("blocks::unblock", None, [(204, None)]);
    s!(
        "contacts::list",
        None,
        [(200, t!(contacts::list::Response))]
    );
    s!("contacts::add", None, [(204, None)]);
    s!(
        "links::create",
        t!(links::create::Request),
        [(201, t!(links::create::Response))]
    );
    s!("links::get", None, [(200, t!(links::get::Response))]);
    s!("links::approve", t!(links::approve::Request), [(204, None)]);
    s!(
        "links::approval",
        None,
        [(200, t!(links::approval::Response))]
    );
    s!("contacts::remove", None, [(204, None)]);
    s!(
        "presence::get_privacy",
        None,
        [(200, t!(presence::get_privacy::Response))]
    );
    s!(
        "presence::set_privacy",
        t!(presence::set_privacy::Request),
        [(200, t!(presence::set_privacy::Response))]
    );
    s!("presence::get", None, [(200, t!(presence::get::Response))]);
    s!(
        "push::set",
        t!(push::set::Request),
        [(200, t!(push::set::Response))]
    );
    s!("push::list", None, [(200, t!(push::list::Response))]);
    s!("push::delete", None, [(204, None)]);
    s!(
        "reports::create",
        t!(reports::create::Request),
        [(201, t!(reports::create::Response))]
    );
    if let Some(upload) = m.get_mut("media::upload") {
        upload.bytes_in = true;
    }
    if let Some(download) = m.get_mut("media::download") {
        download.bytes_out = true;
    }
    m
}

/// The OpenAPI 3.1 document of the client HTTP API, from `parley_client_api::http::ENDPOINTS`
/// and the wire types. Panics if an endpoint has no shape here (a test catches it).
pub fn openapi() -> Value {
    let mut settings = SchemaSettings::draft2020_12();
    settings.definitions_path = "/components/schemas".into();
    let mut g = settings.into_generator();
    let shapes = shapes(&mut g);
    let error = g.subschema_for::<parley_client_api::ErrorBody>().to_value();
    let mut paths: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for e in ENDPOINTS {
        let shape = shapes
            .get(e.name)
            .unwrap_or_else(|| panic!("generated.rs: no shape for endpoint {}", e.name));
        let mut op = Map::new();
        op.insert("operationId".into(), json!(e.name.replace("::", "_")));
        if e.auth {
            op.insert("security".into(), json!([{"bearer": []}]));
        }
        let mut params: Vec<Value> = path_params(e.path)
            .into_iter()
            .map(|p| json!({"name": p, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        for (name, required) in shape.query {
            params.push(json!({"name": name, "in": "query", "required": required, "schema": {"type": "integer", "minimum": 0}}));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(req) = &shape.request {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": req}}}),
            );
        } else if shape.bytes_in {
            op.insert("requestBody".into(), json!({"required": true, "content": {"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}}));
        }
        let mut responses = Map::new();
        for (status, body) in &shape.responses {
            let mut r = Map::new();
            r.insert("description".into(), json!(status_text(*status)));
            if let Some(b) = body {
                r.insert("content".into(), json!({"application/json": {"schema": b}}));
            } else if shape.bytes_out {
                r.insert("content".into(), json!({"application/octet-stream": {"schema": {"type": "string", "contentMediaType": "application/octet-stream"}}}));
            }
            responses.insert(status.to_string(), Value::Object(r));
        }
        responses.insert(
            "default".into(),
            json!({"description": "an error (spec/v1/errors.md)", "content": {"application/json": {"schema": error}}}),
        );
        op.insert("responses".into(), Value::Object(responses));
        paths
            .entry(e.path)
            .or_default()
            .insert(method(e.method).into(), Value::Object(op));
    }
    paths.entry(WEBSOCKET.path).or_default().insert(
        method(WEBSOCKET.method).into(),
        json!({
            "operationId": "ws",
            "security": [{"bearer": []}],
            "description": "The device WebSocket; frames: schemas/ws-client-frame.json and schemas/ws-server-frame.json (spec/v1/websocket.md).",
            "responses": {"101": {"description": "Switching Protocols"}, "default": {"description": "an error", "content": {"application/json": {"schema": error}}}}
        }),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Parley client-server API",
            "version": "v1",
            "description": "Generated from parley-client-api by parley-spec-gen; do not edit. The rules are in spec/v1/*.md."
        },
        "paths": paths,
        "components": {
            "schemas": g.definitions(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        }
    })
}

fn path_params(path: &str) -> Vec<&str> {
    path.split('{')
        .skip(1)
        .filter_map(|s| s.split_once('}').map(|(p, _)| p))
        .collect()
}

fn method(m: Method) -> &'static str {
    match m {
        Method::Get => "get",
        Method::Head => "head",
        Method::Post => "post",
        Method::Put => "put",
        Method::Delete => "delete",
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted (pending at the hub)",
        204 => "No Content",
        206 => "Partial Content",
        _ => "",
    }
}
