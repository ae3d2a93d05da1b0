//! Reading the `OZ_ENVIRONMENT_FILE` a setup command may write: `KEY=VALUE` lines.

/// Parses dotenv text: `KEY=VALUE` per line, optional `export ` prefix, `#` comments and blank lines,
/// values optionally in single quotes (taken literally) or double quotes (with `\n`, `\t`, `\"`, `\\`
/// escapes). Errors name the line.
pub fn parse(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {line_no}: expected KEY=VALUE"));
        };
        let name = name.trim();
        oz_core::validate::env_name("name", name).map_err(|e| format!("line {line_no}: {e}"))?;
        let value = value.trim();
        let value = if let Some(inner) = value.strip_prefix('\'') {
            inner.strip_suffix('\'').ok_or_else(|| format!("line {line_no}: unterminated single quote"))?.to_owned()
        } else if let Some(inner) = value.strip_prefix('"') {
            let inner = inner.strip_suffix('"').ok_or_else(|| format!("line {line_no}: unterminated double quote"))?;
            unescape(inner).map_err(|e| format!("line {line_no}: {e}"))?
        } else {
            // Unquoted: a ` #` starts a comment.
            value.split(" #").next().unwrap_or("").trim_end().to_owned()
        };
        oz_core::validate::env_value(name, &value).map_err(|e| format!("line {line_no}: {e}"))?;
        out.push((name.to_owned(), value));
    }
    Ok(out)
}

fn unescape(s: &str) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('"') => out.push('"'),
            Some('\\') => out.push('\\'),
            Some('$') => out.push('$'),
            Some(other) => return Err(format!("unknown escape \\{other}")),
            None => return Err("a trailing backslash".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_usual_forms() {
        let text = "# comment\n\nA=1\nexport B = two words \nC='lit $x \\n'\nD=\"line\\nbreak \\\"q\\\"\"\nE=val # trailing\nF=\n";
        assert_eq!(
            parse(text).unwrap(),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "two words".into()),
                ("C".into(), "lit $x \\n".into()),
                ("D".into(), "line\nbreak \"q\"".into()),
                ("E".into(), "val".into()),
                ("F".into(), "".into()),
            ]
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(parse("A=1\nnot a pair").unwrap_err(), "line 2: expected KEY=VALUE");
        assert!(parse("BAD-NAME=1").unwrap_err().starts_with("line 1:"));
        assert!(parse("A='open").unwrap_err().contains("unterminated"));
        assert!(parse("A=\"\\q\"").unwrap_err().contains("unknown escape"));
    }
}
