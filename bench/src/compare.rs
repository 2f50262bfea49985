//! `yonder-bench compare` (being written).

/// Arguments of `yonder-bench compare`.
#[derive(clap::Args, Debug)]
pub struct Args {}

/// Runs the comparison.
pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("not written yet")
}
