//! `peaqos`: publish, grant, consume, verify and sign peaq Stream data; list datasets.
//!
//! Messages go to stderr, machine output (`--json`) to stdout. Exit codes: 0 ok,
//! 1 a check failed, 2 bad usage or input, or a service unreachable.

#![forbid(unsafe_code)]

mod cli;
mod cmd;
mod deliver;
mod output;
mod s3;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let out = output::Output { quiet: args.quiet };
    let result = match args.command {
        cli::Command::Stream(cli::StreamCommand::Publish(a)) => cmd::publish::run(a, &out),
        cli::Command::Stream(cli::StreamCommand::Grant(a)) => cmd::grant::run(a, &out),
        cli::Command::Stream(cli::StreamCommand::Consume(a)) => cmd::consume::run(a, &out),
        cli::Command::Stream(cli::StreamCommand::Distribute(a)) => cmd::distribute::run(a, &out),
        cli::Command::Stream(cli::StreamCommand::Verify(a)) => cmd::verify::run(a, &out),
        cli::Command::Stream(cli::StreamCommand::Sign(a)) => cmd::sign::run(a, &out),
        cli::Command::Stream(cli::StreamCommand::VerifyPackages(a)) => {
            cmd::verify_packages::run(a, &out)
        }
        cli::Command::Stream(cli::StreamCommand::Follow(a)) => cmd::follow::run(a, &out),
        cli::Command::Dataset(c) => cmd::dataset::run(c, &out),
        cli::Command::Keys(cli::KeysCommand::Generate(a)) => cmd::keys::run(a, &out),
    };
    if let Err(err) = result {
        eprintln!("error: {err}");
        std::process::exit(err.exit_code());
    }
}
