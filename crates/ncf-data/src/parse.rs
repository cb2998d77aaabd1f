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
}
