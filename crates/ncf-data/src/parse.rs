//! Small, allocation-free field parsers shared by the loaders.

/// Parses an unsigned decimal integer; `None` for empty input, a non-digit, or overflow.
pub fn parse_u64(field: &[u8]) -> Option<u64> {
    if field.is_empty() {
        return None;
    }
    if field.len() <= 19 {
        // Below 10¹⁹ ≤ u64::MAX: no overflow to test for. Without the tests, ML-1M's 994,169
        // training lines parsed in 24 ms against 31 ms on one core (the fastest timed pass of each).
        let mut v: u64 = 0;
        for &c in field {
            let d = c.wrapping_sub(b'0');
            if d > 9 {
                return None;
            }
            v = v * 10 + d as u64;
        }
        return Some(v);
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

/// Parses a decimal number such as `4`, `4.5` or `-0.25`. A field of digits alone (MovieLens'
/// ratings) takes [`parse_u64`], skipping `from_utf8`, `trim` and `str::parse`: the integer's
/// value rounded to the nearest `f64`, which is what the general parser gives for it too
/// (tested).
pub fn parse_f64(field: &[u8]) -> Option<f64> {
    if let Some(v) = parse_u64(field) {
        return Some(v as f64);
    }
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
    reader: impl std::io::BufRead,
    path: &std::path::Path,
    f: impl FnMut(usize, &[u8]) -> crate::Result<()>,
) -> crate::Result<usize> {
    lines_in(reader, path, max_lines(), f)
}

/// The error for line `line`, the first past the limit of `most` lines.
fn too_many_lines(path: &std::path::Path, line: usize, most: usize) -> crate::DataError {
    crate::DataError::limit(
        path,
        line,
        "the number of lines",
        format!("{most} lines per file (NCF_MAX_LINES; a loaded rating takes 32 bytes)"),
    )
}

/// The error for line `line`, longer than [`MAX_LINE_BYTES`].
fn line_too_long(path: &std::path::Path, line: usize) -> crate::DataError {
    crate::DataError::limit(path, line, "line length", format!("{MAX_LINE_BYTES} bytes per line (MAX_LINE_BYTES)"))
}

/// [`for_each_line_in`] with the line limit given: one line at a time, the reference
/// [`parse_lines_par`] is tested against.
fn lines_in(
    mut reader: impl std::io::BufRead,
    path: &std::path::Path,
    most: usize,
    mut f: impl FnMut(usize, &[u8]) -> crate::Result<()>,
) -> crate::Result<usize> {
    use std::io::{BufRead, Read};
    let mut buf = Vec::with_capacity(256);
    let mut line = 0;
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
            return Err(too_many_lines(path, line, most));
        }
        if n > MAX_LINE_BYTES && buf.last() != Some(&b'\n') {
            return Err(line_too_long(path, line));
        }
        let text = buf.strip_suffix(b"\n").unwrap_or(&buf);
        f(line, text.strip_suffix(b"\r").unwrap_or(text))?;
    }
}

/// The bytes [`parse_lines_par`] reads at a time, into one buffer kept for the whole file:
/// 4 MiB. Each block costs two hand-offs to the other threads (the counts, then the runs), which
/// on a VM can wait for an idle vCPU to wake: ML-1M's training file (13 MB) parsed in 49–51 ms
/// in blocks of 1 MiB, 27–38 ms in blocks of 4 MiB and 30–37 ms in one block of 16 MiB.
const PAR_BLOCK: usize = 4 << 20;

/// A block's lines go to one run per thread, but no run is smaller than this (64 KiB: about
/// 5,000 ML-1M rating lines): below it, handing a run to another thread costs more than it
/// saves.
const PAR_MIN_RUN: usize = 64 << 10;

