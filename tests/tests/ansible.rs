//! The Ansible deployment (ansible/): lint and syntax check, then a real apply on this machine into
//! a temporary prefix (services not managed), applied twice to prove it idempotent; then the
//! rendered memory server and agent daemon are started from their rendered units, with the units'
//! user and capability limits, and a workload runs through them.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use yonder_tests::{bin, compile_workload, free_tcp_port, number_after, poll, Process};

fn ansible_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ansible")
}

/// Runs a tool the deployment checks need; a missing tool fails the test (tests/run installs it
/// through .ci/setup-machine), it never skips.
fn tool(name: &str, args: &[&str], dir: &Path) -> Output {
    Command::new(name)
        .args(args)
        .current_dir(dir)
        .env("ANSIBLE_NOCOLOR", "1")
        .env("ANSIBLE_FORCE_COLOR", "0")
        .output()
        .unwrap_or_else(|e| {
            panic!("{name} is needed for this test ({e}); .ci/setup-machine installs it")
        })
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn ansible_lint_and_syntax_check_pass() {
    let dir = ansible_dir();
    let lint = tool(
        "ansible-lint",
        &["--offline", "--profile", "production"],
        &dir,
    );
    assert!(lint.status.success(), "ansible-lint:\n{}", text(&lint));
    let syntax = tool(
        "ansible-playbook",
        &[
            "--syntax-check",
            "-i",
            "inventory/example/hosts.yml",
            "site.yml",
        ],
        &dir,
    );
    assert!(syntax.status.success(), "syntax check:\n{}", text(&syntax));
}

fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .unwrap()
        .port()
}

/// `HOST: ok=N changed=N ...` counts of one host in a play recap.
fn recap(out: &str, host: &str, field: &str) -> u64 {
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with(host) && l.contains(" : ok="))
        .unwrap_or_else(|| panic!("no recap line for {host} in:\n{out}"));
    number_after(line, &format!("{field}=")).unwrap()
}

/// The first result line (`ok: [HOST]`, `skipping: [HOST]`, `fatal: [HOST]: ...`) of a task.
fn task_result(out: &str, task: &str) -> String {
    let header = format!("TASK [{task}]");
    let at = out
        .find(&header)
        .unwrap_or_else(|| panic!("task {task} not run:\n{out}"));
    out[at..]
        .lines()
        .skip(1)
        .find(|l| !l.trim().is_empty() && !l.starts_with("FAILED - RETRYING"))
        .unwrap_or_default()
        .to_string()
}

/// The value of `key=` in a systemd unit.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= missing in unit:\n{unit}"))
        .to_string()
}

/// `setpriv` arguments that start a unit's ExecStart with its user, its capability bounding set
/// and no-new-privileges, as systemd would (without the namespaces and filters).
fn as_unit(unit: &str) -> Command {
    let mut cmd = Command::new("setpriv");
    let user = unit_value(unit, "User");
    if user != "root" {
        cmd.arg(format!("--reuid={user}"))
            .arg(format!("--regid={}", unit_value(unit, "Group")))
            .arg("--clear-groups");
    }
    assert_eq!(unit_value(unit, "NoNewPrivileges"), "yes");
    let caps: String = unit_value(unit, "CapabilityBoundingSet")
        .split_whitespace()
        .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    // A user change clears the parent-death signal the harness set: set it again, so a killed
    // test binary leaves no server behind.
    cmd.arg("--no-new-privs")
        .arg("--pdeathsig=KILL")
        .arg(format!("--bounding-set=-all{caps}"))
        .arg("--inh-caps=-all")
        .arg("--");
    cmd.args(unit_value(unit, "ExecStart").split_whitespace());
    cmd
}

fn mode_and_owner(path: &Path) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.permissions().mode() & 0o7777, m.uid())
}

