//! The numbered rules of the spec documents, read from their Markdown.
//!
//! A rule is a list item that starts with its id and a period: `- CH2. …`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The directory holding the spec documents (this crate's own directory).
pub fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every Markdown document of the spec, relative to [`spec_dir`].
pub const DOCUMENTS: &[&str] = &[
    "README.md",
    "v1/client-api.md",
    "v1/websocket.md",
    "v1/ordering.md",
    "v1/federation.md",
    "v1/e2ee.md",
    "v1/errors.md",
    "presence.md",
    "messaging.md",
    "push-gateway.md",
    "devices.md",
];

/// The rule ids defined in `markdown`, in order of appearance.
pub fn rule_ids(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in markdown.lines() {
        let Some(rest) = line.strip_prefix("- ") else {
            continue;
        };
        let Some((id, _)) = rest.split_once(". ") else {
            continue;
        };
        let letters = id.chars().take_while(|c| c.is_ascii_uppercase()).count();
        let digits = &id[letters..];
        if (1..=4).contains(&letters)
            && !digits.is_empty()
            && digits.bytes().all(|b| b.is_ascii_digit())
        {
            out.push(id.to_owned());
        }
    }
    out
}

/// Every rule id of every document under `dir`.
pub fn all_rule_ids(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut ids = BTreeSet::new();
    for doc in DOCUMENTS {
        let text = std::fs::read_to_string(dir.join(doc))?;
        ids.extend(rule_ids(&text));
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_numbered_rules_only() {
        let md = "- CH2. Sends get consecutive numbers.\n- not a rule. x\n- PR10. Typing.\n  - CH3. nested\n- A. short\n";
        assert_eq!(super::rule_ids(md), ["CH2", "PR10"]);
    }
}
