//! A minimal Server-Sent Events parser over a byte stream.

/// One SSE event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SseEvent {
    /// `id:`.
    pub id: Option<String>,
    /// `event:`.
    pub event: Option<String>,
    /// `data:` lines, joined with `\n`.
    pub data: String,
}

/// Feeds bytes, yields complete events.
#[derive(Debug, Default)]
pub struct SseParser {
    buf: String,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    /// Adds bytes; returns the events they completed.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseEvent> {
        self.buf.push_str(&String::from_utf8_lossy(bytes));
        let mut out = Vec::new();
        while let Some(pos) = self.buf.find('\n') {
            let line: String = self.buf.drain(..=pos).collect();
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if self.has_data {
                    out.push(std::mem::take(&mut self.current));
                }
                self.current = SseEvent::default();
                self.has_data = false;
                continue;
            }
            if line.starts_with(':') {
                continue; // a comment (keep-alive)
            }
            let (field, value) =
                line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
            match field {
                "id" => self.current.id = Some(value.to_owned()),
                "event" => self.current.event = Some(value.to_owned()),
                "data" => {
                    if self.has_data {
                        self.current.data.push('\n');
                    }
                    self.current.data.push_str(value);
                    self.has_data = true;
                }
                _ => {}
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_split_anywhere() {
        let text = ": keep-alive\n\nid: 1\nevent: state\ndata: {\"a\":1}\n\nid: 2\ndata: line1\ndata: line2\n\n";
        for split in 0..text.len() {
            let mut p = SseParser::default();
            let mut events = p.push(&text.as_bytes()[..split]);
            events.extend(p.push(&text.as_bytes()[split..]));
            assert_eq!(events.len(), 2, "split at {split}");
            assert_eq!(
                events[0],
                SseEvent { id: Some("1".into()), event: Some("state".into()), data: "{\"a\":1}".into() }
            );
            assert_eq!(events[1].data, "line1\nline2");
        }
    }
}
