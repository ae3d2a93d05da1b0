//! Printing results as text for people, or as JSON / NDJSON for programs.

use std::io::Write;

use serde::Serialize;

use super::CliError;

/// `--output-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns and short lines, for people.
    Text,
    /// One JSON document (an object, or an array for lists).
    Json,
    /// One JSON object per line (each list item, each event).
    Ndjson,
}

/// Writes results to stdout in the chosen format.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    /// The format.
    pub format: Format,
}

impl Printer {
    /// One object; `text` renders it for people.
    pub fn item<T: Serialize>(&self, item: &T, text: impl FnOnce(&T) -> String) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        match self.format {
            Format::Text => writeln!(out, "{}", text(item).trim_end())?,
            Format::Json => writeln!(out, "{}", to_json(item, true)?)?,
            Format::Ndjson => writeln!(out, "{}", to_json(item, false)?)?,
        }
        Ok(())
    }

    /// A list; in text, a table with `headers` and one row per item from `row`.
    pub fn list<T: Serialize>(
        &self,
        items: &[T],
        headers: &[&str],
        row: impl Fn(&T) -> Vec<String>,
    ) -> Result<(), CliError> {
        let mut out = std::io::stdout().lock();
        match self.format {
            Format::Text => {
                if items.is_empty() {
                    writeln!(out, "(none)")?;
                } else {
                    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
                    write!(out, "{}", table(headers, &rows))?;
                }
            }
            Format::Json => writeln!(out, "{}", to_json(&items, true)?)?,
            Format::Ndjson => {
                for item in items {
                    writeln!(out, "{}", to_json(item, false)?)?;
                }
            }
        }
        Ok(())
    }

    /// A line of text, printed only in text format.
    pub fn note(&self, line: impl std::fmt::Display) -> Result<(), CliError> {
        if self.format == Format::Text {
            writeln!(std::io::stdout().lock(), "{line}")?;
        }
        Ok(())
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T, pretty: bool) -> Result<String, CliError> {
    let text = if pretty { serde_json::to_string_pretty(value) } else { serde_json::to_string(value) };
    text.map_err(|e| CliError::Output(std::io::Error::other(e)))
}

/// Renders rows under headers in left-aligned columns two spaces apart; cells are cut to one line.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let clean = |s: &str| -> String {
        let line = s.lines().next().unwrap_or("");
        if line.chars().count() > 60 {
            format!("{}…", line.chars().take(59).collect::<String>())
        } else {
            line.into()
        }
    };
    let rows: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(|c| clean(c)).collect()).collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let width = widths.get(i).copied().unwrap_or(0);
            if i + 1 == cells.len() {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns_and_cuts_long_cells() {
        let long = "x".repeat(100);
        let text = table(&["ID", "NAME"], &[vec!["a".into(), "first\nsecond".into()], vec!["bbbb".into(), long]]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "ID    NAME");
        assert_eq!(lines[1], "a     first");
        assert!(lines[2].starts_with("bbbb  xxx"));
        assert_eq!(lines[2].chars().count(), 6 + 60);
    }
}
