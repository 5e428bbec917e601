//! etcd behaviour of `cleanslate purge`, against the real etcd started by `hack/services.sh` and
//! throwaway servers for auth, TLS and several endpoints. Each test uses its own key namespace.

mod support;

use etcd_client::GetOptions;
use support::*;

/// Runs the `etcdctl` commands of `setup` (users, roles, `auth enable`, with root's password
/// `Etcd-Root-Pw-9c2`) on `server`, and returns a client logged in as root.
async fn with_users(server: &EtcdServer, setup: &[Vec<&str>]) -> etcd_client::Client {
    for args in setup {
        let out = server.etcdctl(args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let options = etcd_client::ConnectOptions::new().with_user("root", "Etcd-Root-Pw-9c2");
    etcd_client::Client::connect([&server.endpoint], Some(options)).await.expect("admin connects")
}

fn purge_vars(prefixes: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    with(with(service_vars(), &[("CLEANSLATE_TARGETS", "etcd"), ("CLEANSLATE_ETCD_PREFIXES", prefixes)]), extra)
}

/// A prefix is deleted; a sibling that only shares the text (`monorepo-keep/`) and system keys
/// survive; the deleted count comes from the server.
#[tokio::test]
async fn prefix_is_deleted_and_siblings_survive() {
    let mut etcd = etcd().await;
    let ns = unique("/t");
    let (target, keep, registry) =
        (format!("{ns}/monorepo/"), format!("{ns}/monorepo-keep/"), "/registry/cleanslate-test/");
    put_keys(&mut etcd, &target, 25).await;
    put_keys(&mut etcd, &keep, 5).await;
    put_keys(&mut etcd, registry, 3).await;

    let run = cleanslate(&["purge"], &purge_vars(&target, &[])).await;

    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(count_keys(&mut etcd, &target).await, 0, "target prefix emptied");
    assert_eq!(count_keys(&mut etcd, &keep).await, 5, "monorepo-keep/ survives monorepo/");
    assert_eq!(count_keys(&mut etcd, registry).await, 3, "/registry/ survives");
    assert!(run.stdout.contains(r#""keys_deleted":25"#), "server's count reported: {}", run.stdout);
}

/// Without the trailing slash the prefix is taken literally and also covers `monorepo-keep/`,
/// as documented; plan shows it before anything is deleted.
#[tokio::test]
async fn literal_prefix_without_slash_covers_siblings_in_plan() {
    let mut etcd = etcd().await;
    let ns = unique("/t");
    put_keys(&mut etcd, &format!("{ns}/monorepo/"), 4).await;
    put_keys(&mut etcd, &format!("{ns}/monorepo-keep/"), 3).await;

    let run = cleanslate(&["plan"], &purge_vars(&format!("{ns}/monorepo"), &[])).await;

    assert_eq!(run.code, 0, "plan succeeds: {}", run.all_output());
    assert!(run.stdout.contains(r#""keys":7"#), "plan counts both: {}", run.stdout);
    assert_eq!(count_keys(&mut etcd, &format!("{ns}/monorepo")).await, 7, "plan deleted nothing");
}

/// Protected prefixes inside a target survive, and plan reports them with their count.
#[tokio::test]
async fn protected_keys_inside_a_target_survive() {
    let mut etcd = etcd().await;
    let ns = unique("/t");
    let (target, protected) = (format!("{ns}/app/"), format!("{ns}/app/locks/"));
    put_keys(&mut etcd, &target, 10).await;
    put_keys(&mut etcd, &protected, 4).await;
    put_keys(&mut etcd, &format!("{ns}/app/zz/"), 6).await;
    let settings = [("CLEANSLATE_ETCD_PROTECTED_PREFIXES", protected.as_str())];

    let plan = cleanslate(&["plan"], &purge_vars(&target, &settings)).await;
    assert_eq!(plan.code, 0, "plan succeeds: {}", plan.all_output());
    assert!(
        plan.stdout.contains("protected keys kept") && plan.stdout.contains(r#""keys":4"#),
        "plan shows protection: {}",
        plan.stdout
    );

    let run = cleanslate(&["purge"], &purge_vars(&target, &settings)).await;
    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(count_keys(&mut etcd, &protected).await, 4, "protected keys survive");
    assert_eq!(count_keys(&mut etcd, &target).await, 4, "only protected keys remain under the target");
    assert!(run.stdout.contains(r#""keys_deleted":16"#), "16 deleted around the hole: {}", run.stdout);
}

/// Prefixes that reach system keys, and an empty prefix, are refused with 77 and delete nothing.
#[tokio::test]
async fn dangerous_prefixes_are_refused() {
    let mut etcd = etcd().await;
    let ns = unique("/t");
    put_keys(&mut etcd, "/registry/cleanslate-refuse/", 2).await;
    put_keys(&mut etcd, &format!("{ns}/x/"), 2).await;
    for (prefixes, needle) in [
        ("/", "/registry/"),
        ("/registry/", "/registry/"),
        ("/coreos.com/", "/coreos.com/"),
        ("", "empty prefix"),
        (&format!("{ns}/x/,") as &str, "empty prefix"),
    ] {
        let run = cleanslate(&["purge"], &purge_vars(prefixes, &[])).await;
        assert_eq!(run.code, 77, "{prefixes:?} refused: {}", run.all_output());
        assert!(run.first_stderr_line().contains(needle), "{prefixes:?}: names the problem: {}", run.stderr);
    }
    assert_eq!(count_keys(&mut etcd, "/registry/cleanslate-refuse/").await, 2, "system keys untouched");
    assert_eq!(count_keys(&mut etcd, &format!("{ns}/x/")).await, 2, "nothing deleted by a refused run");
}

/// More ranges than etcd's 128 operations per transaction are split and all deleted.
#[tokio::test]
async fn many_ranges_are_split_into_transactions() {
    let mut etcd = etcd().await;
    let ns = unique("/t");
    let prefixes: Vec<String> = (0..200).map(|i| format!("{ns}/p{i:03}/")).collect();
    for prefix in &prefixes {
        put_keys(&mut etcd, prefix, 1).await;
    }
    put_keys(&mut etcd, &format!("{ns}/q/"), 2).await;

    let run = cleanslate(&["purge"], &purge_vars(&prefixes.join(","), &[])).await;

    assert_eq!(run.code, 0, "purge succeeds: {}", run.all_output());
    assert_eq!(count_keys(&mut etcd, &format!("{ns}/p")).await, 0, "all 200 ranges deleted");
    assert_eq!(count_keys(&mut etcd, &format!("{ns}/q/")).await, 2, "neighbour survives");
    assert!(run.stdout.contains(r#""keys_deleted":200"#), "count summed over transactions: {}", run.stdout);
}

/// With auth enabled, the right user and password delete; a wrong password fails at once, says
/// so, leaks nothing and deletes nothing.
#[tokio::test]
async fn auth_enabled_etcd() {
    let server = EtcdServer::start(false, &[]).await;
    let root_password = "Etcd-Root-Pw-3e1";
    for args in [vec!["user", "add", &format!("root:{root_password}") as &str], vec!["auth", "enable"]] {
        let out = server.etcdctl(&args);
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let out = server.etcdctl(&["--user", &format!("root:{root_password}"), "put", "app/k1", "v"]);
    assert!(out.status.success(), "seed with auth: {}", String::from_utf8_lossy(&out.stderr));
    let settings = |password: &str| {
        purge_vars(
            "app/",
            &[
                ("CLEANSLATE_ETCD_ENDPOINTS", &server.endpoint),
                ("CLEANSLATE_ETCD_USERNAME", "root"),
                ("CLEANSLATE_ETCD_PASSWORD", password),
            ],
        )
    };

    let wrong = cleanslate(&["purge"], &settings("Not-The-Pw-0")).await;
    assert_eq!(wrong.code, 79, "wrong password fails (79: final): {}", wrong.all_output());
    assert!(wrong.stderr.contains("refused the credentials"), "says why: {}", wrong.stderr);
    assert!(!wrong.stdout.contains("retrying"), "not retried: {}", wrong.stdout);
    wrong.assert_no_secret(&["Not-The-Pw-0", root_password]);
    let options = etcd_client::ConnectOptions::new().with_user("root", root_password);
    let mut admin = etcd_client::Client::connect([&server.endpoint], Some(options)).await.expect("admin connects");
    assert_eq!(count_keys(&mut admin, "app/").await, 1, "nothing deleted by a refused login");

    let right = cleanslate(&["purge"], &settings(root_password)).await;
    assert_eq!(right.code, 0, "right password deletes: {}", right.all_output());
    right.assert_no_secret(&[root_password]);
    assert_eq!(count_keys(&mut admin, "app/").await, 0, "deleted with the right password");
}

/// etcd over TLS with a CA the test creates; then mutual TLS with a client certificate, which is
/// refused without one.
#[tokio::test]
async fn tls_and_mutual_tls() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let server_cert = ca.issue("etcd");
    let client_cert = ca.issue("cleanslate");
    let ca_file = write_file(dir.path(), "ca.pem", &ca.pem);
    let cert = write_file(dir.path(), "server.pem", &server_cert.cert_pem);
    let key = write_file(dir.path(), "server.key", &server_cert.key_pem);
    let client_crt = write_file(dir.path(), "client.pem", &client_cert.cert_pem);
    let client_key = write_file(dir.path(), "client.key", &client_cert.key_pem);

    let tls = EtcdServer::start(true, &["--cert-file".into(), cert.clone(), "--key-file".into(), key.clone()]).await;
    let seed = |server: &EtcdServer, with_client: bool| {
        let mut args = vec!["--cacert", &ca_file as &str];
        if with_client {
            args.extend(["--cert", &client_crt as &str, "--key", &client_key as &str]);
        }
        args.extend(["put", "app/k", "v"]);
        let out = server.etcdctl(&args);
        assert!(out.status.success(), "seed over TLS: {}", String::from_utf8_lossy(&out.stderr));
    };
    seed(&tls, false);
    let run = cleanslate(
        &["purge"],
        &purge_vars("app/", &[("CLEANSLATE_ETCD_ENDPOINTS", &tls.endpoint), ("CLEANSLATE_ETCD_CA_FILE", &ca_file)]),
    )
    .await;
    assert_eq!(run.code, 0, "purge over TLS: {}", run.all_output());
    assert!(run.stdout.contains(r#""keys_deleted":1"#), "deleted over TLS: {}", run.stdout);

    let mtls = EtcdServer::start(
        true,
        &[
            "--cert-file".into(),
            cert,
            "--key-file".into(),
            key,
            "--client-cert-auth".into(),
            "--trusted-ca-file".into(),
            ca_file.clone(),
        ],
    )
    .await;
    seed(&mtls, true);
    let base = purge_vars(
        "app/",
        &[
            ("CLEANSLATE_ETCD_ENDPOINTS", &mtls.endpoint),
            ("CLEANSLATE_ETCD_CA_FILE", &ca_file),
            ("CLEANSLATE_TIMEOUT", "3s"),
        ],
    );
    let refused = cleanslate(&["purge"], &base).await;
    assert_ne!(refused.code, 0, "no client certificate, no access: {}", refused.all_output());
    let run = cleanslate(
        &["purge"],
        &with(base, &[("CLEANSLATE_ETCD_CERT_FILE", &client_crt), ("CLEANSLATE_ETCD_KEY_FILE", &client_key)]),
    )
    .await;
    assert_eq!(run.code, 0, "purge over mutual TLS: {}", run.all_output());
    assert!(run.stdout.contains(r#""keys_deleted":1"#), "deleted over mTLS: {}", run.stdout);
}

/// Several endpoints: a dead one beside a live one does not stop the purge.
#[tokio::test]
async fn several_endpoints_with_one_dead() {
    let mut etcd = etcd().await;
    let ns = unique("/t");
    put_keys(&mut etcd, &format!("{ns}/a/"), 3).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let endpoints = format!("{dead},{}", etcd_endpoint());

    let run =
        cleanslate(&["purge"], &purge_vars(&format!("{ns}/a/"), &[("CLEANSLATE_ETCD_ENDPOINTS", &endpoints)])).await;

    assert_eq!(run.code, 0, "purge succeeds with one endpoint dead: {}", run.all_output());
    assert_eq!(count_keys(&mut etcd, &format!("{ns}/a/")).await, 0, "deleted through the live endpoint");
}

/// More than 128 ranges take two transactions; when the user may write only the first 128 ranges,
/// the preflight finds the second transaction refused before either is sent: nothing is deleted
/// (etcd checks the permissions of both branches of a transaction before it evaluates it, so a
/// never-true comparison checks the deletes without running them).
#[tokio::test]
async fn a_permission_missing_for_a_later_transaction_deletes_nothing() {
    let server = EtcdServer::start(false, &[]).await;
    let root = "root:Etcd-Root-Pw-9c2";
    let user_password = "Etcd-User-Pw-4d7";
    let cleaner = format!("cleaner:{user_password}");
    let setup: Vec<Vec<&str>> = vec![
        vec!["user", "add", root],
        vec!["user", "add", &cleaner],
        vec!["role", "add", "cleaner"],
        // Ranges 0..=127 of the plan below end at "t/k127/keep/": exactly the first transaction.
        vec!["role", "grant-permission", "cleaner", "readwrite", "t/", "t/k127/keep/"],
        vec!["user", "grant-role", "cleaner", "cleaner"],
        vec!["auth", "enable"],
    ];
    let mut admin = with_users(&server, &setup).await;
    for i in 0..130 {
        admin.put(format!("t/k{i:03}/a"), "v", None).await.expect("seed");
    }
    // 130 protected prefixes cut "t/" into 131 ranges: one transaction of 128, one of 3.
    let protected: Vec<String> = (0..130).map(|i| format!("t/k{i:03}/keep/")).collect();
    let run = cleanslate(
        &["purge"],
        &purge_vars(
            "t/",
            &[
                ("CLEANSLATE_ETCD_ENDPOINTS", &server.endpoint),
                ("CLEANSLATE_ETCD_PROTECTED_PREFIXES", &protected.join(",")),
                ("CLEANSLATE_ETCD_USERNAME", "cleaner"),
                ("CLEANSLATE_ETCD_PASSWORD", user_password),
            ],
        ),
    )
    .await;
    assert_eq!(run.code, 79, "the second transaction is refused (79: final): {}", run.all_output());
    assert_eq!(count_keys(&mut admin, "t/").await, 130, "nothing was deleted, not even the first 128 ranges");
    assert!(
        run.stderr.contains("preflight")
            && run.stderr.contains("readwrite")
            && run.stderr.contains("nothing was stopped or deleted"),
        "the error names the missing permission and says nothing was touched: {}",
        run.stderr
    );
    run.assert_no_secret(&[user_password, "Etcd-Root-Pw-9c2"]);
}

/// A server whose operator lowered `--max-txn-ops` refuses etcd's default transaction size;
/// `CLEANSLATE_ETCD_MAX_TXN_OPS` follows it, and every range is deleted.
#[tokio::test]
async fn a_lowered_max_txn_ops_is_followed() {
    let server = EtcdServer::start(false, &["--max-txn-ops".into(), "4".into()]).await;
    let mut etcd = etcd_at(std::slice::from_ref(&server.endpoint)).await;
    let prefixes: Vec<String> = (0..6).map(|i| format!("small/p{i}/")).collect();
    for prefix in &prefixes {
        put_keys(&mut etcd, prefix, 2).await;
    }
    let vars = purge_vars(&prefixes.join(","), &[("CLEANSLATE_ETCD_ENDPOINTS", &server.endpoint)]);

    let refused = cleanslate(&["purge"], &vars).await;
    assert_eq!(refused.code, 1, "six operations in one transaction are refused: {}", refused.all_output());
    assert!(refused.stderr.contains("too many operations"), "etcd's reason: {}", refused.stderr);
    assert_eq!(count_keys(&mut etcd, "small/").await, 12, "nothing deleted by the refused transaction");

    let run = cleanslate(&["purge"], &with(vars, &[("CLEANSLATE_ETCD_MAX_TXN_OPS", "4")])).await;
    assert_eq!(run.code, 0, "two transactions of at most four: {}", run.all_output());
    assert_eq!(count_keys(&mut etcd, "small/").await, 0, "every range deleted");
    assert!(run.stdout.contains(r#""keys_deleted":12"#), "counted: {}", run.stdout);
}

/// A user with `readwrite` on its own prefix and nothing else (what the requirements ask for)
/// purges it on every etcd: nothing cleanslate sends needs more (etcd 3.5.28+ and 3.6 reserve the
/// maintenance `Status` call for the root role). The keys beside the prefix survive, and a wrong
/// password still says so, deleting nothing.
#[tokio::test]
async fn a_key_scoped_user_purges_its_prefix() {
    let server = EtcdServer::start(false, &[]).await;
    let user_password = "Team-Pw-51c";
    let team = format!("team:{user_password}");
    let setup: Vec<Vec<&str>> = vec![
        vec!["user", "add", "root:Etcd-Root-Pw-9c2"],
        vec!["user", "add", &team],
        vec!["role", "add", "team"],
        vec!["role", "grant-permission", "team", "readwrite", "team/", "team0"],
        vec!["user", "grant-role", "team", "team"],
        vec!["auth", "enable"],
    ];
    let mut admin = with_users(&server, &setup).await;
    put_keys(&mut admin, "team/", 5).await;
    put_keys(&mut admin, "team-other/", 3).await;
    let vars = |password: &str| {
        purge_vars(
            "team/",
            &[
                ("CLEANSLATE_ETCD_ENDPOINTS", &server.endpoint),
                ("CLEANSLATE_ETCD_USERNAME", "team"),
                ("CLEANSLATE_ETCD_PASSWORD", password),
            ],
        )
    };

    let wrong = cleanslate(&["purge"], &vars("Not-The-Pw")).await;
    assert_ne!(wrong.code, 0, "a wrong password fails: {}", wrong.all_output());
    assert!(
        wrong.stderr.contains("refused the credentials") && wrong.stderr.contains("CLEANSLATE_ETCD_USERNAME"),
        "and says so: {}",
        wrong.stderr
    );
    assert_eq!(count_keys(&mut admin, "team/").await, 5, "nothing deleted with a wrong password");

    let plan = cleanslate(&["plan"], &vars(user_password)).await;
    assert_eq!(plan.code, 0, "the key-scoped user plans: {}", plan.all_output());
    assert!(plan.stdout.contains(r#""prefix":"team/","keys":5"#), "and counts its keys: {}", plan.stdout);

    let run = cleanslate(&["purge"], &vars(user_password)).await;
    assert_eq!(run.code, 0, "the key-scoped user purges its prefix: {}", run.all_output());
    assert_eq!(count_keys(&mut admin, "team/").await, 0, "its keys are gone");
    assert_eq!(count_keys(&mut admin, "team-other/").await, 3, "the keys beside it survive");
    for out in [&wrong, &plan, &run] {
        out.assert_no_secret(&[user_password, "Etcd-Root-Pw-9c2"]);
    }
}

/// The seed goes in the delete's own transaction when the server's operation limit allows (one new
/// revision: no reader sees the prefix empty), and right after it when it does not; either way the
/// prefix ends holding exactly the seed, with the seed's values, beside the protected keys (a
/// protected prefix between two seed keys: the ranges cut around the seed keep its hole), and a
/// sibling prefix that only shares the text survives.
#[tokio::test]
async fn the_seed_replaces_the_prefix_in_one_transaction_when_it_fits() {
    let mut etcd = etcd().await;
    let dir = tempfile::tempdir().expect("tempdir");
    for (case, max_ops, one) in [("one transaction", "128", true), ("after the delete", "1", false)] {
        let ns = unique("/seed");
        let prefix = format!("{ns}/app/");
        let (protected, sibling) = (format!("{prefix}keep/"), format!("{ns}/app-other/"));
        put_keys(&mut etcd, &prefix, 5).await;
        put_keys(&mut etcd, &protected, 3).await;
        put_keys(&mut etcd, &sibling, 4).await;
        etcd.put(format!("{prefix}lobby"), "stale", None).await.expect("put");
        let seed = write_file(
            dir.path(),
            &format!("seed-{max_ops}.yaml"),
            &format!("{prefix}lobby: open\n{prefix}flags/beta: \"true\"\n"),
        );
        let run = cleanslate(
            &["purge"],
            &purge_vars(
                &prefix,
                &[
                    ("CLEANSLATE_ETCD_SEED_FILE", &seed),
                    ("CLEANSLATE_ETCD_MAX_TXN_OPS", max_ops),
                    ("CLEANSLATE_ETCD_PROTECTED_PREFIXES", &protected),
                ],
            ),
        )
        .await;
        assert_eq!(run.code, 0, "{case}: {}", run.all_output());
        // One transaction: both seed keys were written at one revision R, and just before R the
        // prefix still held everything the delete removed (other tests share this etcd, so the
        // store's revision count says nothing).
        let mut revisions = Vec::new();
        for key in ["lobby", "flags/beta"] {
            let found = etcd.get(format!("{prefix}{key}"), None).await.expect("get seed key");
            revisions.push(found.kvs()[0].mod_revision());
        }
        let written_at = revisions[0];
        let before = etcd
            .get(prefix.clone(), Some(GetOptions::new().with_prefix().with_count_only().with_revision(written_at - 1)))
            .await
            .expect("get at the revision before")
            .count();
        let in_one = revisions.iter().all(|r| *r == written_at) && before == 9;
        assert_eq!(in_one, one, "{case}: seed written at {revisions:?}, {before} keys just before");
        assert_eq!(count_keys(&mut etcd, &protected).await, 3, "{case}: the protected keys survive");
        assert_eq!(count_keys(&mut etcd, &sibling).await, 4, "{case}: the sibling prefix survives");
        assert_eq!(count_keys(&mut etcd, &prefix).await, 5, "{case}: only the seed and the protected keys are left");
        let lobby = etcd.get(format!("{prefix}lobby"), None).await.expect("get");
        assert_eq!(lobby.kvs()[0].value_str().unwrap(), "open", "{case}: the seed's value replaced the stale one");
        assert!(run.stdout.contains(r#""keys_seeded":2"#), "{case}: counted: {}", run.stdout);
    }
}
