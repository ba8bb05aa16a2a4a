//! The CLI as a user installs and meets it (issue 14): the binary `cargo install --path agent`
//! installed (`cargo xtask test` installs it into target/install-check and sets
//! `CERTRELOAD_INSTALLED_BIN`), its shell completions (bash parses and loads them), its man pages
//! (rendered by man/groff without a warning), and the demo's cheat-sheet, every command of which
//! is run exactly as printed, from a shell whose PATH has no `certreload` on it.

use std::{
    fs,
    net::TcpListener,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

use certreload_e2e::{certreload_bin, ci, Agent};

/// The installed binary, or (outside CI, when the install was not made) the one under test.
fn installed_bin() -> PathBuf {
    match std::env::var_os("CERTRELOAD_INSTALLED_BIN") {
        Some(bin) => PathBuf::from(bin),
        None => {
            assert!(
                !ci(),
                "CI=true: CERTRELOAD_INSTALLED_BIN is required (cargo xtask test installs the agent with cargo install)"
            );
            eprintln!(
                "CERTRELOAD_INSTALLED_BIN not set: testing {}",
                certreload_bin().display()
            );
            certreload_bin()
        }
    }
}

fn run_ok(command: &mut Command) -> Output {
    let out = command.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{command:?}: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `bash -c SCRIPT` with no `certreload` on the PATH and no startup files.
fn bash(script: &str) -> Command {
    let mut c = Command::new("bash");
    c.args(["--noprofile", "--norc", "-c", script])
        .env("PATH", "/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin");
    c
}

#[test]
fn installed_binary_runs_and_is_outside_the_build_directory() {
    let bin = installed_bin();
    let out = run_ok(Command::new(&bin).arg("--version"));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("certreload {}", env!("CARGO_PKG_VERSION"))
    );
    if std::env::var_os("CERTRELOAD_INSTALLED_BIN").is_some() {
        assert!(bin.ends_with("bin/certreload"), "{}", bin.display());
    }
}

#[test]
fn bash_completion_parses_loads_and_completes_commands() {
    let bin = installed_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("certreload.bash");
    let out = run_ok(Command::new(&bin).args(["completions", "bash"]));
    fs::write(&script, &out.stdout).expect("write");
    run_ok(Command::new("bash").arg("-n").arg(&script));
    // Loaded into a shell, it completes `certreload ch` to `check` and `--log-f` to the option.
    let probe = format!(
        "source {}\nCOMP_WORDS=(certreload ch); COMP_CWORD=1; COMP_LINE='certreload ch'; COMP_POINT=${{#COMP_LINE}}\n\
         _certreload certreload ch certreload; echo \"${{COMPREPLY[@]}}\"\n\
         COMP_WORDS=(certreload run --log-f); COMP_CWORD=2; COMP_LINE='certreload run --log-f'; COMP_POINT=${{#COMP_LINE}}\n\
         _certreload certreload --log-f run; echo \"${{COMPREPLY[@]}}\"",
        script.display()
    );
    let out = run_ok(&mut bash(&probe));
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("check"), "{text}");
    assert!(
        lines.next().is_some_and(|l| l.contains("--log-format")),
        "{text}"
    );
}

#[test]
fn completions_for_every_shell_name_the_commands() {
    let bin = installed_bin();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = run_ok(Command::new(&bin).args(["completions", shell]));
        let text = String::from_utf8_lossy(&out.stdout);
        for command in [
            "watch",
            "run",
            "check",
            "status",
            "audit",
            "demo",
            "completions",
            "man",
        ] {
            assert!(text.contains(command), "{shell}: no {command}");
        }
    }
    let bad = Command::new(&bin)
        .args(["completions", "tcsh"])
        .output()
        .expect("runs");
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn man_pages_render_without_warnings() {
    let bin = installed_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("certreload.1");
    let out = run_ok(Command::new(&bin).arg("man"));
    fs::write(&page, &out.stdout).expect("write");
    run_ok(
        Command::new(&bin)
            .arg("man")
            .arg("--dir")
            .arg(dir.path().join("man1")),
    );
    let run_page = dir.path().join("man1/certreload-run.1");
    for (page, expect) in [
        (
            &page,
            ["NAME", "SUBCOMMANDS", "--log-format", "completions"],
        ),
        (&run_page, ["NAME", "--config", "--profile", "--hook"]),
    ] {
        // groff's own warnings (-ww) on stderr: a page it renders with warnings is broken.
        let out = run_ok(
            Command::new("groff")
                .args(["-man", "-Tutf8", "-ww"])
                .arg(page)
                .stdout(Stdio::piped()),
        );
        assert!(
            out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let man = run_ok(
            Command::new("man")
                .arg("-l")
                .arg(page)
                .env("MANPAGER", "cat")
                .env("MANWIDTH", "100"),
        );
        let text = String::from_utf8_lossy(&man.stdout);
        for word in expect {
            assert!(
                text.contains(word),
                "{}: no {word}:\n{text}",
                page.display()
            );
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// The cheat-sheet's commands: the indented lines between "In another shell:" and "Stop with".
fn cheat_sheet_commands(log: &str) -> Vec<String> {
    log.lines()
        .skip_while(|l| !l.starts_with("In another shell:"))
        .skip(1)
        .take_while(|l| !l.starts_with("Stop with"))
        .map(|l| l.trim().to_string())
        .collect()
}

#[test]
fn demo_cheat_sheet_commands_work_as_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().join("demo state");
    let (listen, admin) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let d_str = d.display().to_string();
    let agent = Agent::start_args(
        &[
            "demo", "--dir", &d_str, "--listen", &listen, "--admin", &admin,
        ],
        &d.join("audit.jsonl"),
    );
    let commands = cheat_sheet_commands(&agent.log());
    assert_eq!(commands.len(), 8, "{}", agent.log());
    let bin = certreload_bin().canonicalize().expect("the binary");
    for command in &commands {
        let program = command.split_whitespace().next().unwrap_or_default();
        assert!(
            ["curl", "openssl", "echo", "tail"].contains(&program)
                || program == bin.to_string_lossy(),
            "{command}: not a command found as printed"
        );
        let out = bash(command).output().expect("bash");
        assert!(
            out.status.success(),
            "{command}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if command.contains(" demo rotate") {
            // The rotation is taken before the next command writes garbage into the volume.
            agent.expect_record("the rotation accepted", |r| {
                r["event"] == "material_accepted" && r["new_generation"] == 2
            });
        }
    }
    // The garbage the cheat-sheet writes is rejected.
    agent.expect_record("the garbage rejected", |r| {
        r["event"] == "material_rejected" && r["check"] == "parse"
    });
    agent.stop();
}