/// `f` over the lines of the file at `path`, the results kept in line order: what
/// [`for_each_line`] gives `f` (1-based numbers, blank lines counted, `\n` or `\r\n` taken
/// off), under the same limits, but on rayon's threads. `f` returns `Ok(None)` for a line that
/// gives nothing (a blank one).
///
/// The file is read [`PAR_BLOCK`] bytes at a time into one buffer, and each block cut after its
/// last newline. Its lines are split into one run per thread at the newlines nearest equal
/// shares; the runs' newlines are counted (in parallel), so each run knows its first line's
/// number and how many results it can give at most, and each run writes its results straight
/// into its own stretch of the output's spare room, stopping at its first error. Then the
/// stretches are closed up in order. So the results are those of the loop one line at a time,
/// and the error returned is the one it would have met first: the first run's with an error.
/// Memory: the buffer (two blocks at most) and the results. The output is sized once from the
/// file's size and the first block's lines, so it is neither copied as it grows nor touched
/// first by one thread alone (the kernel's first touch of a fresh page costs about 2 µs on the
/// VM of BENCHMARKS.md, as much as parsing a few hundred rating lines).
pub fn parse_lines_par<T: Send>(
    path: &std::path::Path,
    f: impl Fn(usize, &[u8]) -> crate::Result<Option<T>> + Sync,
) -> crate::Result<Vec<T>> {
    let file = std::fs::File::open(path).map_err(|e| crate::DataError::io(path, e))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let lim =
        ParLimits { most: max_lines(), block: PAR_BLOCK, threads: rayon::current_num_threads(), min_run: PAR_MIN_RUN };
    par_lines_in(file, path, size, lim, &f)
}

/// How [`par_lines_in`] splits its work: the line limit, the block size, the threads and the
/// smallest run (the tests use blocks and runs of a few bytes).
#[derive(Clone, Copy)]
struct ParLimits {
    most: usize,
    block: usize,
    threads: usize,
    min_run: usize,
}

/// [`parse_lines_par`] over any reader; `size`, when known, sizes the output.
fn par_lines_in<T: Send>(
    mut reader: impl std::io::Read,
    path: &std::path::Path,
    size: Option<u64>,
    lim: ParLimits,
    f: &(impl Fn(usize, &[u8]) -> crate::Result<Option<T>> + Sync),
) -> crate::Result<Vec<T>> {
    use rayon::prelude::*;
    use std::io::Read;
    let block = lim.block.max(1);
    let mut out: Vec<T> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(2 * block);
    // Lines before the block in `buf`, which starts with the unfinished line the last block left.
    let mut lines_before = 0usize;
    loop {
        let carried = buf.len();
        let got = (&mut reader).take(block as u64).read_to_end(&mut buf).map_err(|e| crate::DataError::io(path, e))?;
        let eof = got < block;
        let end = if eof {
            buf.len()
        } else {
            match memchr::memrchr(b'\n', &buf[carried..]) {
                Some(p) => carried + p + 1,
                None if buf.len() > MAX_LINE_BYTES => {
                    // One unfinished line, already longer than a line may be.
                    let line = lines_before + 1;
                    return Err(if line > lim.most {
                        too_many_lines(path, line, lim.most)
                    } else {
                        line_too_long(path, line)
                    });
                }
                None => continue,
            }
        };
        let text = &buf[..end];
        // Runs of whole lines, each cut just after the first newline at or after an equal share.
        let runs = lim.threads.clamp(1, (end / lim.min_run.max(1)).max(1));
        let mut cuts = vec![0usize];
        for k in 1..runs {
            let from = (end * k / runs).max(cuts[cuts.len() - 1]);
            match memchr::memchr(b'\n', &text[from..]) {
                Some(p) if from + p + 1 < end => cuts.push(from + p + 1),
                _ => break,
            }
        }
        cuts.push(end);
        let spans: Vec<&[u8]> = cuts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
        // Each run's lines: its newlines, and the file's last line if it has none.
        let counts: Vec<usize> = spans
            .par_iter()
            .map(|t| memchr::memchr_iter(b'\n', t).count() + usize::from(t.last().is_some_and(|&b| b != b'\n')))
            .collect();
        let in_block: usize = counts.iter().sum();
        if out.capacity() == 0 {
            // Sized once for the whole file at the first block's density (a tenth more);
            // `reserve` grows it if the rest of the file is denser.
            // At most the line limit; a reservation the allocator refuses falls back to the block.
            let whole = size.map_or(in_block as u64, |s| (in_block as u64).saturating_mul(s) / end.max(1) as u64);
            let want = usize::try_from(whole.saturating_add(whole / 10)).unwrap_or(usize::MAX).min(lim.most);
            let _ = out.try_reserve(want.max(in_block));
        }
        out.reserve(in_block);
        let start = out.len();
        let mut firsts = Vec::with_capacity(counts.len());
        let mut slots = Vec::with_capacity(counts.len());
        let mut spare = &mut out.spare_capacity_mut()[..in_block];
        let mut line = lines_before + 1;
        for &n in &counts {
            let (mine, rest) = spare.split_at_mut(n);
            firsts.push(line);
            slots.push(mine);
            spare = rest;
            line += n;
        }
        let results: Vec<(usize, Option<crate::DataError>)> = spans
            .into_par_iter()
            .zip(firsts)
            .zip(slots)
            .map(|((t, first), slots)| run_lines(t, first, path, lim.most, f, slots))
            .collect();
        // Close up the runs' stretches: run k's results move down to follow run k − 1's.
        let mut len = start;
        let mut from = start;
        let mut error = None;
        for ((written, err), n) in results.into_iter().zip(&counts) {
            // SAFETY: `from..from + written` are the slots run k wrote (its stretch starts at
            // `from`, inside the reserved capacity), `len ≤ from`, and `ptr::copy` allows the
            // overlap; the slots between `len + written` and `from + written` are left
            // uninitialized-by-contract (moved out), never read or dropped.
            unsafe {
                let p = out.as_mut_ptr();
                std::ptr::copy(p.add(from), p.add(len), written);
            }
            len += written;
            from += n;
            if error.is_none() {
                error = err;
            }
        }
        // SAFETY: `start..len` now hold the runs' results, each written once and moved once;
        // `len ≤ start + in_block ≤ capacity`.
        unsafe { out.set_len(len) };
        if let Some(e) = error {
            return Err(e);
        }
        lines_before = line - 1;
        if eof {
            return Ok(out);
        }
        buf.copy_within(end.., 0);
        buf.truncate(buf.len() - end);
    }
}

