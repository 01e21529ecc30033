//! The log stream's writer. The text format prints fields as they are (`%` fields use
//! Display), so a value holding a line break (an upstream's file name, an archive's file name)
//! would start a line of its own, shaped as the attacker likes: an audit checkpoint line that
//! `audit verify --checkpoint` reads, or a forged event in the SIEM's copy. Every event is one
//! line: whatever some reader takes for a line break inside it (C0 controls but TAB, DEL,
//! U+0085 NEL, U+2028 and U+2029, which JSON strings may carry raw) is written escaped, and a
//! text line is cut at [`MAX_LINE`] so a log shipper that splits long lines does not split
//! it where a publisher chose.

use std::io::Write;

/// Longest text log line written; the CRI log format and docker split lines at 16 KiB.
pub const MAX_LINE: usize = 16 * 1024;

/// Writes each event (one `write_all` of one formatted event, as tracing-subscriber's fmt
/// layer does) as one line. `clip`: cut lines at [`MAX_LINE`] (text; a JSON line is not cut,
/// which would make it unreadable).
pub struct OneLine<W: Write> {
    pub out: W,
    pub clip: bool,
}

/// `text` with every line separator escaped, except one final LF; cut at `max` bytes.
pub fn one_line(text: &[u8], max: Option<usize>) -> std::borrow::Cow<'_, [u8]> {
    let (body, end) = match text.strip_suffix(b"\n") {
        Some(b) => (b, &b"\n"[..]),
        None => (text, &b""[..]),
    };
    let separator = |i: usize| -> Option<(usize, &'static str)> {
        match body[i] {
            b'\n' => Some((1, "\\n")),
            b'\r' => Some((1, "\\r")),
            b'\t' => None,
            0x1b => None, // ANSI colours on a terminal (escaped by the formatter elsewhere)
            c if c < 0x20 || c == 0x7f => Some((1, "\\u{00XX}")),
            0xc2 if body.get(i + 1) == Some(&0x85) => Some((2, "\\u{0085}")),
            0xe2 if body.get(i + 1) == Some(&0x80)
                && matches!(body.get(i + 2), Some(0xa8 | 0xa9)) =>
            {
                Some((
                    3,
                    if body[i + 2] == 0xa8 {
                        "\\u{2028}"
                    } else {
                        "\\u{2029}"
                    },
                ))
            }
            _ => None,
        }
    };
    let clean = (0..body.len()).all(|i| separator(i).is_none());
    let long = max.is_some_and(|m| body.len() > m);
    if clean && !long {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut i = 0;
    while i < body.len() {
        // Cut between characters, never inside one.
        if max.is_some_and(|m| out.len() >= m) && body[i] & 0xc0 != 0x80 {
            out.extend_from_slice(format!(" [line cut at {} bytes]", out.len()).as_bytes());
            break;
        }
        match separator(i) {
            Some((n, esc)) => {
                if esc == "\\u{00XX}" {
                    out.extend_from_slice(format!("\\u{{{:04x}}}", body[i]).as_bytes());
                } else {
                    out.extend_from_slice(esc.as_bytes());
                }
                i += n;
            }
            None => {
                out.push(body[i]);
                i += 1;
            }
        }
    }
    out.extend_from_slice(end);
    std::borrow::Cow::Owned(out)
}

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.out
            .write_all(&one_line(buf, self.clip.then_some(MAX_LINE)))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_stays_one_line() {
        assert_eq!(&*one_line(b"plain\n", None), b"plain\n");
        assert_eq!(
            &*one_line(
                b"WARN dropped problem=a\n2026 INFO tollgate::audit: audit checkpoint\n",
                None
            ),
            &b"WARN dropped problem=a\\n2026 INFO tollgate::audit: audit checkpoint\n"[..]
        );
        assert_eq!(&*one_line(b"a\r\nb", None), b"a\\r\\nb");
        for (raw, shown) in [
            (&b"a\x0bb"[..], &b"a\\u{000b}b"[..]),
            (b"a\x0cb", b"a\\u{000c}b"),
            (b"a\x1cb", b"a\\u{001c}b"),
            ("a\u{85}b".as_bytes(), b"a\\u{0085}b"),
            ("a\u{2028}b".as_bytes(), b"a\\u{2028}b"),
            ("a\u{2029}b".as_bytes(), b"a\\u{2029}b"),
            (b"a\tb", b"a\tb"),
            ("é ✓".as_bytes(), "é ✓".as_bytes()),
        ] {
            assert_eq!(&*one_line(raw, None), shown);
        }
        let mut out = Vec::new();
        OneLine {
            out: &mut out,
            clip: true,
        }
        .write_all(b"x\ny\n")
        .unwrap();
        assert_eq!(out, b"x\\ny\n");
    }

    #[test]
    fn a_long_text_line_is_cut() {
        let long = vec![b'a'; 200_000];
        let cut = one_line(&long, Some(MAX_LINE));
        assert!(cut.len() < MAX_LINE + 64);
        assert!(cut.ends_with(b"bytes]"));
        assert_eq!(one_line(&long, None).len(), 200_000);
    }
}
