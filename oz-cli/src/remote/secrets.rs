//! `oz secret set|list|delete`: the team's write-only secrets (an admin's). A value is read from
//! standard input or a file, never from the command line, where other users of the machine and the
//! shell's history would see it; no command ever prints one.

use std::io::Read;
use std::process::ExitCode;

use oz_core::wire::secrets::SecretItem;

use super::output::Printer;
use super::{ApiOpts, CliError};

/// The largest value read, as the server's limit.
const MAX_VALUE: u64 = 64 * 1024;

/// `oz secret ...`.
#[derive(Debug, clap::Subcommand)]
pub enum SecretCommand {
    /// Sets a secret from standard input (`printf %s "$TOKEN" | oz secret set NAME`) or a file.
    Set {
        /// Its name (letters, digits and `_`).
        name: String,
        /// Read the value from this file instead of standard input (a PEM key, say).
        #[arg(long, value_name = "PATH")]
        from_file: Option<std::path::PathBuf>,
    },
    /// Lists the team's secrets: names and dates, never values.
    List,
    /// Deletes a secret.
    Delete {
        /// Its name.
        name: String,
    },
}

fn read_value(from_file: Option<&std::path::Path>) -> Result<String, CliError> {
    let mut bytes = Vec::new();
    let read = match from_file {
        Some(path) => std::fs::File::open(path)
            .and_then(|f| f.take(MAX_VALUE + 1).read_to_end(&mut bytes))
            .map_err(|e| CliError::Usage(format!("could not read {}: {e}", path.display()))),
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => Err(CliError::Usage(
            "give the value on standard input (printf %s \"$VALUE\" | oz secret set NAME) or with --from-file; it is not read from a terminal, where it would show".into(),
        )),
        None => std::io::stdin()
            .take(MAX_VALUE + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| CliError::Usage(format!("could not read the value from standard input: {e}"))),
    };
    read?;
    if bytes.len() as u64 > MAX_VALUE {
        return Err(CliError::Usage(format!("the value is larger than {MAX_VALUE} bytes")));
    }
    let mut value = String::from_utf8(bytes).map_err(|_| CliError::Usage("the value must be UTF-8 text".into()))?;
    // `echo` and editors add a newline no token has; a PEM key's last newline is kept.
    if !value.contains("-----BEGIN") && value.ends_with('\n') {
        value.pop();
        if value.ends_with('\r') {
            value.pop();
        }
    }
    if value.is_empty() {
        return Err(CliError::Usage(
            "the value is empty: give it on standard input (printf %s \"$VALUE\" | oz secret set NAME) or with --from-file".into(),
        ));
    }
    Ok(value)
}

fn describe(s: &SecretItem) -> String {
    format!("secret {} (updated {})", s.name, s.updated_at)
}

/// Runs `oz secret ...`.
pub async fn run(command: SecretCommand, api: ApiOpts) -> Result<ExitCode, CliError> {
    let client = api.client()?;
    let printer = Printer { format: api.output_format };
    let secrets = client.secrets();
    match command {
        SecretCommand::Set { name, from_file } => {
            let value = read_value(from_file.as_deref())?;
            printer.item(&secrets.set(&name, &value).await?, describe)?;
        }
        SecretCommand::List => {
            let all = secrets.list().await?;
            printer.list(&all, &["SECRET", "UPDATED"], |s| vec![s.name.clone(), s.updated_at.to_string()])?;
        }
        SecretCommand::Delete { name } => {
            secrets.delete(&name).await?;
            printer.item(&serde_json::json!({"name": name, "deleted": true}), |_| format!("deleted secret {name}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
