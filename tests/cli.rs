//! The command line as a user meets it: subcommands, exit codes, the first line of every error,
//! and the promise that bad input touches nothing. Runs the built binary against the real services.

mod support;

use serde_json::json;
use support::*;

/// Seeded data that no failing run may touch: a queue with messages and keys under a prefix.
struct Survivors {
    rabbit: Rabbit,
    etcd: etcd_client::Client,
    vhost: String,
    prefix: String,
}

impl Survivors {
    async fn seed() -> Survivors {
        let rabbit = Rabbit::connect().await;
        let vhost = unique("cli");
        rabbit.create_vhost(&vhost).await;
        rabbit.declare(&vhost, "monorepo", json!({})).await;
        rabbit.publish(&vhost, "monorepo", 3).await;
        let mut etcd = etcd().await;
        let prefix = format!("{}/monorepo/", unique("/cli"));
        put_keys(&mut etcd, &prefix, 4).await;
        Survivors { rabbit, etcd, vhost, prefix }
    }

    /// Variables that would purge exactly the seeded data.
    fn vars(&self) -> Vec<(String, String)> {
        with(
            service_vars(),
            &[
                ("CLEANSLATE_RABBITMQ_VHOST", &self.vhost),
                ("CLEANSLATE_RABBITMQ_QUEUES", "monorepo"),
                ("CLEANSLATE_ETCD_PREFIXES", &self.prefix),
            ],
        )
    }

    async fn assert_intact(&mut self, case: &str) {
        assert_eq!(self.rabbit.count(&self.vhost, "monorepo").await, 3, "{case}: messages survive");
        assert_eq!(count_keys(&mut self.etcd, &self.prefix).await, 4, "{case}: keys survive");
    }

    async fn cleanup(self) {
        self.rabbit.delete_vhost(&self.vhost).await;
    }
}

/// Unknown commands and flags are usage errors (64); --help and --version succeed; each command
/// has its own help listing the variables it reads; completions are generated for three shells.
#[tokio::test]
async fn usage_errors_and_help() {
    for args in [vec![], vec!["clean"], vec!["--force"], vec!["purge", "--now"], vec!["plan", "a", "b"]] {
        let run = cleanslate(&args, &[]).await;
        assert_eq!(run.code, 64, "{args:?} is a usage error: {}", run.all_output());
        assert!(run.stderr.contains("Usage: cleanslate"), "{args:?}: usage shown: {}", run.stderr);
    }
    for (command, reads) in [
        ("purge", "CLEANSLATE_RABBITMQ_URL"),
        ("plan", "RELEASE"),
        ("gate", "CLEANSLATE_GATE_TIMEOUT"),
        ("resume", "CLEANSLATE_QUIESCE"),
        ("status", "--json"),
    ] {
        let help = cleanslate(&[command, "--help"], &[]).await;
        assert_eq!(help.code, 0, "{command} --help succeeds: {}", help.all_output());
        assert!(
            help.stdout.contains(&format!("Usage: cleanslate {command}")) && help.stdout.contains(reads),
            "{command} --help is its own, naming {reads}: {}",
            help.stdout
        );
    }
    for shell in ["bash", "zsh", "fish"] {
        let script = cleanslate(&["completions", shell], &[]).await;
        assert_eq!(script.code, 0, "{shell} completions: {}", script.all_output());
        assert!(script.stdout.contains("cleanslate") && script.stdout.contains("status"), "{shell}: a script");
    }
    let help = cleanslate(&["--help"], &[]).await;
    assert_eq!(help.code, 0, "help succeeds");
    assert!(
        help.stdout.contains("purge")
            && help.stdout.contains("gate")
            && help.stdout.contains("plan")
            && help.stdout.contains("resume"),
        "help lists commands"
    );
    let version = cleanslate(&["--version"], &[]).await;
    assert_eq!(version.code, 0, "version succeeds");
    assert!(version.stdout.starts_with("cleanslate "), "version printed: {}", version.stdout);
}

