//! The README walk-through works verbatim: its block runs in bash against a fresh server started
//! with zero configuration, with only the binary path and the port substituted.

use std::process::Command;

use crate::binary::{BIN, Server};

fn walkthrough() -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start = readme.find("<!-- walkthrough:start -->").expect("walk-through start marker");
    let end = readme.find("<!-- walkthrough:end -->").expect("walk-through end marker");
    let block = &readme[start..end];
    let code_start = block.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let code_end = block[code_start..].find("```").expect("end of the sh block") + code_start;
    block[code_start..code_end].to_owned()
}

#[tokio::test]
async fn the_readme_walkthrough_works_verbatim() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &[]);
    let script = walkthrough()
        .replace("cargo run --release -q --", BIN)
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", server.port));
    assert!(!script.contains("cargo run"), "every command was substituted");

    let output = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(dir.path())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "walk-through failed:\n{stdout}\n{stderr}");

    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].contains("/fhir/demo/Patient/") && lines[0].ends_with("/_history/1"), "{stdout}");
    assert!(lines[1].contains("\"family\":\"Chalmers\""), "{stdout}");
    assert!(stdout.contains("HTTP/1.1 200 OK"), "{stdout}");
    assert!(stdout.to_lowercase().contains("etag: w/\"2\""), "{stdout}");
    assert!(stdout.contains("\"type\":\"history\"") && stdout.contains("\"total\":2"), "{stdout}");
    assert!(stdout.contains("\"type\":\"transaction-response\""), "{stdout}");
    for rt in ["Patient", "Observation"] {
        assert!(stdout.contains(&format!("\"201 Created\",\"location\":\"{rt}/")), "{stdout}");
    }
    let followed = lines.iter().find(|l| l.contains("\"mode\":\"include\"")).expect("the include step");
    assert!(followed.contains("\"family\":\"Lefebvre\"") && followed.contains("\"code\":\"8867-4\""), "{stdout}");
    assert_eq!(lines[lines.len() - 3..], ["204", "410", "200"], "{stdout}");
}
