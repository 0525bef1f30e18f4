//! The suite cites only rules the documents define, and accounts for every one of them:
//! each rule of the spec is checked or listed as not checked, with a reason.

use parley_spec::{conformance, docs};

#[test]
fn every_rule_the_suite_checks_is_in_the_spec() {
    let ids = docs::all_rule_ids(&docs::spec_dir()).unwrap();
    let missing: Vec<_> = conformance::rules()
        .into_iter()
        .filter(|r| !ids.contains(r.id))
        .map(|r| r.id)
        .collect();
    assert!(
        missing.is_empty(),
        "rules checked by the suite but not in spec/: {missing:?}"
    );
}

#[test]
fn rule_ids_are_unique_across_documents() {
    let mut seen = std::collections::HashMap::new();
    for doc in docs::DOCUMENTS {
        let text = std::fs::read_to_string(docs::spec_dir().join(doc)).unwrap();
        for id in docs::rule_ids(&text) {
            if let Some(other) = seen.insert(id.clone(), *doc) {
                panic!("{id} is defined in {other} and {doc}");
            }
        }
    }
}

#[test]
fn every_rule_is_checked_or_listed_as_not_checked() {
    let ids = docs::all_rule_ids(&docs::spec_dir()).unwrap();
    let checked: Vec<&str> = conformance::rules().iter().map(|r| r.id).collect();
    let mut listed: Vec<&str> = Vec::new();
    for (why, group) in conformance::NOT_CHECKED {
        assert!(
            !why.trim().is_empty() && !group.is_empty(),
            "an empty group or reason"
        );
        listed.extend(group.iter().copied());
    }
    let forgotten: Vec<&String> = ids
        .iter()
        .filter(|id| !checked.contains(&id.as_str()) && !listed.contains(&id.as_str()))
        .collect();
    assert!(
        forgotten.is_empty(),
        "rules neither checked nor in conformance::NOT_CHECKED: {forgotten:?}"
    );
    let both: Vec<&&str> = listed.iter().filter(|id| checked.contains(id)).collect();
    assert!(
        both.is_empty(),
        "listed as not checked, but checked: {both:?}"
    );
    let unknown: Vec<&&str> = listed.iter().filter(|id| !ids.contains(**id)).collect();
    assert!(
        unknown.is_empty(),
        "listed as not checked, not in spec/: {unknown:?}"
    );
    let mut sorted = listed.clone();
    sorted.sort_unstable();
    let before = sorted.len();
    sorted.dedup();
    assert_eq!(before, sorted.len(), "a rule listed twice in NOT_CHECKED");
    let mut all = checked.clone();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), checked.len(), "a rule checked twice");
    // The report's lines: one per rule of the spec.
    assert_eq!(
        checked.len() + conformance::not_checked().len(),
        ids.len(),
        "the report would not have one line per rule"
    );
}

#[test]
fn every_document_with_rules_is_read() {
    let dir = docs::spec_dir();
    for sub in ["", "v1"] {
        for entry in std::fs::read_dir(dir.join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("md") {
                continue;
            }
            let rel = path
                .strip_prefix(&dir)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            if !docs::rule_ids(&text).is_empty() {
                assert!(
                    docs::DOCUMENTS.contains(&rel.as_str()),
                    "{rel} defines rules but is not in docs::DOCUMENTS"
                );
            }
        }
    }
    // The built-in copies are the documents.
    let embedded: Vec<&str> = docs::EMBEDDED.iter().map(|(d, _)| *d).collect();
    assert_eq!(embedded, docs::DOCUMENTS);
    for (doc, text) in docs::EMBEDDED {
        assert_eq!(
            std::fs::read_to_string(dir.join(doc)).unwrap(),
            *text,
            "{doc} changed after the build"
        );
    }
}

#[test]
fn unchecked_rules_are_titled_from_the_spec() {
    let fo3 = conformance::not_checked()
        .into_iter()
        .find(|(r, _)| r.id == "FO3")
        .expect("FO3 is not checked");
    assert_eq!(fo3.0.title, "A hub that is down delays, never loses");
    assert!(fo3.1.contains("hub"), "{}", fo3.1);
}
