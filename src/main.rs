//! The `cleanslate` command: parse the subcommand, load configuration, run, map the outcome to an
//! exit code. Everything else lives in the library (see `lib.rs`).

use std::process::ExitCode;

use anyhow::Result;
use cleanslate::config::{self, Env, GateConfig, Mode, PurgeConfig, ResumeConfig, StatusArgs, StatusConfig};
use cleanslate::exit::{Exit, exit_for};
use cleanslate::purge::Outcome;
use cleanslate::shutdown::Shutdown;
use cleanslate::{gate, purge, quiesce, status, telemetry, termination};
use tracing::error;

const USAGE: &str = "\
usage: cleanslate <command>
       cleanslate status [<release>] [-n <namespace>] [--json]

commands:
  purge     purge RabbitMQ queues and etcd prefixes, then write the marker (hook Job, helm test)
  gate      wait until the marker allows this revision (init container)
  plan      show what purge would do, with counts; changes nothing
  resume    start the workloads a purge stopped (quiesce) again (hook Job after the upgrade)
  status    the last run of a release, what is still stopped, and what to run next;
            exit 0 only when clean and running (--json or CLEANSLATE_OUTPUT=json for scripts)

options:
  -h, --help     show this help
  -V, --version  show the version

Configuration comes from CLEANSLATE_* environment variables; see the README.";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Command {
    Purge,
    Gate,
    Plan,
    Resume,
    Status,
}

impl Command {
    fn name(self) -> &'static str {
        match self {
            Command::Purge => "purge",
            Command::Gate => "gate",
            Command::Plan => "plan",
            Command::Resume => "resume",
            Command::Status => "status",
        }
    }
}

enum Invocation {
    Run(Command),
    Status(StatusArgs),
    Help,
    Version,
}

/// `status [<release>] [-n|--namespace <namespace>] [--json]`.
fn parse_status_args(args: &[String]) -> Result<Invocation, String> {
    let mut parsed = StatusArgs::default();
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Invocation::Help),
            "--json" => parsed.json = true,
            "-n" | "--namespace" => match rest.next() {
                Some(ns) if !ns.is_empty() && !ns.starts_with('-') => parsed.namespace = Some(ns.clone()),
                _ => return Err(format!("{arg} needs a namespace")),
            },
            other if other.starts_with('-') => return Err(format!("unknown option {other:?} for status")),
            release if parsed.release.is_none() => parsed.release = Some(release.to_string()),
            extra => return Err(format!("unexpected argument {extra:?}: status takes one release")),
        }
    }
    Ok(Invocation::Status(parsed))
}

fn parse_args(args: &[String]) -> Result<Invocation, String> {
    match args {
        [command, rest @ ..] if command == "status" => parse_status_args(rest),
        [] => Err("a command is required".into()),
        [only] => match only.as_str() {
            "purge" => Ok(Invocation::Run(Command::Purge)),
            "gate" => Ok(Invocation::Run(Command::Gate)),
            "plan" => Ok(Invocation::Run(Command::Plan)),
            "resume" => Ok(Invocation::Run(Command::Resume)),
            "-h" | "--help" | "help" => Ok(Invocation::Help),
            "-V" | "--version" => Ok(Invocation::Version),
            other if other.starts_with('-') => Err(format!("unknown option {other:?}")),
            other => Err(format!("unknown command {other:?}")),
        },
        [command, extra, ..] if matches!(extra.as_str(), "-h" | "--help") && !command.starts_with('-') => {
            Ok(Invocation::Help)
        }
        [_, extra, ..] => {
            Err(format!("unexpected argument {extra:?}; configuration comes from CLEANSLATE_* variables"))
        }
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut status_args = StatusArgs::default();
    let command = match parse_args(&args) {
        Ok(Invocation::Run(command)) => command,
        Ok(Invocation::Status(parsed)) => {
            status_args = parsed;
            Command::Status
        }
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            return Exit::Success.into();
        }
        Ok(Invocation::Version) => {
            println!("cleanslate {}", env!("CARGO_PKG_VERSION"));
            return Exit::Success.into();
        }
        Err(message) => {
            eprintln!("cleanslate: {message}\n\n{USAGE}");
            return Exit::Usage.into();
        }
    };
    let env = Env::from_process().and_then(|env| config::log_format(&env).map(|format| (env, format)));
    // Logging starts before the configuration is judged, so a configuration error reaches the log.
    telemetry::init(
        env.as_ref().map_or_else(|_| config::fallback_log_format(), |(_, format)| *format),
        command == Command::Status,
    );
    let env = match env {
        Ok((env, _)) => env,
        Err(err) => return report(command, &err).into(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => return report(command, &anyhow::Error::new(err).context("starting the async runtime")).into(),
    };
    let exit = runtime.block_on(async {
        let mut shutdown = Shutdown::listen();
        if command == Command::Purge {
            // Purge handles the signal itself: it restores what it stopped and records the attempt.
            return run(command, &env, &status_args, shutdown).await;
        }
        // Nothing to undo in the other commands: stop at once.
        tokio::select! {
            result = run(command, &env, &status_args, Shutdown::never()) => result,
            signal = shutdown.recv() => {
                error!(signal = signal.name(), "stopped by signal before finishing");
                Ok(Outcome::Stopped(signal))
            }
        }
    });
    // A blocking task still running (a routing analysis a signal interrupted) must not hold the exit
    // past the pod's grace period.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    match exit {
        Ok(Outcome::Done) => {
            termination::write(&termination::success_line(command.name()));
            Exit::Success
        }
        Ok(Outcome::Stopped(signal)) => {
            let line = format!("cleanslate {}: stopped by {}", command.name(), signal.name());
            eprintln!("{line}");
            termination::write(&line);
            Exit::from(signal)
        }
        Err(err) => report(command, &err),
    }
    .into()
}

/// Runs one command; only `purge` takes the shutdown signal (the others are dropped on a signal).
async fn run(command: Command, env: &Env, status_args: &StatusArgs, shutdown: Shutdown) -> Result<Outcome> {
    match command {
        Command::Purge => purge::run(&PurgeConfig::from_env(env, Mode::Purge)?, Mode::Purge, shutdown).await,
        Command::Plan => purge::run(&PurgeConfig::from_env(env, Mode::Plan)?, Mode::Plan, shutdown).await,
        Command::Gate => gate::run(&GateConfig::from_env(env)?).await.map(|()| Outcome::Done),
        Command::Resume => quiesce::run(&ResumeConfig::from_env(env)?).await.map(|()| Outcome::Done),
        Command::Status => status::run(&StatusConfig::from_env(env, status_args)?).await.map(|()| Outcome::Done),
    }
}

/// Reports an error once, at the top: a log event and one line on stderr whose start is stable.
fn report(command: Command, err: &anyhow::Error) -> Exit {
    let exit = exit_for(err);
    error!(exit_code = exit.code(), error = %format!("{err:#}"), "{} failed", command.name());
    eprintln!("cleanslate {}: {err:#}", command.name());
    termination::write(&format!("cleanslate {} failed (exit {}): {err:#}", command.name(), exit.code()));
    exit
}
