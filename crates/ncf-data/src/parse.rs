//! Small, allocation-free field parsers shared by the loaders.

/// Iterates the lines of a file's bytes: 1-based line number and the line without its `\n`
/// (and without a trailing `\r`, so CRLF files read the same).
pub fn lines(bytes: &[u8]) -> impl Iterator<Item = (usize, &[u8])> {
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    body.split(|&b| b == b'\n')
        .enumerate()
        .filter(move |_| !bytes.is_empty())
        .map(|(k, l)| (k + 1, l.strip_suffix(b"\r").unwrap_or(l)))
}

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

/// [`for_each_line`] over any buffered reader; `path` names the source in errors.
pub fn for_each_line_in(
    mut reader: impl std::io::BufRead,
    path: &std::path::Path,
    mut f: impl FnMut(usize, &[u8]) -> crate::Result<()>,
) -> crate::Result<usize> {
    let mut buf = Vec::with_capacity(256);
    let mut line = 0;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| crate::DataError::io(path, e))?;
        if n == 0 {
            return Ok(line);
        }
        line += 1;
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

    #[test]
    fn lines_handle_crlf_missing_final_newline_and_empty_input() {
        let v: Vec<_> = lines(b"a\r\nb\nc").collect();
        assert_eq!(v, vec![(1, &b"a"[..]), (2, &b"b"[..]), (3, &b"c"[..])]);
        assert_eq!(lines(b"x\n").count(), 1);
        assert_eq!(lines(b"").count(), 0);
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
