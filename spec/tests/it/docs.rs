//! The suite cites only rules the documents define.

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
