fn main() -> anyhow::Result<()> {
    let Some(cli) = settings::daemon::<agent::cli::Cli>(std::path::Path::new(agent::cli::CONFIG))?
    else {
        return Ok(());
    };
    agent::init_logging();
    agent::run(&cli)
}
