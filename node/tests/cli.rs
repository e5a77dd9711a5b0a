//! `chorus client`'s music commands, run as a user runs them: the real binary against a real
//! 3-process cluster, with its login kept in a temporary config directory.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::TestCluster;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");

/// Runs `chorus client --node <node> <args>` with `home` as the config directory.
fn chorus(home: &Path, node: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
        .arg("client")
        .args(["--node", node])
        .args(args)
        .env("XDG_CONFIG_HOME", home)
        .env("HOME", home)
        .env("CHORUS_PASSWORD", "password123")
        .env_remove("CHORUS_CONFIG")
        .output()
        .expect("run chorus")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(home: &Path, node: &str, args: &[&str]) -> String {
    let out = chorus(home, node, args);
    assert!(
        out.status.success(),
        "chorus client {args:?} failed:\n{}{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Runs a command that must fail with one line on stderr, and returns that line.
fn fails(home: &Path, node: &str, args: &[&str]) -> String {
    let out = chorus(home, node, args);
    assert!(
        !out.status.success(),
        "chorus client {args:?} should fail: {}",
        stdout(&out)
    );
    stderr(&out)
}

#[tokio::test(flavor = "multi_thread")]
async fn music_from_the_command_line() {
    let c = TestCluster::start(3).await;
    let leader = c.leader_id().await;
    let follower = c.url(c.followers(leader)[0]);
    let other = c.url(c.followers(leader)[1]);
    let home = tempfile::tempdir().expect("a config dir");
    let home = home.path();

    // Not logged in yet: one line that says what to do.
    let tagged = format!("{FIXTURES}/tagged-3s.mp3");
    let err = fails(home, &follower, &["upload", &tagged]);
    assert!(err.contains("chorus client login"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    ok(
        home,
        &follower,
        &[
            "register",
            "--username",
            "cli-user",
            "--email",
            "cli@example.com",
        ],
    );
    let login = ok(home, &follower, &["login", "--username", "cli-user"]);
    let session = home.join("chorus/session.json");
    let stored = std::fs::read_to_string(&session).expect("the session file");
    let token: serde_json::Value = serde_json::from_str(&stored).expect("JSON");
    let token = token["token"].as_str().expect("a token").to_string();
    assert!(
        !login.contains(&token),
        "the token is never printed: {login}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&session)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600, "only the user reads the token");
    assert!(ok(home, &follower, &["whoami"]).contains("cli-user"));

    // Two uploads at once: their ids printed, one per line. A file without tags needs a title.
    let untagged = format!("{FIXTURES}/untagged-2s.mp3");
    let err = fails(home, &follower, &["upload", &untagged]);
    assert!(err.contains("400") && err.contains("title"), "{err}");
    let copy = home.join("copy.mp3");
    std::fs::copy(&tagged, &copy).expect("copy the fixture");
    let copy = copy.to_str().expect("utf-8").to_string();
    let uploaded = ok(
        home,
        &follower,
        &["upload", &tagged, &copy, "--artist", "The CLI"],
    );
    let ids: Vec<String> = uploaded
        .lines()
        .filter_map(|l| {
            l.rsplit_once(": track ")
                .map(|(_, id)| id.trim().to_string())
        })
        .collect();
    assert_eq!(ids.len(), 2, "{uploaded}");

    // The library on another node: search finds them; a download is byte-identical.
    let found = ok(home, &other, &["tracks", "--search", "the cli"]);
    for id in &ids {
        assert!(found.contains(id.as_str()), "{id} in {found}");
    }
    let saved = home.join("saved.mp3");
    ok(
        home,
        &other,
        &["download", &ids[0], "-o", saved.to_str().expect("utf-8")],
    );
    assert_eq!(
        std::fs::read(&saved).expect("the download"),
        std::fs::read(&tagged).expect("the fixture")
    );
    let missing = fails(
        home,
        &other,
        &["download", "999999", "-o", saved.to_str().expect("utf-8")],
    );
    assert!(missing.contains("404"), "{missing}");
    assert_eq!(
        std::fs::read(&saved).expect("the earlier download"),
        std::fs::read(&tagged).expect("the fixture"),
        "a failed download leaves the file alone"
    );

    // The playlist.
    ok(home, &follower, &["playlist", "add", &ids[1]]);
    let shown = ok(home, &follower, &["playlist"]);
    assert!(
        shown.contains(ids[1].as_str()) && shown.contains("The CLI"),
        "{shown}"
    );
    ok(home, &follower, &["playlist", "remove", &ids[1]]);
    assert!(!ok(home, &follower, &["playlist"]).contains(ids[1].as_str()));

    // A file that is not an MP3: one line with the status and the node's reason; the others
    // still upload and the exit status says something failed.
    let text = home.join("notes.mp3");
    std::fs::write(&text, "these are not MP3 frames\n".repeat(100)).expect("write");
    let out = chorus(
        home,
        &follower,
        &["upload", text.to_str().expect("utf-8"), &tagged],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("notes.mp3: 415"), "{err}");
    assert!(
        stdout(&out).contains(": track "),
        "the good file still uploads"
    );

    // A signed-in vote from the seed's commands counts once.
    ok(
        home,
        &follower,
        &[
            "add",
            "--id",
            &ids[0],
            "--title",
            "x",
            "--artist",
            "y",
            "--duration",
            "3",
        ],
    );
    ok(home, &follower, &["vote", "--id", &ids[0], "--up", "true"]);
    let again = ok(home, &follower, &["vote", "--id", &ids[0], "--up", "true"]);
    assert!(again.contains("\"votes\": 1"), "{again}");

    ok(home, &follower, &["logout"]);
    assert!(!session.exists());

    let completions = Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["completions", "bash"])
        .output()
        .expect("run chorus");
    assert!(stdout(&completions).contains("chorus"));
}
