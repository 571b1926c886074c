use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    agent::init_logging();
    agent::run(&agent::cli::Cli::parse())
}
