//! The one JSON-lines reader of every input file (training and evaluation problems, demo pools,
//! `icpo verify` pairs), so that they all follow the same rules:
//! - a UTF-8 byte-order mark at the start of the file is ignored;
//! - blank lines (only whitespace, e.g. a trailing empty line) are skipped;
//! - line numbers are 1-based lines of the file, blank ones counted;
//! - each line is decoded on its own, so a byte that is not UTF-8 makes that line bad (with its
//!   number), not the whole file, and a caller that skips bad lines can skip it;
//! - a line that is not one JSON value is bad, with serde's reason.

use std::io::Read;
use std::path::Path;

use crate::error::{io_err, Result};

/// One non-blank line: its 1-based number and its value, or why it is not valid JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonlLine {
    /// 1-based line number in the file.
    pub line: usize,
    /// The parsed value, or what is wrong with the line.
    pub value: std::result::Result<serde_json::Value, String>,
}

/// Reads `path` (`-` for standard input) as JSON lines; I/O errors name the file.
pub fn read_jsonl(path: &Path) -> Result<Vec<JsonlLine>> {
    let mut bytes = Vec::new();
    if path.as_os_str() == "-" {
        std::io::stdin().lock().read_to_end(&mut bytes).map_err(io_err("<stdin>"))?;
    } else {
        bytes = std::fs::read(path).map_err(io_err(path))?;
    }
    Ok(parse_jsonl(&bytes))
}

/// [`read_jsonl`] on bytes already in memory.
pub fn parse_jsonl(bytes: &[u8]) -> Vec<JsonlLine> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let mut out = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        if raw.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value = match std::str::from_utf8(raw) {
            Ok(text) => serde_json::from_str(text).map_err(|e| format!("malformed JSON: {e}")),
            Err(e) => Err(format!(
                "not UTF-8: invalid byte 0x{:02x} at column {}",
                raw[e.valid_up_to()],
                e.valid_up_to() + 1
            )),
        };
        out.push(JsonlLine { line: i + 1, value });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_set_of_rules() {
        let text = b"\xEF\xBB\xBF{\"a\": 1}\r\n\n  \n{\"a\": \xff}\n{bad\n{\"a\": 2}\n\n";
        let lines = parse_jsonl(text);
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0], JsonlLine { line: 1, value: Ok(serde_json::json!({"a": 1})) });
        assert_eq!(lines[1].line, 4);
        let e = lines[1].value.as_ref().unwrap_err();
        assert!(e.contains("not UTF-8") && e.contains("0xff") && e.contains("column 7"), "{e}");
        assert_eq!(lines[2].line, 5);
        assert!(lines[2].value.as_ref().unwrap_err().starts_with("malformed JSON"));
        assert_eq!(lines[3], JsonlLine { line: 6, value: Ok(serde_json::json!({"a": 2})) });
        assert!(parse_jsonl(b"").is_empty());
        assert!(parse_jsonl(b"\xEF\xBB\xBF\n").is_empty());
    }

    #[test]
    fn io_errors_name_the_file() {
        let e = read_jsonl(Path::new("/nonexistent/x.jsonl")).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/x.jsonl"), "{e}");
    }
}
