//! The numbered rules of the spec documents, read from their Markdown.
//!
//! A rule is a list item that starts with its id and a period: `- CH2. …`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

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
    "backup.md",
];

/// The text of every document in [`DOCUMENTS`], built into the crate, so the suite can
/// name every rule without the source tree.
pub const EMBEDDED: &[(&str, &str)] = &[
    ("README.md", include_str!("../README.md")),
    ("v1/client-api.md", include_str!("../v1/client-api.md")),
    ("v1/websocket.md", include_str!("../v1/websocket.md")),
    ("v1/ordering.md", include_str!("../v1/ordering.md")),
    ("v1/federation.md", include_str!("../v1/federation.md")),
    ("v1/e2ee.md", include_str!("../v1/e2ee.md")),
    ("v1/errors.md", include_str!("../v1/errors.md")),
    ("presence.md", include_str!("../presence.md")),
    ("messaging.md", include_str!("../messaging.md")),
    ("push-gateway.md", include_str!("../push-gateway.md")),
    ("devices.md", include_str!("../devices.md")),
    ("backup.md", include_str!("../backup.md")),
];

/// One numbered rule of the spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecRule {
    pub id: String,
    /// The document defining it (a path of [`DOCUMENTS`]).
    pub document: &'static str,
    /// Its first clause, on one line (at most about 100 characters).
    pub title: String,
}

/// Every rule of the built-in documents, in document order ([`EMBEDDED`]).
pub fn spec_rules() -> &'static [SpecRule] {
    static RULES: OnceLock<Vec<SpecRule>> = OnceLock::new();
    RULES.get_or_init(|| {
        EMBEDDED
            .iter()
            .flat_map(|(doc, text)| {
                rules(text).into_iter().map(|(id, body)| SpecRule {
                    id,
                    document: doc,
                    title: title(&body),
                })
            })
            .collect()
    })
}

/// The id of a rule item (`- CH2. …`), and the text after `ID. `.
fn rule_start(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix("- ")?;
    let (id, text) = rest.split_once(". ")?;
    let letters = id.chars().take_while(|c| c.is_ascii_uppercase()).count();
    let digits = &id[letters..];
    ((1..=4).contains(&letters) && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some((id, text))
}

/// The rules defined in `markdown`, in order: id and the item's whole text (its
/// indented continuation lines joined).
pub fn rules(markdown: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut open = false;
    for line in markdown.lines() {
        if let Some((id, text)) = rule_start(line) {
            out.push((id.to_owned(), text.trim().to_owned()));
            open = true;
        } else if open && line.starts_with("  ") && !line.trim().is_empty() {
            if let Some((_, body)) = out.last_mut() {
                body.push(' ');
                body.push_str(line.trim());
            }
        } else {
            open = false;
        }
    }
    out
}

/// A rule's title: its text up to the first `. `, `; ` or `: ` outside code spans and
/// parentheses (further while that is under 30 characters, as in `Credential: …`),
/// without emphasis, cut at a word boundary after about 100 characters.
pub fn title(text: &str) -> String {
    const MIN: usize = 30;
    let text = text.replace("**", "");
    let (mut in_code, mut depth) = (false, 0usize);
    let mut end = text.len();
    let bytes = text.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'`' => in_code = !in_code,
            b'(' if !in_code => depth += 1,
            b')' if !in_code => depth = depth.saturating_sub(1),
            b'.' | b';' | b':'
                if !in_code && depth == 0 && bytes.get(i + 1) == Some(&b' ') && i >= MIN =>
            {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let clause = text[..end].trim_end_matches('.');
    const MAX: usize = 100;
    if clause.chars().count() <= MAX {
        return clause.to_owned();
    }
    let mut cut = String::new();
    for word in clause.split(' ') {
        if cut.chars().count() + word.chars().count() + 1 > MAX {
            break;
        }
        if !cut.is_empty() {
            cut.push(' ');
        }
        cut.push_str(word);
    }
    cut.push('…');
    cut
}

/// The rule ids defined in `markdown`, in order of appearance.
pub fn rule_ids(markdown: &str) -> Vec<String> {
    markdown
        .lines()
        .filter_map(rule_start)
        .map(|(id, _)| id.to_owned())
        .collect()
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

    #[test]
    fn a_rule_is_its_item_with_continuation_lines() {
        let md =
            "- CH2. Sends get\n  consecutive numbers.\n\n  Not part of it.\n- PR1. One.\nText.\n";
        assert_eq!(
            super::rules(md),
            [
                (
                    "CH2".to_owned(),
                    "Sends get consecutive numbers.".to_owned()
                ),
                ("PR1".to_owned(), "One.".to_owned())
            ]
        );
    }

    #[test]
    fn a_title_is_the_first_clause() {
        assert_eq!(
            super::title("A **user** is online while a socket is open: while `a: b. c`. More."),
            "A user is online while a socket is open"
        );
        assert_eq!(
            super::title("Credential: a `BasicCredential` (of the user: its id) here; more"),
            "Credential: a `BasicCredential` (of the user: its id) here"
        );
        assert_eq!(
            super::title("`GET /x` answers `{\"a\": 1}` to you; else 404."),
            "`GET /x` answers `{\"a\": 1}` to you"
        );
        let long = "word ".repeat(40);
        let t = super::title(&long);
        assert!(t.ends_with('…') && t.chars().count() <= 101, "{t}");
    }
}