fn uid_of(user: &str) -> u32 {
    let out = Command::new("id").args(["-u", user]).output().unwrap();
    assert!(out.status.success(), "no user {user}");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[test]
fn apply_is_idempotent_and_the_rendered_units_serve_a_workload() {
    let tmp = tempfile::Builder::new()
        .prefix("yonder-ansible-")
        .tempdir()
        .unwrap();
    // The memory server runs as `nobody` below: it must be able to reach its files.
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let prefix = tmp.path().join("root");
    let pki = tmp.path().join("pki");
    let port = free_udp_port();
    let server_metrics = free_tcp_port();
    let inventory = tmp.path().join("inventory.yml");
    // Both groups on this machine; mem1's address is the one agents use and its certificate holds.
    std::fs::write(
        &inventory,
        format!(
            "all:\n  vars:\n    ansible_connection: local\n    ansible_python_interpreter: \"{{{{ ansible_playbook_python }}}}\"\n    yonder_server_port: {port}\n  children:\n    memory_servers:\n      hosts:\n        mem1:\n          ansible_host: 127.0.0.1\n    compute_nodes:\n      hosts:\n        node1: {{}}\n"
        ),
    )
    .unwrap();
    let binaries = bin("yonder-server").parent().unwrap().to_path_buf();
    let vars = [
        format!("yonder_prefix={}", prefix.display()),
        format!("yonder_pki_dir={}", pki.display()),
        format!("yonder_binaries_from={}", binaries.display()),
        "yonder_manage_services=false".into(),
        // An existing unprivileged user instead of creating one on the test machine.
        "yonder_server_create_user=false".into(),
        "yonder_server_user=nobody".into(),
        "yonder_server_group=nogroup".into(),
        "yonder_server_listen_address=127.0.0.1".into(),
        "yonder_server_capacity=256MiB".into(),
        format!("yonder_server_metrics=127.0.0.1:{server_metrics}"),
        "yonder_agent_node_memory=64MiB".into(),
        "yonder_agent_replicas=1".into(),
        "yonder_agent_metrics=".into(),
        // Already root; sudo need not exist.
        "ansible_become=false".into(),
    ];
    let mut args = vec!["-i".to_string(), inventory.display().to_string()];
    for v in &vars {
        args.push("-e".into());
        args.push(v.clone());
    }
    args.push("site.yml".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let first = tool("ansible-playbook", &args, &ansible_dir());
    let first_out = text(&first);
    assert!(first.status.success(), "first apply:\n{first_out}");
    for host in ["mem1", "node1"] {
        assert_eq!(recap(&first_out, host, "failed"), 0, "{first_out}");
        assert!(recap(&first_out, host, "changed") > 0, "{first_out}");
    }
    // Nothing may change on a second run: in particular no certificate is made again (a new one
    // would be copied, and reported as a change).
    let second = tool("ansible-playbook", &args, &ansible_dir());
    let second_out = text(&second);
    assert!(second.status.success(), "second apply:\n{second_out}");
    for host in ["mem1", "node1"] {
        assert_eq!(
            recap(&second_out, host, "changed"),
            0,
            "a second run must change nothing:\n{second_out}"
        );
    }

    // Keys: readable only by the user of the service; the CA key never leaves the control node.
    let etc = prefix.join("etc/yonder");
    assert_eq!(
        mode_and_owner(&etc.join("server-tls/server-mem1.key")),
        (0o600, uid_of("nobody"))
    );
    assert_eq!(
        mode_and_owner(&etc.join("server-tls/probe-mem1.key")),
        (0o600, 0)
    );
    assert_eq!(mode_and_owner(&etc.join("tls/node1.key")), (0o600, 0));
    assert_eq!(mode_and_owner(&etc.join("tls")).0, 0o700);
    assert_eq!(mode_and_owner(&pki.join("ca.key")), (0o600, 0));
    let shipped = Command::new("find")
        .arg(&prefix)
        .args(["-name", "ca.key"])
        .output()
        .unwrap();
    assert!(shipped.stdout.is_empty(), "ca.key was shipped");
    assert!(prefix
        .join("usr/local/lib/yonder/libyonder_shim.so")
        .exists());

    // The units are valid for systemd: unknown keys or bad values are only warnings there, so
    // any warning fails (except the one about `nobody`, which this test chose).
    let units = prefix.join("etc/systemd/system");
    let server_unit = std::fs::read_to_string(units.join("yonder-server.service")).unwrap();
    let agent_unit = std::fs::read_to_string(units.join("yonder-agent.service")).unwrap();
    let verify = tool(
        "systemd-analyze",
        &[
            "verify",
            "--man=no",
            units.join("yonder-server.service").to_str().unwrap(),
            units.join("yonder-agent.service").to_str().unwrap(),
        ],
        tmp.path(),
    );
    let warnings: Vec<String> = String::from_utf8_lossy(&verify.stderr)
        .lines()
        .filter(|l| !l.contains("Special user nobody configured"))
        .map(String::from)
        .collect();
    assert!(
        verify.status.success() && warnings.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&verify)
    );

    // The memory server, as its unit runs it: user nobody, no capabilities.
    let (_server, listening) = Process::start(
        as_unit(&server_unit),
        "yonder-server",
        "listening on",
        tmp.path(),
    )
    .unwrap();
    assert_eq!(listening, format!("127.0.0.1:{port}"));

    // The role's health check: a QUIC probe with the server's probe certificate...
    let probe = |port: u16| {
        Command::new(prefix.join("usr/local/bin/yonder-server"))
            .args([
                "probe",
                "--server",
                &format!("127.0.0.1:{port}"),
                "--tls-dir",
            ])
            .arg(etc.join("server-tls"))
            .args(["--cert-name", "probe-mem1", "--timeout-ms", "3000"])
            .output()
            .unwrap()
    };
    let ok = probe(port);
    let ok_out = String::from_utf8_lossy(&ok.stdout);
    assert!(ok.status.success(), "probe: {}", text(&ok));
    assert!(
        ok_out.starts_with("ok ") && ok_out.contains("tenant=probe-mem1"),
        "{ok_out}"
    );
    // ...which fails where no server answers.
    assert!(!probe(free_udp_port()).status.success());

    // The agent daemon, as its unit runs it: root with only the unit's capabilities.
    let (_daemon, _) = Process::start(
        as_unit(&agent_unit),
        "yonder-agent-daemon",
        "yonder-agent daemon listening",
        tmp.path(),
    )
    .unwrap();
    let socket = prefix.join("run/yonder/agent.sock");
    let agent = prefix.join("usr/local/bin/yonder-agent");
    // The role's health check: the daemon answers on its socket and sees the server up.
    let up = poll(Duration::from_secs(10), || {
        let out = Command::new(&agent)
            .args(["status", "--json", "--daemon"])
            .arg(&socket)
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let health = status["server_health"].as_array()?;
        (health.len() == 1 && health[0]["up"] == true).then_some(())
    });
    assert!(up.is_some(), "the daemon does not report mem1 up");

    // The roles' own health checks, run against the processes just started: they pass and
    // change nothing.
    let mut checked = args.clone();
    checked.splice(0..0, ["-e", "yonder_health_checks=true"]);
    let third = tool("ansible-playbook", &checked, &ansible_dir());
    let third_out = text(&third);
    assert!(
        third.status.success(),
        "apply with health checks:\n{third_out}"
    );
    for (task, host) in [
        (
            "memory_server : Check that the server answers over QUIC",
            "mem1",
        ),
        (
            "node_agent : Check that the daemon answers and reaches every memory server",
            "node1",
        ),
    ] {
        assert_eq!(task_result(&third_out, task), format!("ok: [{host}]"));
        assert_eq!(recap(&third_out, host, "changed"), 0, "{third_out}");
    }

    // A workload at half its memory, through the deployed `run` (which finds the deployed shim).
    let pattern = compile_workload("pattern", Path::new(env!("CARGO_TARGET_TMPDIR")), &[]);
    let run = Command::new(&agent)
        .args(["run", "--local-mem", "8MiB", "--daemon"])
        .arg(&socket)
        .arg("--")
        .arg(&pattern)
        .args(["16", "1"])
        .output()
        .unwrap();
    let run_out = text(&run);
    assert!(run.status.success(), "workload:\n{run_out}");
    assert!(run_out.contains("0 bad words"), "{run_out}");
    // Managed for real: a daemon short of a capability lets the program run unmanaged.
    assert!(!run_out.contains("unmanaged"), "{run_out}");
    assert!(
        number_after(&run_out, "evicted ").unwrap() > 0,
        "nothing went to the server:\n{run_out}"
    );
}
