//! What both test harnesses need to start `parley-homeserver` processes that federate
//! with each other on loopback addresses (test mode).

use std::path::Path;

/// The loopback peers a test server allows: `127.0.0.1`–`127.0.0.5`, any port.
pub const PEER_IPS: std::ops::RangeInclusive<u8> = 1..=5;

/// A federating server's identity on `ip`: a fixed free port, and the server name
/// `ip:port` (peers reach a test-mode server by its name).
pub fn peer_identity(ip: &str) -> (String, String) {
    let addr = format!("{ip}:{}", crate::free_port(ip));
    (addr.clone(), addr)
}

/// The config file of a federating test server that allows the loopback peers
/// ([`PEER_IPS`]): `top` is added at the top level, `federation` to `[federation]`.
pub fn peer_config(top: &str, federation: &str) -> String {
    let rules: Vec<String> = PEER_IPS
        .map(|i| format!("{{pattern = \"127.0.0.{i}:*\", action = \"allow\"}}"))
        .collect();
    format!(
        "{top}\n[federation]\n{federation}\n[federation.policy]\nrules = [{}]\n",
        rules.join(", ")
    )
}

/// The flags that make a server federate in test mode (plain HTTP, IP literals) with
/// the config file at `config`.
pub fn peer_args(config: &Path) -> Vec<String> {
    vec![
        "--federation".to_owned(),
        "--federation-test-mode".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
    ]
}

/// `--listen … --server-name … --database-url … --data-dir …`.
pub fn base_args(
    listen: &str,
    server_name: &str,
    database_url: &str,
    data_dir: &Path,
) -> Vec<String> {
    vec![
        "--listen".to_owned(),
        listen.to_owned(),
        "--server-name".to_owned(),
        server_name.to_owned(),
        "--database-url".to_owned(),
        database_url.to_owned(),
        "--data-dir".to_owned(),
        data_dir.display().to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peer_config_allows_the_loopback_peers() {
        let c = peer_config("x = 1", "forward_wait_ms = 300");
        assert!(c.starts_with("x = 1\n[federation]\nforward_wait_ms = 300\n"));
        assert!(c.contains(r#"{pattern = "127.0.0.1:*", action = "allow"}"#));
        assert!(c.contains(r#"{pattern = "127.0.0.5:*", action = "allow"}"#));
        assert!(!c.contains("127.0.0.6"));
    }
}
