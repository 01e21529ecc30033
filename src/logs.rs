//! The log stream's writer. The text format prints fields as they are (`%` fields use
//! Display), so a value holding a line break (an upstream's file name, an archive's file name)
//! would start a line of its own, shaped as the attacker likes: an audit checkpoint line that
//! `audit verify --checkpoint` reads, or a forged event in the SIEM's copy. Every event is one
//! line: breaks inside it are written as `\n` and `\r`.

use std::io::Write;

/// Writes each event (one `write_all` of one formatted event, as tracing-subscriber's fmt
/// layer does) with its inner line breaks escaped; the final newline stays.
pub struct OneLine<W: Write>(pub W);

/// `text` with every CR and LF escaped, except one final LF.
pub fn one_line(text: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let (body, end) = match text.strip_suffix(b"\n") {
        Some(b) => (b, &b"\n"[..]),
        None => (text, &b""[..]),
    };
    if !body.iter().any(|b| *b == b'\n' || *b == b'\r') {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(text.len() + 16);
    for b in body {
        match b {
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b => out.push(*b),
        }
    }
    out.extend_from_slice(end);
    std::borrow::Cow::Owned(out)
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write_all(&one_line(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_one_line() {
        assert_eq!(&*one_line(b"plain\n"), b"plain\n");
        assert_eq!(
            &*one_line(b"WARN dropped problem=a\n2026 INFO tollgate::audit: audit checkpoint\n"),
            &b"WARN dropped problem=a\\n2026 INFO tollgate::audit: audit checkpoint\n"[..]
        );
        assert_eq!(&*one_line(b"a\r\nb"), b"a\\r\\nb");
        let mut out = Vec::new();
        OneLine(&mut out).write_all(b"x\ny\n").unwrap();
        assert_eq!(out, b"x\\ny\n");
    }
}
