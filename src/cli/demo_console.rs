//! What `billstream api` needs to serve a demo's output in the support
//! console, with no Kafka and no Schema Registry: the price book as a
//! plans file (`<out>/plans.jsonl`, read through `api.plans_file`) and a
//! configuration (`<out>/console.toml`) naming the demo's store, that
//! file, its dead letters (`api.dead_letter_file`) and a secret of this
//! run's own; then the exact command to start it and a token to sign in.

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::config::Settings;
use crate::contracts::plan_to_json;
use crate::engine::plan::Plan;

/// The plans file next to the demo's outputs.
pub const PLANS_FILE: &str = "plans.jsonl";
/// The configuration `billstream api --config` takes.
pub const CONSOLE_CONFIG: &str = "console.toml";
/// How long the token the demo prints is valid.
const TOKEN_HOURS: u64 = 12;

/// A TOML string literal of `path`.
fn toml_path(path: &Path) -> anyhow::Result<String> {
    let text = path
        .to_str()
        .with_context(|| format!("{} is not UTF-8, which TOML needs", path.display()))?;
    Ok(toml::Value::String(text.to_string()).to_string())
}

/// `word` as one shell word: as is when it is plain, else single-quoted.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-:+=,@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Writes `plans` as `<out>/plans.jsonl` and `<out>/console.toml`; returns
/// the configuration's path as given (relative to the working directory
/// when `out` is). The configuration names the store, the plans and the
/// dead letters by absolute path, so `billstream api` may be started from
/// anywhere; its secret is new on every run and the file is readable by
/// its owner only.
pub fn write_files(out: &Path, plans: &[Plan]) -> anyhow::Result<PathBuf> {
    let plans_path = out.join(PLANS_FILE);
    let mut text = String::new();
    for plan in plans {
        text.push_str(&plan_to_json(plan).to_string());
        text.push('\n');
    }
    std::fs::write(&plans_path, text)
        .with_context(|| format!("cannot write {}", plans_path.display()))?;
    let dir =
        std::path::absolute(out).with_context(|| format!("cannot resolve {}", out.display()))?;
    let secret: String = rand::random::<[u8; 32]>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let config = format!(
        "# `billstream api --config {file}`: the read API and the support console\n\
         # on this demo's output, with no Kafka and no Schema Registry. Written by\n\
         # `billstream demo` (again, with a new secret, on every run);\n\
         # `billstream token --config {file}` prints a token to sign in with.\n\
         environment = \"prod\"\n\
         \n\
         [store]\n\
         kind = \"embedded\"\n\
         path = {store}\n\
         \n\
         [api]\n\
         listen = \"127.0.0.1:8080\"\n\
         plans_file = {plans}\n\
         dead_letter_file = {dlq}\n\
         \n\
         [api.jwt]\n\
         algorithm = \"HS256\"\n\
         secret = \"{secret}\"\n",
        file = CONSOLE_CONFIG,
        store = toml_path(&dir.join("state"))?,
        plans = toml_path(&dir.join(PLANS_FILE))?,
        dlq = toml_path(&dir.join("billing.dlq.v1.jsonl"))?,
    );
    let path = out.join(CONSOLE_CONFIG);
    write_private(&path, &config).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

/// Writes `text` to a new file at `path` that only its owner may read.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(text.as_bytes())
}

/// What to type to watch the demo in the console: the command (this
/// program as it was invoked), the address, and a token of the
/// configuration's secret.
pub fn instructions(config: &Path) -> anyhow::Result<String> {
    let settings = Settings::load(Some(config))?;
    let token = crate::api::auth::dev_token(&settings.api, "demo", TOKEN_HOURS * 3600)?;
    let program = std::env::args_os()
        .next()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|| "billstream".to_string());
    let config = config.to_string_lossy();
    let (program, config) = (shell_word(&program), shell_word(&config));
    Ok(format!(
        "Watch it in the support console (no Kafka or Schema Registry needed):\n\
         \x20 {program} api --config {config}\n\
         then open http://{listen}/console and sign in with this token (billing:read, \
         valid {TOKEN_HOURS} hours; `{program} token --config {config}` prints another):\n\
         \x20 {token}",
        listen = settings.api.listen,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_with_spaces_or_quotes_stays_one_shell_word() {
        assert_eq!(shell_word("out/demo/console.toml"), "out/demo/console.toml");
        assert_eq!(shell_word("my out/c.toml"), "'my out/c.toml'");
        assert_eq!(shell_word("it's"), r"'it'\''s'");
    }

    #[test]
    fn the_console_config_loads_names_the_demo_files_and_signs_a_token_it_accepts() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out \"q\"");
        std::fs::create_dir(&out).unwrap();
        let plans = crate::sim::demo_plans();
        let config = write_files(&out, &plans).unwrap();
        let s = Settings::load(Some(&config)).unwrap();
        let abs = std::path::absolute(&out).unwrap();
        assert_eq!(
            s.store,
            crate::config::StoreSettings::Embedded {
                path: abs.join("state")
            }
        );
        assert_eq!(s.api.plans_file, Some(abs.join(PLANS_FILE)));
        assert_eq!(
            s.api.dead_letter_file,
            Some(abs.join("billing.dlq.v1.jsonl"))
        );
        let text = std::fs::read_to_string(abs.join(PLANS_FILE)).unwrap();
        assert_eq!(text.lines().count(), plans.len());
        let said = instructions(&config).unwrap();
        let token = said.lines().last().unwrap().trim();
        let verifier = crate::api::Verifier::from_settings(&s.api).unwrap();
        assert_eq!(verifier.check(Some(&format!("Bearer {token}"))), Ok(()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&config).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Every run has its own secret.
        let again = write_files(&out, &plans).unwrap();
        assert_ne!(
            Settings::load(Some(&again)).unwrap().api.jwt,
            s.api.jwt,
            "the secret is new on every run"
        );
    }
}
