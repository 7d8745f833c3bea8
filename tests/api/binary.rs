//! The `fhirvault` binary itself: zero-config `serve`, `token`, config errors, SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_fhirvault");

/// A `fhirvault serve` child process, stopped (SIGTERM) on drop.
pub struct Server {
    pub child: Child,
    pub port: u16,
}

impl Server {
    /// Start `fhirvault serve --listen 127.0.0.1:0 {args}` in `cwd` and wait until it logs its port.
    pub fn start(cwd: &Path, args: &[&str]) -> Self {
        fhirvault::crypto::install_tls_provider();
        let mut child = Command::new(BIN)
            .current_dir(cwd)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("FHIRVAULT__LOG__FORMAT", "json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("fhirvault starts");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        // Readiness: the server logs its port once it is listening. The thread keeps draining
        // the log afterwards so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(event) = serde_json::from_str::<Value>(&line) else { continue };
                if event["message"] == "fhirvault listening" {
                    let _ = tx.send(event["port"].as_u64());
                }
            }
        });
        let port = rx.recv_timeout(Duration::from_secs(60)).expect("the server logged its port in time");
        let port = u16::try_from(port.expect("a port number")).unwrap();
        Self { child, port }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Send SIGTERM and wait (bounded) for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the server did not stop within 30 s of SIGTERM");
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn token(cwd: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN).current_dir(cwd).arg("token").args(args).output().expect("fhirvault token runs")
}

#[tokio::test]
async fn zero_config_serve_creates_the_data_dir_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &[]);

    let data = dir.path().join("fhirvault-data");
    assert!(data.join("index.sqlite").is_file());
    assert!(data.join("objects").is_dir());
    let key_mode = std::fs::metadata(data.join("keys/root.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(key_mode, 0o600);
    let ready = reqwest::get(format!("{}/readyz", server.base())).await.unwrap();
    assert_eq!(ready.status(), 200);

    let output = token(dir.path(), &["--tenant", "demo", "--role", "practitioner", "--jurisdiction", "FR"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let jwt = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert_eq!(jwt.split('.').count(), 3);
    let response = reqwest::Client::new()
        .post(format!("{}/fhir/demo/Patient", server.base()))
        .bearer_auth(&jwt)
        .header("content-type", "application/fhir+json")
        .body(r#"{"resourceType":"Patient","active":true}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    let status = server.terminate();
    assert!(status.success(), "exit status {status:?}");
}

#[test]
fn token_refuses_what_it_cannot_issue() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--tenant", "nowhere", "--role", "practitioner"], "tenant `nowhere` is not configured"),
        (&["--tenant", "demo", "--role", "wizard"], "unknown role `wizard`"),
        (&["--tenant", "demo", "--role", "patient"], "`--patient ID` is required"),
        (&["--tenant", "demo", "--role", "practitioner", "--jurisdiction", "France"], "ISO 3166"),
    ];
    for (args, says) in cases {
        let output = token(dir.path(), args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[test]
fn an_unknown_configuration_key_stops_the_server_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[http]\nlisten_port = 8080\n").unwrap();
    let output = Command::new(BIN).current_dir(dir.path()).args(["serve", "--config", "bad.toml"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("listen_port"), "{stderr}");
    assert!(!dir.path().join("fhirvault-data").exists(), "a refused configuration writes nothing");
}

#[test]
fn policy_check_validates_a_policy_directory_and_names_what_is_wrong() {
    let shipped = Command::new(BIN).args(["policy", "check"]).output().unwrap();
    assert!(shipped.status.success(), "{}", String::from_utf8_lossy(&shipped.stderr));
    let stdout = String::from_utf8_lossy(&shipped.stdout);
    assert!(stdout.starts_with("14 policies valid: tenant-isolation, eea-jurisdiction,"), "{stdout}");

    // The project's directory, as an operator would check a copy before deploying it.
    let project = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let output = Command::new(BIN).args(["policy", "check"]).arg(&project).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), stdout);

    // A copy with a misspelt attribute is refused, naming the policy's problem.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&project).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let auditors = dir.path().join("30-auditors.cedar");
    let text = std::fs::read_to_string(&auditors).unwrap().replace("principal.role", "principal.rol");
    std::fs::write(&auditors, text).unwrap();
    let output = Command::new(BIN).args(["policy", "check"]).arg(dir.path()).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("do not match the schema"), "{stderr}");
    assert!(stderr.contains("for policy `auditor-no-clinical-data`, attribute `rol`"), "{stderr}");
}
