//! The command line (clap): the subcommands, their arguments, and for each the variables it reads,
//! shown by its own `--help`; shell completions are generated from the same definition.
//!
//! Configuration stays in `CLEANSLATE_*` variables (what a Job, a gate or a test Pod is given); the
//! arguments are for people: which release, which namespace, which output.

use clap::{Args, CommandFactory, Parser, Subcommand};

const PURGE_VARIABLES: &str = "\
Variables (see the README's table for defaults and meaning):
  CLEANSLATE_ENVIRONMENT, CLEANSLATE_ALLOW_PRODUCTION, CLEANSLATE_TARGETS, CLEANSLATE_TIMEOUT,
  CLEANSLATE_RETRY_ATTEMPTS, CLEANSLATE_RETRY_BACKOFF, CLEANSLATE_CONCURRENCY, CLEANSLATE_DRY_RUN,
  CLEANSLATE_LOG_FORMAT, RUST_LOG
  RabbitMQ: CLEANSLATE_RABBITMQ_URL, _USERNAME, _PASSWORD (_PASSWORD_FILE), _VHOST, _QUEUES,
            _QUEUE_PATTERN, _DEAD_LETTERS, _MISSING, _CA_FILE
  etcd:     CLEANSLATE_ETCD_ENDPOINTS, _PREFIXES, _PROTECTED_PREFIXES, _SEED_FILE, _USERNAME, _PASSWORD
            (_PASSWORD_FILE), _CA_FILE, _CERT_FILE, _KEY_FILE, _MAX_TXN_OPS
  CLEANSLATE_TRIGGER (clean only when it changed since the last cleaning)
  marker:   CLEANSLATE_MARKER, CLEANSLATE_NAMESPACE, CLEANSLATE_REVISION, CLEANSLATE_RELEASE
  quiesce:  CLEANSLATE_QUIESCE, CLEANSLATE_QUIESCE_GATED, CLEANSLATE_QUIESCE_TIMEOUT, CLEANSLATE_QUIESCE_RESUME
  Job:      CLEANSLATE_JOB_NAME, CLEANSLATE_JOB_ATTEMPTS, CLEANSLATE_POD_NAME, CLEANSLATE_EVENTS,
            CLEANSLATE_TERMINATION_MESSAGE_PATH
  Kubernetes: CLEANSLATE_KUBE_API, _TOKEN_FILE, _CA_FILE (else the pod's service account, else the
            kubeconfig: KUBECONFIG or ~/.kube/config)";

const EXIT_CODES: &str = "\
Exit codes: 0 done, 1 failed, 64 usage, 69 unreachable, 75 deadline, 77 refused, 78 configuration,
79 credentials or permission refused, 80 quiesce timed out, 130/143 stopped by a signal.";

/// `cleanslate`: a fresh state for dev and staging on every deploy.
#[derive(Parser, Debug)]
#[command(
    name = "cleanslate",
    version,
    about = "Purge RabbitMQ queues and etcd prefixes on every deploy, and gate the apps until it is done",
    after_help = "Configuration comes from CLEANSLATE_* variables; each command's --help lists those it reads.",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Purge the selected queues and etcd prefixes, then write the marker (the hook Job, helm test).
    #[command(after_help = format!("{PURGE_VARIABLES}\n\n{EXIT_CODES}"))]
    Purge,
    /// Wait until the marker allows this revision (the init container of a gated pod).
    #[command(after_help = format!(
        "Variables:\n  CLEANSLATE_MARKER, CLEANSLATE_REVISION, CLEANSLATE_NAMESPACE, CLEANSLATE_GATE_TIMEOUT,\n  \
         CLEANSLATE_GATE_ON_TIMEOUT, CLEANSLATE_EVENTS, CLEANSLATE_POD_NAME, CLEANSLATE_KUBE_WATCH_TIMEOUT,\n  \
         CLEANSLATE_KUBE_API/_TOKEN_FILE/_CA_FILE, CLEANSLATE_LOG_FORMAT\n\n{EXIT_CODES}"
    ))]
    Gate,
    /// Show what purge would do, with counts; changes nothing.
    #[command(after_help = format!(
        "With RELEASE, the configuration is the release's own, read from the cluster through your kubeconfig:\n\
         the purge Job of its last deployed revision (Helm's record, Secrets read with your rights).\n\
         CLEANSLATE_* variables you set still win (e.g. CLEANSLATE_RABBITMQ_URL through a port-forward).\n\n\
         {PURGE_VARIABLES}\n\n{EXIT_CODES}"
    ))]
    Plan(ReleaseArgs),
    /// Start the workloads a purge stopped (quiesce) again (the hook Job after an upgrade, or by hand).
    #[command(after_help = format!(
        "Variables:\n  CLEANSLATE_QUIESCE, CLEANSLATE_MARKER (every workload stopped for it), CLEANSLATE_NAMESPACE,\n  CLEANSLATE_RELEASE, CLEANSLATE_EVENTS, \
         CLEANSLATE_KUBE_API/_TOKEN_FILE/_CA_FILE, CLEANSLATE_LOG_FORMAT\n\n{EXIT_CODES}"
    ))]
    Resume,
    /// The last run of a release, what is still stopped, and what to run next; exit 0 only when
    /// clean and running.
    #[command(after_help = format!(
        "With RELEASE, the workloads it stops are read from the release's purge Job, as for plan.\n\n\
         Variables:\n  CLEANSLATE_RELEASE, CLEANSLATE_MARKER, CLEANSLATE_NAMESPACE, CLEANSLATE_QUIESCE,\n  \
         CLEANSLATE_OUTPUT (table or json), CLEANSLATE_KUBE_API/_TOKEN_FILE/_CA_FILE\n\n{EXIT_CODES}"
    ))]
    Status(StatusArgs),
    /// Print a shell completion script: `cleanslate completions bash > /etc/bash_completion.d/cleanslate`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `<release> [-n <namespace>]`.
#[derive(Args, Debug, Default, Clone)]
pub struct ReleaseArgs {
    /// The Helm release whose configuration to use (read from the cluster).
    pub release: Option<String>,
    /// Its namespace; default: the kubeconfig context's, or CLEANSLATE_NAMESPACE.
    #[arg(short, long)]
    pub namespace: Option<String>,
}

#[derive(Args, Debug, Default, Clone)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: ReleaseArgs,
    /// JSON for scripts (as CLEANSLATE_OUTPUT=json).
    #[arg(long)]
    pub json: bool,
}

impl Command {
    /// The command's name, as typed.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Purge => "purge",
            Command::Gate => "gate",
            Command::Plan(_) => "plan",
            Command::Resume => "resume",
            Command::Status(_) => "status",
            Command::Completions { .. } => "completions",
        }
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn std::io::Write) {
    clap_complete::generate(shell, &mut Cli::command(), "cleanslate", out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition is consistent (clap's own checks).
    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn plan_takes_a_release_and_a_namespace() {
        let cli = Cli::try_parse_from(["cleanslate", "plan", "shop", "-n", "dev"]).expect("parses");
        match cli.command {
            Command::Plan(args) => {
                assert_eq!(args.release.as_deref(), Some("shop"));
                assert_eq!(args.namespace.as_deref(), Some("dev"));
            }
            other => panic!("not plan: {other:?}"),
        }
    }
}