/// Every malformed or missing variable exits 78, names the variable on the first line of stderr,
/// never shows a secret, and leaves the data alone.
#[tokio::test]
async fn bad_input_matrix_touches_nothing() {
    let mut survivors = Survivors::seed().await;
    let password = rabbit_password();
    let cases: Vec<(&str, Vec<(String, String)>)> = vec![
        ("CLEANSLATE_TIMEOUT", with(survivors.vars(), &[("CLEANSLATE_TIMEOUT", "thirty")])),
        ("CLEANSLATE_RETRY_ATTEMPTS", with(survivors.vars(), &[("CLEANSLATE_RETRY_ATTEMPTS", "many")])),
        ("CLEANSLATE_RETRY_BACKOFF", with(survivors.vars(), &[("CLEANSLATE_RETRY_BACKOFF", "-5s")])),
        ("CLEANSLATE_CONCURRENCY", with(survivors.vars(), &[("CLEANSLATE_CONCURRENCY", "0")])),
        ("CLEANSLATE_DRY_RUN", with(survivors.vars(), &[("CLEANSLATE_DRY_RUN", "perhaps")])),
        ("CLEANSLATE_ALLOW_PRODUCTION", with(survivors.vars(), &[("CLEANSLATE_ALLOW_PRODUCTION", "yes")])),
        ("CLEANSLATE_TARGETS", with(survivors.vars(), &[("CLEANSLATE_TARGETS", "rabbitmq,redis")])),
        ("CLEANSLATE_LOG_FORMAT", with(survivors.vars(), &[("CLEANSLATE_LOG_FORMAT", "xml")])),
        ("CLEANSLATE_RABBITMQ_URL", with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_URL", "not a url")])),
        (
            "CLEANSLATE_RABBITMQ_QUEUE_PATTERN",
            with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_QUEUE_PATTERN", "(unclosed")]),
        ),
        ("CLEANSLATE_RABBITMQ_MISSING", with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_MISSING", "skip")])),
        ("CLEANSLATE_RABBITMQ_DEAD_LETTERS", with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_DEAD_LETTERS", "on")])),
        (
            "CLEANSLATE_RABBITMQ_PASSWORD_FILE",
            with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_PASSWORD_FILE", "/nonexistent")]),
        ),
        (
            "CLEANSLATE_RABBITMQ_CA_FILE",
            with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_CA_FILE", "/nonexistent/ca.pem")]),
        ),
        ("CLEANSLATE_ETCD_ENDPOINTS", with(survivors.vars(), &[("CLEANSLATE_ETCD_ENDPOINTS", "etcd:2379")])),
        ("CLEANSLATE_ETCD_CA_FILE", with(survivors.vars(), &[("CLEANSLATE_ETCD_CA_FILE", "/nonexistent/ca.pem")])),
        (
            "CLEANSLATE_REVISION",
            with(
                survivors.vars(),
                &[("CLEANSLATE_MARKER", "m"), ("CLEANSLATE_NAMESPACE", "dev"), ("CLEANSLATE_REVISION", "latest")],
            ),
        ),
        ("CLEANSLATE_ENVIRONMENT", without(survivors.vars(), &["CLEANSLATE_ENVIRONMENT"])),
        ("CLEANSLATE_RABBITMQ_USERNAME", without(survivors.vars(), &["CLEANSLATE_RABBITMQ_USERNAME"])),
        ("CLEANSLATE_RABBITMQ_PASSWORD", without(survivors.vars(), &["CLEANSLATE_RABBITMQ_PASSWORD"])),
        ("CLEANSLATE_ETCD_PREFIXES", without(survivors.vars(), &["CLEANSLATE_ETCD_PREFIXES"])),
        ("CLEANSLATE_ETCD_PREFIXS", with(survivors.vars(), &[("CLEANSLATE_ETCD_PREFIXS", "typo/")])),
        // `api/queues/.` would be normalised to `api/queues`: the queues of every vhost.
        ("CLEANSLATE_RABBITMQ_VHOST", with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_VHOST", ".")])),
        ("CLEANSLATE_RABBITMQ_VHOST", with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_VHOST", "..")])),
    ];
    for (name, settings) in cases {
        let run = cleanslate(&["purge"], &settings).await;
        assert_eq!(run.code, 78, "{name}: configuration error: {}", run.all_output());
        assert!(run.first_stderr_line().contains(name), "{name}: named on the first line: {}", run.stderr);
        // Logging starts before configuration is judged, so the error is in the JSON log too.
        let logged = run.stdout.lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|event| event["level"] == "ERROR" && event.to_string().contains(name))
        });
        assert!(logged, "{name}: the error is a JSON log event: {}", run.stdout);
        run.assert_no_secret(&[&password]);
        survivors.assert_intact(name).await;
    }
    survivors.cleanup().await;
}

/// A `CLEANSLATE_*` value that is not UTF-8 is a configuration error naming it, not a panic; a
/// non-UTF-8 value of some other variable is ignored.
#[tokio::test]
async fn non_utf8_values_are_errors_not_panics() {
    use std::os::unix::ffi::OsStrExt;
    let mut survivors = Survivors::seed().await;
    let invalid = std::ffi::OsStr::from_bytes(b"dev\xff\xfe");
    let settings = survivors.vars();
    let run = |name: &'static str| {
        let settings = settings.clone();
        async move {
            let output = tokio::process::Command::new(binary())
                .arg("purge")
                .env_clear()
                .envs(support::pod_env("cleanslate-test-pod"))
                .envs(settings.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .env(name, invalid)
                .output()
                .await
                .expect("runs");
            (output.status.code(), String::from_utf8_lossy(&output.stderr).into_owned())
        }
    };
    let (code, stderr) = run("CLEANSLATE_ENVIRONMENT").await;
    assert_eq!(code, Some(78), "configuration error, not a panic: {stderr}");
    assert!(stderr.contains("CLEANSLATE_ENVIRONMENT is not valid UTF-8"), "names it: {stderr}");
    survivors.assert_intact("non-UTF-8 value").await;
    let (code, stderr) = run("SOME_OTHER_TOOL_SETTING").await;
    assert_eq!(code, Some(0), "another variable's bytes are none of ours: {stderr}");
    survivors.cleanup().await;
}

/// A URL carrying a password is refused without echoing it.
#[tokio::test]
async fn url_with_credentials_is_refused_without_echo() {
    let mut survivors = Survivors::seed().await;
    let url = rabbit_url().replacen("://", "://guest:Url-Pw-Leak-1@", 1);
    let run = cleanslate(&["purge"], &with(survivors.vars(), &[("CLEANSLATE_RABBITMQ_URL", &url)])).await;
    assert_eq!(run.code, 78, "refused: {}", run.all_output());
    assert!(run.first_stderr_line().contains("must not contain credentials"), "says why: {}", run.stderr);
    run.assert_no_secret(&["Url-Pw-Leak-1"]);
    survivors.assert_intact("url with credentials").await;
    survivors.cleanup().await;
}

/// Production is refused (77) unless explicitly allowed, in any spelling.
#[tokio::test]
async fn production_needs_explicit_permission() {
    let mut survivors = Survivors::seed().await;
    for environment in ["production", "PROD", "Production", "prd", "production-eu", "eu-prod", "prod2"] {
        let run = cleanslate(&["purge"], &with(survivors.vars(), &[("CLEANSLATE_ENVIRONMENT", environment)])).await;
        assert_eq!(run.code, 77, "{environment} refused: {}", run.all_output());
        assert!(
            run.first_stderr_line().contains("CLEANSLATE_ALLOW_PRODUCTION"),
            "says how to allow it: {}",
            run.stderr
        );
        survivors.assert_intact(environment).await;
    }
    let plan = cleanslate(&["plan"], &with(survivors.vars(), &[("CLEANSLATE_ENVIRONMENT", "production")])).await;
    assert_eq!(plan.code, 0, "plan is allowed in production, it changes nothing: {}", plan.all_output());
    survivors.assert_intact("plan in production").await;

    let allowed = cleanslate(
        &["purge"],
        &with(survivors.vars(), &[("CLEANSLATE_ENVIRONMENT", "production"), ("CLEANSLATE_ALLOW_PRODUCTION", "true")]),
    )
    .await;
    assert_eq!(allowed.code, 0, "allowed production purges: {}", allowed.all_output());
    assert_eq!(survivors.rabbit.count(&survivors.vhost, "monorepo").await, 0, "purged when allowed");
    survivors.cleanup().await;
}

/// Unreachable hosts exit 69 within the deadline, naming what could not be reached.
#[tokio::test]
async fn unreachable_hosts_exit_69() {
    let mut survivors = Survivors::seed().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    for (variable, target) in [("CLEANSLATE_RABBITMQ_URL", "rabbitmq"), ("CLEANSLATE_ETCD_ENDPOINTS", "etcd")] {
        let started = std::time::Instant::now();
        let run = cleanslate(
            &["purge"],
            &with(survivors.vars(), &[(variable, &dead), ("CLEANSLATE_TARGETS", target), ("CLEANSLATE_TIMEOUT", "3s")]),
        )
        .await;
        assert_eq!(run.code, 69, "{target} unreachable: {}", run.all_output());
        assert!(run.first_stderr_line().contains("not reachable"), "{target}: says so: {}", run.stderr);
        assert!(run.first_stderr_line().contains(&dead), "{target}: names the endpoint it tried: {}", run.stderr);
        assert!(started.elapsed() < std::time::Duration::from_secs(6), "{target}: within the deadline");
        run.assert_no_secret(&[&rabbit_password()]);
    }
    survivors.assert_intact("unreachable").await;
    survivors.cleanup().await;
}

/// A configuration error on one backend deletes nothing on the other: with both targets, a wrong
/// RabbitMQ password or an unreachable management API fails the preflight, and the etcd prefix
/// keeps every key (each Job attempt used to delete it, then fail on RabbitMQ).
#[tokio::test]
async fn a_failing_backend_leaves_the_other_untouched() {
    let mut survivors = Survivors::seed().await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    for (case, setting) in [
        ("wrong password", ("CLEANSLATE_RABBITMQ_PASSWORD", "not-the-password")),
        ("unreachable broker", ("CLEANSLATE_RABBITMQ_URL", dead.as_str())),
    ] {
        let run = cleanslate(&["purge"], &with(survivors.vars(), &[setting, ("CLEANSLATE_TIMEOUT", "3s")])).await;
        assert_ne!(run.code, 0, "{case}: fails: {}", run.all_output());
        assert!(
            run.stderr.contains("preflight") && run.stderr.contains("nothing was stopped or deleted"),
            "{case}: says nothing was touched: {}",
            run.stderr
        );
        survivors.assert_intact(case).await;
        run.assert_no_secret(&[&rabbit_password(), "not-the-password"]);
    }
    survivors.cleanup().await;
}

/// An empty entry in a list, or a protected prefix that rendered empty, is a configuration error
/// (78) naming the variable, and nothing is deleted: a dropped entry could be a dropped protection.
#[tokio::test]
async fn empty_list_entries_are_configuration_errors() {
    let mut survivors = Survivors::seed().await;
    let protected = format!("{}keep/", survivors.prefix);
    let prefixes = survivors.prefix.clone();
    for (variable, value) in [
        ("CLEANSLATE_ETCD_PROTECTED_PREFIXES", ""),
        ("CLEANSLATE_ETCD_PROTECTED_PREFIXES", " "),
        ("CLEANSLATE_ETCD_PROTECTED_PREFIXES", &format!("{protected}, ")),
        ("CLEANSLATE_ETCD_PROTECTED_PREFIXES", &format!(",{protected}")),
        ("CLEANSLATE_RABBITMQ_QUEUES", "monorepo,,other"),
        ("CLEANSLATE_ETCD_ENDPOINTS", &format!("{},", etcd_endpoint())),
        ("CLEANSLATE_TARGETS", "rabbitmq,"),
        ("CLEANSLATE_QUIESCE", "deployment/api,"),
        ("CLEANSLATE_RABBITMQ_VHOST", ""),
        ("CLEANSLATE_TARGETS", ""),
    ] {
        let run = cleanslate(
            &["purge"],
            &with(survivors.vars(), &[(variable, value), ("CLEANSLATE_ETCD_PREFIXES", &prefixes)]),
        )
        .await;
        assert_eq!(run.code, 78, "{variable}={value:?} is a configuration error: {}", run.all_output());
        assert!(run.first_stderr_line().contains(variable), "{variable}={value:?}: named: {}", run.stderr);
        survivors.assert_intact(variable).await;
    }
    survivors.cleanup().await;
}

/// `plan` and `CLEANSLATE_DRY_RUN=true` report counts and change nothing.
#[tokio::test]
async fn plan_and_dry_run_change_nothing() {
    let mut survivors = Survivors::seed().await;
    survivors.rabbit.wait_for_stats(&survivors.vhost, "monorepo", 3).await;
    let plan = cleanslate(&["plan"], &survivors.vars()).await;
    assert_eq!(plan.code, 0, "plan succeeds: {}", plan.all_output());
    assert!(
        plan.stdout.contains("would purge queue") && plan.stdout.contains(r#""approx_messages":3"#),
        "queue counted: {}",
        plan.stdout
    );
    assert!(
        plan.stdout.contains("would delete keys under prefix") && plan.stdout.contains(r#""keys":4"#),
        "keys counted: {}",
        plan.stdout
    );
    survivors.assert_intact("plan").await;

    let dry = cleanslate(&["purge"], &with(survivors.vars(), &[("CLEANSLATE_DRY_RUN", "true")])).await;
    assert_eq!(dry.code, 0, "dry run succeeds: {}", dry.all_output());
    assert!(dry.stdout.contains("nothing changed"), "says nothing changed: {}", dry.stdout);
    survivors.assert_intact("dry run").await;
    survivors.cleanup().await;
}

/// Both backends in one run: everything selected is gone, the summary adds both sides up, and
/// text logs work too.
#[tokio::test]
async fn purge_cleans_both_backends_in_one_run() {
    let mut survivors = Survivors::seed().await;
    let run = cleanslate(&["purge"], &with(survivors.vars(), &[("CLEANSLATE_LOG_FORMAT", "text")])).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(survivors.rabbit.count(&survivors.vhost, "monorepo").await, 0, "queue purged");
    assert_eq!(count_keys(&mut survivors.etcd, &survivors.prefix).await, 0, "keys deleted");
    assert!(
        run.stdout.contains("purge finished") && run.stdout.contains("keys_deleted=4"),
        "text summary: {}",
        run.stdout
    );
    run.assert_no_secret(&[&rabbit_password()]);
    survivors.cleanup().await;
}

/// SIGTERM during a run ends it with 143.
#[tokio::test]
async fn sigterm_exits_143() {
    // A server that accepts connections and never answers keeps the purge busy.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().unwrap());
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut child = tokio::process::Command::new(binary())
        .arg("purge")
        .env_clear()
        .envs(support::pod_env("cleanslate-test-pod"))
        .envs(with(
            service_vars(),
            &[
                ("CLEANSLATE_TARGETS", "rabbitmq"),
                ("CLEANSLATE_RABBITMQ_URL", &url),
                ("CLEANSLATE_RABBITMQ_QUEUES", "q"),
            ],
        ))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let pid = child.id().expect("running") as i32;
    let killed = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(killed.success(), "signal sent");
    let status = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait())
        .await
        .expect("exits promptly")
        .expect("wait");
    assert_eq!(status.code(), Some(143), "SIGTERM exits 143");
    hold.abort();
}
