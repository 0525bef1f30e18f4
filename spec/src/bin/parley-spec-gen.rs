//! `parley-spec-gen`: writes spec/openapi.json, spec/schemas/*.json and the generated
//! test vectors from the code (`cargo run -p parley-spec --bin parley-spec-gen`).

fn main() -> anyhow::Result<()> {
    let dir = parley_spec::docs::spec_dir();
    for (path, contents) in parley_spec::generated::files() {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, contents)?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
