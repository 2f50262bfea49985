//! Writes the seed corpora to `seeds/<target>/` next to this crate's manifest, replacing what
//! is there.

fn main() -> std::io::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, _) in yonder_fuzz::TARGETS {
        let dir = root.join(target);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
    }
    for seed in yonder_fuzz::seeds::all() {
        std::fs::write(root.join(seed.target).join(seed.name), &seed.bytes)?;
    }
    Ok(())
}