/// The lines of `text` (whole lines; only at the end of the file may the last one lack its
/// newline), numbered from `first`, their results written to `slots` (one per line at most):
/// how many were written before the first error, and that error.
fn run_lines<T>(
    text: &[u8],
    first: usize,
    path: &std::path::Path,
    most: usize,
    f: &impl Fn(usize, &[u8]) -> crate::Result<Option<T>>,
    slots: &mut [std::mem::MaybeUninit<T>],
) -> (usize, Option<crate::DataError>) {
    let mut written = 0;
    let mut line = first;
    let mut start = 0;
    while start < text.len() {
        let stop = memchr::memchr(b'\n', &text[start..]).map_or(text.len(), |p| start + p);
        let this = &text[start..stop];
        if line > most {
            return (written, Some(too_many_lines(path, line, most)));
        }
        if this.len() > MAX_LINE_BYTES {
            return (written, Some(line_too_long(path, line)));
        }
        match f(line, this.strip_suffix(b"\r").unwrap_or(this)) {
            Ok(Some(t)) => {
                slots[written].write(t);
                written += 1;
            }
            Ok(None) => {}
            Err(e) => return (written, Some(e)),
        }
        line += 1;
        start = stop + 1;
    }
    (written, None)
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

    /// The parallel reader gives the results and the first error of the loop one line at a
    /// time, for blocks and runs from a byte to a megabyte, 1 to 4 threads, line limits that
    /// stop it early, blank and `\r\n` lines, a last line without its newline, and lines that
    /// `f` refuses (the first in file order must be the one reported).
    #[test]
    fn parallel_lines_match_the_line_at_a_time_loop() {
        type Got = std::result::Result<Vec<(usize, Vec<u8>)>, String>;
        let path = std::path::Path::new("f.txt");
        let f = |line: usize, text: &[u8]| -> crate::Result<Option<(usize, Vec<u8>)>> {
            match text {
                b"" => Ok(None),
                t if t.starts_with(b"bad") => Err(crate::DataError::parse(path, line, "field", "refused")),
                t => Ok(Some((line, t.to_vec()))),
            }
        };
        let reference = |bytes: &[u8], most: usize| -> Got {
            let mut v = Vec::new();
            lines_in(bytes, path, most, |line, text| {
                if let Some(x) = f(line, text)? {
                    v.push(x);
                }
                Ok(())
            })
            .map(|_| v)
            .map_err(|e| e.to_string())
        };
        // A small deterministic generator (xorshift) of files of 0–60 lines.
        // A deterministic stream: SplitMix64 of a counter.
        let mut k = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            k = k.wrapping_add(1);
            ncf_core::rng::splitmix64(k) % n
        };
        let mut cases = 0;
        for case in 0..400 {
            let mut file = Vec::new();
            let lines = next(61);
            for l in 0..lines {
                match next(12) {
                    0 => {}
                    1 => file.extend_from_slice(b"\r"),
                    2 if case % 3 == 0 => file.extend_from_slice(format!("bad{l}").as_bytes()),
                    _ => file.extend_from_slice(format!("ok{l}-{}", "x".repeat(next(40) as usize)).as_bytes()),
                }
                if next(4) == 0 {
                    file.extend_from_slice(b"\r");
                }
                if l + 1 < lines || next(2) == 0 {
                    file.push(b'\n');
                }
            }
            for most in [usize::MAX, next(70) as usize + 1] {
                let want = reference(&file, most);
                for (block, threads, min_run) in
                    [(1, 2, 1), (2, 3, 1), (7, 4, 1), (64, 2, 16), (1 << 20, 3, 1), (1 << 20, 1, 1)]
                {
                    let lim = ParLimits { most, block, threads, min_run };
                    let got: Got =
                        par_lines_in(&file[..], path, Some(file.len() as u64), lim, &f).map_err(|e| e.to_string());
                    assert_eq!(
                        got,
                        want,
                        "case {case}, most {most}, block {block}, threads {threads}: {:?}",
                        String::from_utf8_lossy(&file)
                    );
                    cases += 1;
                }
            }
        }
        assert!(cases > 4000);
    }

    /// A line longer than [`MAX_LINE_BYTES`] is refused at its number by both readers, whether
    /// it fits one block or spans several (and whether the limit on lines comes first); one of
    /// exactly that length is read.
    #[test]
    fn parallel_lines_refuse_a_long_line_as_the_loop_does() {
        let path = std::path::Path::new("f.txt");
        let f = |_: usize, t: &[u8]| -> crate::Result<Option<usize>> { Ok(Some(t.len())) };
        let reference = |bytes: &[u8], most: usize| {
            let mut v = Vec::new();
            lines_in(bytes, path, most, |_, t| {
                v.push(t.len());
                Ok(())
            })
            .map(|_| v)
            .map_err(|e| e.to_string())
        };
        for (len, newline) in
            [(MAX_LINE_BYTES, true), (MAX_LINE_BYTES, false), (MAX_LINE_BYTES + 1, true), (MAX_LINE_BYTES + 1, false)]
        {
            let mut file = b"a\nbb\n".to_vec();
            file.extend(std::iter::repeat_n(b'y', len));
            if newline {
                file.extend_from_slice(b"\nc\n");
            }
            for most in [usize::MAX, 2] {
                let want = reference(&file, most);
                for block in [4096, 1 << 20, 3 << 20] {
                    let lim = ParLimits { most, block, threads: 2, min_run: 1 };
                    let got = par_lines_in(&file[..], path, None, lim, &f).map_err(|e| e.to_string());
                    assert_eq!(got, want, "line of {len} bytes, newline {newline}, most {most}, block {block}");
                }
            }
        }
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_u64(b"9999999999999999999"), Some(9_999_999_999_999_999_999));
        assert_eq!(parse_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_u64(b"18446744073709551616"), None);
        assert_eq!(parse_u64(b"0000000000000000000042"), Some(42));
        for text in ["5", "0042", "-0", " 5", "4.5", "9007199254740993", "18446744073709551615", "1e3"] {
            let want = text.trim().parse::<f64>().ok();
            assert_eq!(parse_f64(text.as_bytes()).map(f64::to_bits), want.map(f64::to_bits), "{text}");
        }
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
