//! The demo's cheat-sheet: commands to paste into another shell, each one working as printed
//! (issue 14: it said `certreload status` where no `certreload` was on the PATH). The agent is
//! named by the path of the running binary, and every path is quoted for the shell.

use std::{borrow::Cow, net::SocketAddr, path::Path};

/// What the cheat-sheet needs to know of the running demo.
pub(crate) struct CheatSheet<'a> {
    /// The demo's state directory.
    pub dir: &'a Path,
    /// Whether `dir` is the default one (then `demo rotate` needs no `--dir`).
    pub default_dir: bool,
    /// Where the demo listener accepts TLS.
    pub listen: SocketAddr,
    /// The admin endpoint.
    pub admin: SocketAddr,
    /// How to run this binary from a shell (see [`program`]).
    pub program: &'a str,
}

/// The running binary's absolute path, as a shell word; `certreload` when it cannot be known.
pub(crate) fn program() -> String {
    std::env::current_exe()
        .map(|p| quote(&p.to_string_lossy()).into_owned())
        .unwrap_or_else(|_| "certreload".into())
}

/// `word` as one shell word: as it is when it holds only characters no shell treats specially,
/// else in single quotes (a `'` inside written `'\''`).
pub(crate) fn quote(word: &str) -> Cow<'_, str> {
    let plain = !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@,%".contains(&b));
    if plain {
        Cow::Borrowed(word)
    } else {
        Cow::Owned(format!("'{}'", word.replace('\'', r"'\''")))
    }
}

impl CheatSheet<'_> {
    /// The text printed when the demo starts: a heading, then one command per line (two spaces
    /// in, a `#` comment after it), then how to stop.
    pub(crate) fn render(&self) -> String {
        let path = |rest: &str| quote(&self.dir.join(rest).to_string_lossy()).into_owned();
        let (bin, port, admin) = (self.program, self.listen.port(), self.admin);
        let admin_flag = if admin.to_string() == crate::config::DEFAULT_ADMIN {
            String::new()
        } else {
            format!(" --admin {admin}")
        };
        let dir_flag = if self.default_dir {
            String::new()
        } else {
            format!(" --dir {}", quote(&self.dir.to_string_lossy()))
        };
        let (ca, audit) = (path("ca.crt"), path("audit.jsonl"));
        format!(
            "certreload demo: TLS on https://localhost:{port}/ in front of a built-in upstream; admin on http://{admin}/ ; state in {d}\n\
             In another shell:\n\
             \x20 curl --cacert {ca} https://localhost:{port}/          # through the listener\n\
             \x20 {bin} status{admin_flag}                                   # bundles, expiry, listeners, stale connections\n\
             \x20 {bin} demo rotate{dir_flag}            # new certificate from the demo CA, swapped in like a Secret volume\n\
             \x20 openssl s_client -connect 127.0.0.1:{port} </dev/null 2>/dev/null | openssl x509 -noout -serial   # the served serial\n\
             \x20 echo garbage > {garbage}      # rejected: the last good certificate stays served\n\
             \x20 tail -n 4 {audit}                  # change_detected, material_rejected / material_accepted, endpoint_converged\n\
             \x20 {bin} audit verify {audit}    # the tamper-evident chain\n\
             \x20 curl -s http://{admin}/metrics | grep -E '^(x509_cert_not_after|certreload_bundle_generation)'\n\
             Stop with Ctrl-C.\n",
            d = quote(&self.dir.to_string_lossy()),
            garbage = path("tls/..data/tls.crt"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_leaves_plain_words_and_single_quotes_the_rest() {
        assert_eq!(
            quote("/usr/local/bin/certreload"),
            "/usr/local/bin/certreload"
        );
        assert_eq!(quote("/tmp/a b"), "'/tmp/a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    #[test]
    fn every_command_names_the_binary_by_the_path_given() {
        let dir = Path::new("/run/user/0/certreload demo");
        let sheet = CheatSheet {
            dir,
            default_dir: false,
            listen: "127.0.0.1:8443".parse().expect("addr"),
            admin: "127.0.0.1:9900".parse().expect("addr"),
            program: "/opt/bin/certreload",
        }
        .render();
        assert!(
            sheet.contains("  /opt/bin/certreload status --admin 127.0.0.1:9900 "),
            "{sheet}"
        );
        assert!(
            sheet.contains("/opt/bin/certreload demo rotate --dir '/run/user/0/certreload demo'"),
            "{sheet}"
        );
        assert!(
            !sheet.lines().any(|l| l.starts_with("  certreload ")),
            "{sheet}"
        );
    }
}
