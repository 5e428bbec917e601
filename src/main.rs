//! The `cleanslate` command: parse the command line (clap, `cli.rs`), load configuration, run, map
//! the outcome to an exit code. Everything else lives in the library (see `lib.rs`).

use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use cleanslate::cli::{Cli, Command};
use cleanslate::config::{self, Env, GateConfig, Mode, PurgeConfig, ResumeConfig, StatusArgs, StatusConfig};
use cleanslate::exit::{Exit, exit_for};
use cleanslate::kube::KubeClient;
use cleanslate::purge::Outcome;
use cleanslate::shutdown::Shutdown;
use cleanslate::{gate, purge, quiesce, release, status, telemetry, termination};
use tracing::{error, info, warn};

fn main() -> ExitCode {
    let command = match Cli::try_parse() {
        Ok(cli) => cli.command,
        Err(err) => {
            // Help and version go to stdout with 0; anything else is a usage error (64, EX_USAGE),
            // not clap's own 2: the exit codes are the same for every way of failing to start.
            let usage = err.use_stderr();
            let _ = err.print();
            return if usage { Exit::Usage } else { Exit::Success }.into();
        }
    };
    if let Command::Completions { shell } = command {
        cleanslate::cli::completions(shell, &mut std::io::stdout());
        return Exit::Success.into();
    }
    let env = Env::from_process().and_then(|env| config::log_format(&env).map(|format| (env, format)));
    // Logging starts before the configuration is judged, so a configuration error reaches the log.
    telemetry::init(
        env.as_ref().map_or_else(|_| config::fallback_log_format(), |(_, format)| *format),
        matches!(command, Command::Status(_)),
    );
    let env = match env {
        Ok((env, _)) => env,
        Err(err) => return report(&command, &err).into(),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            return report(&command, &anyhow::Error::new(err).context("starting the async runtime")).into();
        }
    };
    let exit = runtime.block_on(async {
        let mut shutdown = Shutdown::listen();
        if matches!(command, Command::Purge) {
            // Purge handles the signal itself: it restores what it stopped and records the attempt.
            return run(&command, env, shutdown).await;
        }
        // Nothing to undo in the other commands: stop at once.
        tokio::select! {
            result = run(&command, env, Shutdown::never()) => result,
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
        Err(err) => report(&command, &err),
    }
    .into()
}

/// Runs one command; only `purge` takes the shutdown signal (the others are dropped on a signal).
async fn run(command: &Command, env: Env, shutdown: Shutdown) -> Result<Outcome> {
    match command {
        Command::Purge => purge::run(&PurgeConfig::from_env(&env, Mode::Purge)?, Mode::Purge, shutdown).await,
        Command::Plan(args) => {
            let (env, _files) = with_release(env, args.release.as_deref(), args.namespace.as_deref(), true).await?;
            purge::run(&PurgeConfig::from_env(&env, Mode::Plan)?, Mode::Plan, shutdown).await
        }
        Command::Gate => gate::run(&GateConfig::from_env(&env)?).await.map(|()| Outcome::Done),
        Command::Resume => quiesce::run(&ResumeConfig::from_env(&env)?).await.map(|()| Outcome::Done),
        Command::Status(args) => {
            let target = &args.target;
            let (env, _files) =
                with_release(env, target.release.as_deref(), target.namespace.as_deref(), false).await?;
            let args =
                StatusArgs { release: target.release.clone(), namespace: target.namespace.clone(), json: args.json };
            status::run(&StatusConfig::from_env(&env, &args)?).await.map(|()| Outcome::Done)
        }
        Command::Completions { .. } => Ok(Outcome::Done),
    }
}

/// The environment with the release's own purge configuration under it, when a release is named
/// (`plan <release>`, `status <release>`); the returned value keeps its TLS files alive. `required`:
/// a plan needs it; status reports what it can without it (the caller may not read Secrets).
/// `-n` wins over `CLEANSLATE_NAMESPACE`, which wins over the release's own (a flag is the most
/// explicit setting); with no release, `-n` alone still sets the namespace.
async fn with_release(
    env: Env,
    release: Option<&str>,
    namespace: Option<&str>,
    for_plan: bool,
) -> Result<(Env, Option<release::Resolved>)> {
    let flag: Vec<(String, String)> =
        namespace.map(|ns| vec![("CLEANSLATE_NAMESPACE".to_string(), ns.to_string())]).unwrap_or_default();
    let Some(release) = release else {
        return Ok((if flag.is_empty() { env } else { Env::layered(Vec::new(), flag)? }, None));
    };
    let (namespace, kube) = config::operator_kube(&env, namespace)?;
    let client = KubeClient::new(&kube).await?;
    let secrets = if for_plan { release::Secrets::Read } else { release::Secrets::Skip };
    match release::resolve(&client, &namespace, release, secrets).await {
        Ok(resolved) => {
            info!(
                release,
                namespace = %namespace,
                revision = resolved.revision,
                "configuration read from the release's purge Job (variables you set win)"
            );
            let mut vars = resolved.vars.clone();
            vars.push(("CLEANSLATE_NAMESPACE".into(), namespace));
            Ok((Env::layered(vars, flag)?, Some(resolved)))
        }
        Err(err) if !for_plan => {
            warn!(release, error = %format!("{err:#}"), "the release's purge configuration could not be read");
            Ok((if flag.is_empty() { env } else { Env::layered(Vec::new(), flag)? }, None))
        }
        Err(err) => Err(err),
    }
}

/// Reports an error once, at the top: a log event and one line on stderr whose start is stable.
fn report(command: &Command, err: &anyhow::Error) -> Exit {
    let exit = exit_for(err);
    error!(exit_code = exit.code(), error = %format!("{err:#}"), "{} failed", command.name());
    eprintln!("cleanslate {}: {err:#}", command.name());
    termination::write(&format!("cleanslate {} failed (exit {}): {err:#}", command.name(), exit.code()));
    exit
}
