use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    operator::run(operator::cli::Cli::parse())
}
