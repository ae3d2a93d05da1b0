//! Harnesses: what actually runs as the agent, and the command line each one gets.

use std::fmt;

pub use oz_core::runner::HarnessKind;

/// The agent program to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Harness {
    /// Any argv; the prompt arrives in `OZ_PROMPT` and on stdin.
    Command(Vec<String>),
    /// Anthropic's Claude Code CLI (`claude`).
    Claude,
    /// OpenAI's Codex CLI (`codex`).
    Codex,
    /// Google's Gemini CLI (`gemini`).
    Gemini,
}

impl fmt::Display for Harness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Harness::Command(_) => "command",
            Harness::Claude => "claude",
            Harness::Codex => "codex",
            Harness::Gemini => "gemini",
        })
    }
}

impl Harness {
    /// Resolves a harness kind: `command` needs its argv; `oz` maps to `default_kind`.
    pub fn resolve(
        kind: HarnessKind,
        command: Vec<String>,
        default_kind: Option<HarnessKind>,
    ) -> Result<Harness, String> {
        let kind = match kind {
            HarnessKind::Oz => match default_kind {
                Some(HarnessKind::Oz) | None => HarnessKind::Command,
                Some(other) => other,
            },
            other => other,
        };
        match kind {
            HarnessKind::Command | HarnessKind::Oz => {
                if command.is_empty() || command[0].is_empty() {
                    Err("the command harness needs a command: pass it after `--` (oz agent run --harness command -- ./agent.sh) or in OZ_HARNESS_COMMAND as a JSON array".into())
                } else {
                    Ok(Harness::Command(command))
                }
            }
            HarnessKind::Claude => Ok(Harness::Claude),
            HarnessKind::Codex => Ok(Harness::Codex),
            HarnessKind::Gemini => Ok(Harness::Gemini),
            HarnessKind::Other(name) => Err(oz_core::runner::UnknownHarness(name).to_string()),
        }
    }

    /// The argv to run for `prompt`, with an optional model. Presets use each CLI's usual
    /// non-interactive form; the prompt is an argument there (it is not a secret), and always also in
    /// `OZ_PROMPT` and on stdin.
    pub fn argv(&self, prompt: &str, model: Option<&str>) -> Vec<String> {
        match self {
            Harness::Command(argv) => argv.clone(),
            preset => preset.preset_argv(prompt, model, false),
        }
    }

    /// The argv of a turn that continues the conversation of the turn before with `message` (the
    /// follow-ups that came while it ran): each preset's own resume of its latest session in this
    /// folder (`claude --continue`, `codex exec resume --last`, `gemini --resume latest`). `None` for
    /// a command harness, which reads its follow-ups itself (`OZ_FOLLOWUP_FILE`).
    pub fn continuation_argv(&self, message: &str, model: Option<&str>) -> Option<Vec<String>> {
        match self {
            Harness::Command(_) => None,
            preset => Some(preset.preset_argv(message, model, true)),
        }
    }

    /// How a preset resumes its conversation (said when it does); `None` for a command harness.
    pub fn resumes_with(&self) -> Option<&'static str> {
        match self {
            Harness::Command(_) => None,
            Harness::Claude => Some("claude -p --continue"),
            Harness::Codex => Some("codex exec resume --last"),
            Harness::Gemini => Some("gemini --resume latest"),
        }
    }

    fn preset_argv(&self, prompt: &str, model: Option<&str>, continuing: bool) -> Vec<String> {
        let s = |x: &str| x.to_owned();
        let mut argv = match self {
            Harness::Command(argv) => return argv.clone(),
            Harness::Claude => {
                let mut argv = vec![s("claude"), s("-p")];
                if continuing {
                    argv.push(s("--continue"));
                }
                argv.extend([
                    s("--output-format"),
                    s("stream-json"),
                    s("--verbose"),
                    s("--dangerously-skip-permissions"),
                ]);
                argv
            }
            Harness::Codex if continuing => {
                vec![s("codex"), s("exec"), s("resume"), s("--last"), s("--full-auto"), s("--skip-git-repo-check")]
            }
            Harness::Codex => vec![s("codex"), s("exec"), s("--full-auto"), s("--skip-git-repo-check")],
            Harness::Gemini if continuing => vec![s("gemini"), s("--yolo"), s("--resume"), s("latest")],
            Harness::Gemini => vec![s("gemini"), s("--yolo")],
        };
        if let Some(model) = model.filter(|m| !m.is_empty()) {
            argv.push(s("--model"));
            argv.push(s(model));
        }
        if matches!(self, Harness::Gemini) {
            argv.push(s("--prompt"));
        }
        argv.push(s(prompt));
        argv
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_build_their_usual_command_lines() {
        assert_eq!(
            Harness::Claude.argv("fix it", Some("sonnet")),
            [
                "claude",
                "-p",
                "--output-format",
                "stream-json",
                "--verbose",
                "--dangerously-skip-permissions",
                "--model",
                "sonnet",
                "fix it"
            ]
        );
        assert_eq!(
            Harness::Codex.argv("fix it", None),
            ["codex", "exec", "--full-auto", "--skip-git-repo-check", "fix it"]
        );
        assert_eq!(Harness::Gemini.argv("fix it", Some("")), ["gemini", "--yolo", "--prompt", "fix it"]);
        let cmd = Harness::Command(vec!["./agent.sh".into(), "--flag".into()]);
        assert_eq!(cmd.argv("ignored in argv", Some("m")), ["./agent.sh", "--flag"]);
    }

    #[test]
    fn presets_continue_their_latest_conversation_and_a_command_reads_its_own_followups() {
        assert_eq!(
            Harness::Claude.continuation_argv("and tests", Some("sonnet")).unwrap(),
            [
                "claude",
                "-p",
                "--continue",
                "--output-format",
                "stream-json",
                "--verbose",
                "--dangerously-skip-permissions",
                "--model",
                "sonnet",
                "and tests"
            ]
        );
        assert_eq!(
            Harness::Codex.continuation_argv("and tests", None).unwrap(),
            ["codex", "exec", "resume", "--last", "--full-auto", "--skip-git-repo-check", "and tests"]
        );
        assert_eq!(
            Harness::Gemini.continuation_argv("and tests", None).unwrap(),
            ["gemini", "--yolo", "--resume", "latest", "--prompt", "and tests"]
        );
        assert_eq!(Harness::Command(vec!["./agent.sh".into()]).continuation_argv("and tests", None), None);
    }

    #[test]
    fn resolution() {
        assert_eq!(Harness::resolve(HarnessKind::Oz, vec![], Some(HarnessKind::Claude)).unwrap(), Harness::Claude);
        assert!(Harness::resolve(HarnessKind::Oz, vec![], None).unwrap_err().contains("needs a command"));
        assert_eq!(
            Harness::resolve(HarnessKind::Command, vec!["x".into()], None).unwrap(),
            Harness::Command(vec!["x".into()])
        );
        assert!("Claude".parse::<HarnessKind>().is_ok());
        assert!("vim".parse::<HarnessKind>().unwrap_err().to_string().contains("unknown harness"));
    }
}
