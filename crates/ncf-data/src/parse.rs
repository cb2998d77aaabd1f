//! Small, allocation-free field parsers shared by the loaders.

/// Parses an unsigned decimal integer; `None` for empty input, a non-digit, or overflow.
pub fn parse_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() {
        return None;
    }
    let mut v: u64 = 0;
    for &c in field {
        let d = c.wrapping_sub(b'0');
        if d > 9 {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(d as u64)?;
    }
    Some(v)
}

/// Parses a signed decimal integer.
pub fn parse_i64(field: &[u8]) -> Option<i64> {
    match field.split_first() {
        Some((b'-', rest)) => parse_u64(rest).and_then(|v| i64::try_from(v).ok()).map(|v| -v),
        _ => parse_u64(field).and_then(|v| i64::try_from(v).ok()),
    }
}

/// Parses a decimal number such as `4`, `4.5` or `-0.25`.
pub fn parse_f64(field: &[u8]) -> Option<f64> {
    std::str::from_utf8(field).ok()?.trim().parse::<f64>().ok().filter(|x| x.is_finite())
}

/// Shows a field in an error message (lossy, truncated).
pub fn show(field: &[u8]) -> String {
    let s = String::from_utf8_lossy(field);
    if s.chars().count() > 40 { format!("{}…", s.chars().take(40).collect::<String>()) } else { s.into_owned() }
}

/// Streams the lines of the file at `path` through `f` (1-based line number, line bytes
/// without `\n` / `\r\n`), reusing one buffer, so memory stays flat whatever the file's size.
/// Returns how many lines were seen (blank ones included).
pub fn for_each_line(path: &std::path::Path, f: impl FnMut(usize, &[u8]) -> crate::Result<()>) -> crate::Result<usize> {
    let file = std::fs::File::open(path).map_err(|e| crate::DataError::io(path, e))?;
    for_each_line_in(std::io::BufReader::with_capacity(1 << 20, file), path, f)
}

/// The longest line any loader reads, its newline not counted: 1 MiB. A negatives line of 999
/// negatives with 7-digit ids is under 8 KB, so this only stops a file that is not
/// line-oriented text (or a 10 GB line) before it is buffered whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// The most lines a loader reads from one file unless `NCF_MAX_LINES` says otherwise: 2²⁷
/// (134 M; MovieLens-32M's ratings file has 32 M). A loaded MovieLens rating (`RawRating`) is
/// 32 bytes, so this bounds a file that never ends (or one of 2³¹ distinct ids) at 2²⁷ × 32 B =
/// 4.3 GB of ratings instead of an out-of-memory kill; a machine with the memory can raise it.
pub const DEFAULT_MAX_LINES: usize = 1 << 27;
const _: () = assert!(std::mem::size_of::<crate::RawRating>() == 32, "the size the docs above quote");

/// The line limit in force: `NCF_MAX_LINES` when set to a positive integer, else
/// [`DEFAULT_MAX_LINES`]; never above 2³¹ − 1, so a file's distinct ids always fit the tables'
/// 32-bit row numbers.
pub fn max_lines() -> usize {
    let set = std::env::var("NCF_MAX_LINES").ok().and_then(|v| v.trim().parse().ok()).filter(|&n| n > 0);
    set.unwrap_or(DEFAULT_MAX_LINES).min(i32::MAX as usize)
}

/// [`for_each_line`] over any buffered reader; `path` names the source in errors. A line longer
/// than [`MAX_LINE_BYTES`], or a line past [`max_lines`], is a [`crate::DataError::Limit`]
/// error naming its number.
pub fn for_each_line_in(
    mut reader: impl std::io::BufRead,
    path: &std::path::Path,
    mut f: impl FnMut(usize, &[u8]) -> crate::Result<()>,
) -> crate::Result<usize> {
    use std::io::{BufRead, Read};
    let mut buf = Vec::with_capacity(256);
    let mut line = 0;
    let most = max_lines();
    loop {
        buf.clear();
        let n = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| crate::DataError::io(path, e))?;
        if n == 0 {
            return Ok(line);
        }
        line += 1;
        if line > most {
            return Err(crate::DataError::limit(
                path,
                line,
                "the number of lines",
                format!("{most} lines per file (NCF_MAX_LINES; a loaded rating takes 32 bytes)"),
            ));
        }
        if n > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            return Err(crate::DataError::limit(
                path,
                line,
                "line length",
                format!("{MAX_LINE_BYTES} bytes per line (MAX_LINE_BYTES)"),
            ));
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        f(line, text.strip_suffix(b"\r").unwrap_or(text))?;
    }
}

/// Splits `text` on a multi-byte separator such as `::`.
pub fn split_on<'a>(text: &'a [u8], sep: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let r = rest?;
        match r.windows(sep.len()).position(|w| w == sep) {
            Some(p) => {
                rest = Some(&r[p + sep.len()..]);
                Some(&r[..p])
            }
            None => {
                rest = None;
                Some(r)
            }
        }
    })
}

/// Decodes Latin-1 (ISO-8859-1): every byte is the code point of the same value.
pub fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines end at `\n` or `\r\n`, a last line may lack its newline, and a line one byte
    /// longer than [`MAX_LINE_BYTES`] is refused with its line number, while one of exactly
    /// that length is read.
    #[test]
    fn lines_handle_crlf_a_missing_final_newline_and_the_length_limit() {
        let read = |bytes: &[u8]| {
            let mut v = Vec::new();
            let r = for_each_line_in(bytes, std::path::Path::new("f.txt"), |n, l| {
                v.push((n, l.len()));
                Ok(())
            });
            r.map(|count| (count, v))
        };
        assert_eq!(read(b"a\r\nbb\nc").unwrap(), (3, vec![(1, 1), (2, 2), (3, 1)]));
        assert_eq!(read(b"").unwrap(), (0, vec![]));
        let mut long = b"x\n".to_vec();
        long.extend(std::iter::repeat_n(b'y', MAX_LINE_BYTES));
        long.push(b'\n');
        assert_eq!(read(&long).unwrap(), (2, vec![(1, 1), (2, MAX_LINE_BYTES)]));
        let at_eof = &long[..long.len() - 1];
        assert_eq!(read(at_eof).unwrap(), (2, vec![(1, 1), (2, MAX_LINE_BYTES)]));
        for end in [&b""[..], b"\n", b"z\n"] {
            let mut over = long[..long.len() - 1].to_vec();
            over.push(b'y');
            over.extend_from_slice(end);
            let e = read(&over).unwrap_err().to_string();
            assert_eq!(
                e, "f.txt:2: line length exceeds the limit of 1048576 bytes per line (MAX_LINE_BYTES)",
                "ending {end:?}"
            );
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"0042"), Some(42));
        assert_eq!(parse_u64(b"4x"), None);
        assert_eq!(parse_u64(b""), None);
        assert_eq!(parse_u64(b"99999999999999999999999"), None);
        assert_eq!(parse_i64(b"-7"), Some(-7));
        assert_eq!(parse_f64(b"4.5"), Some(4.5));
        assert_eq!(parse_f64(b"nan"), None);
    }

    #[test]
    fn multi_byte_separator_and_latin1() {
        let v: Vec<_> = split_on(b"1::Am\xe9lie (2001)::Comedy|Romance", b"::").collect();
        assert_eq!(v.len(), 3);
        assert_eq!(latin1(v[1]), "Am\u{e9}lie (2001)");
        assert_eq!(split_on(b"", b"::").count(), 1);
    }
}
