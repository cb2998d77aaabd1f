//! MovieLens files as GroupLens ships them, streamed line by line:
//!
//! | file | format | encoding |
//! |---|---|---|
//! | ML-1M `ratings.dat` | `UserID::MovieID::Rating::Timestamp` | ASCII |
//! | ML-1M `movies.dat` | `MovieID::Title (Year)::Genre1\|Genre2` | **Latin-1** |
//! | ML-1M `users.dat` | `UserID::Gender::Age::Occupation::Zip-code` | ASCII |
//! | ML-100K `u.data` | `user\titem\trating\ttimestamp` | ASCII |
//! | ml-latest `ratings.csv` | header `userId,movieId,rating,timestamp`, then values | UTF-8 |
//!
//! Every malformed line is an error naming the file, the 1-based line and the field. Blank
//! lines are skipped; a file with no records is an error.

use crate::error::{DataError, Result};
use crate::parse::{for_each_line, for_each_line_in, latin1, parse_f64, parse_i64, parse_u64, show, split_on};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// One rating line, with the dataset's own ids.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RawRating {
    pub user: u64,
    pub item: u64,
    pub rating: f32,
    pub timestamp: i64,
}

/// How a ratings file is laid out, chosen from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RatingsFormat {
    /// `::`-separated (`ratings.dat`).
    Dat,
    /// Tab-separated (`u.data`, `*.tsv`).
    Tab,
    /// Comma-separated with a header naming the columns (`ratings.csv`).
    Csv,
}

impl RatingsFormat {
    pub fn of(path: &Path) -> Result<Self> {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        match name.rsplit('.').next() {
            Some("dat") => Ok(RatingsFormat::Dat),
            Some("data" | "tsv") => Ok(RatingsFormat::Tab),
            Some("csv") => Ok(RatingsFormat::Csv),
            _ => Err(DataError::invalid(
                path,
                "unknown ratings format: expected a .dat (ML-1M ::), .data/.tsv (ML-100K tab) or .csv (with header) file",
            )),
        }
    }
}

fn id_field(path: &Path, line: usize, field: &'static str, f: &[u8]) -> Result<u64> {
    parse_u64(f.trim_ascii())
        .ok_or_else(|| DataError::parse(path, line, field, format!("`{}` is not a non-negative integer id", show(f))))
}

fn unquote(f: &[u8]) -> &[u8] {
    let f = f.trim_ascii();
    f.strip_prefix(b"\"").and_then(|g| g.strip_suffix(b"\"")).unwrap_or(f)
}

/// Column positions of a ratings CSV, found by header name.
struct CsvColumns {
    user: usize,
    item: usize,
    rating: usize,
    timestamp: usize,
    count: usize,
}

impl CsvColumns {
    fn from_header(path: &Path, header: &[u8]) -> Result<Self> {
        let names: Vec<String> =
            header.split(|&b| b == b',').map(|f| String::from_utf8_lossy(unquote(f)).to_ascii_lowercase()).collect();
        let find = |field: &'static str, accepted: &[&str]| {
            names.iter().position(|n| accepted.contains(&n.as_str())).filter(|&k| k < MAX_FIELDS).ok_or_else(|| {
                DataError::parse(
                    path,
                    1,
                    field,
                    format!("the header has no `{}` column (found: {})", accepted[0], names.join(", ")),
                )
            })
        };
        Ok(CsvColumns {
            user: find("userId", &["userid", "user_id", "user"])?,
            item: find("movieId", &["movieid", "movie_id", "itemid", "item_id", "item"])?,
            rating: find("rating", &["rating"])?,
            timestamp: find("timestamp", &["timestamp"])?,
            count: names.len(),
        })
    }
}

/// Most fields a ratings line may have (a CSV may carry extra columns).
const MAX_FIELDS: usize = 16;

/// Stores up to `MAX_FIELDS` fields in `out` without allocating; returns how many there were.
fn fill<'a>(it: impl Iterator<Item = &'a [u8]>, out: &mut [&'a [u8]; MAX_FIELDS]) -> usize {
    let mut n = 0;
    for f in it {
        if n < MAX_FIELDS {
            out[n] = f;
        }
        n += 1;
    }
    n
}

/// Reads every rating of a `.dat`, `.data`/`.tsv` or `.csv` ratings file (see the module
/// table), in file order.
pub fn load_ratings(path: &Path) -> Result<Vec<RawRating>> {
    let format = RatingsFormat::of(path)?;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    load_ratings_from(std::io::BufReader::with_capacity(1 << 20, file), path, format)
}

/// [`load_ratings`] for explicit ratings: a rating outside `range` (inclusive) is an error
/// naming the file, its line and the field.
pub fn load_ratings_in_range(path: &Path, range: (f32, f32)) -> Result<Vec<RawRating>> {
    let format = RatingsFormat::of(path)?;
    let file = std::fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    read_ratings(std::io::BufReader::with_capacity(1 << 20, file), path, format, Some(range))
}

/// [`load_ratings`] from any reader (e.g. bytes embedded in the binary); `path` names the
/// source in error messages.
pub fn load_ratings_from(reader: impl std::io::BufRead, path: &Path, format: RatingsFormat) -> Result<Vec<RawRating>> {
    read_ratings(reader, path, format, None)
}

fn read_ratings(
    reader: impl std::io::BufRead,
    path: &Path,
    format: RatingsFormat,
    range: Option<(f32, f32)>,
) -> Result<Vec<RawRating>> {
    let mut out = Vec::new();
    let mut csv: Option<CsvColumns> = None;
    let (expect, names): (&str, [&'static str; 4]) = match format {
        RatingsFormat::Dat => ("UserID::MovieID::Rating::Timestamp", ["UserID", "MovieID", "Rating", "Timestamp"]),
        RatingsFormat::Tab => ("user\\titem\\trating\\ttimestamp", ["user", "item", "rating", "timestamp"]),
        RatingsFormat::Csv => ("", ["userId", "movieId", "rating", "timestamp"]),
    };
    for_each_line_in(reader, path, |line, text| {
        if text.trim_ascii().is_empty() {
            return Ok(());
        }
        let mut fields: [&[u8]; MAX_FIELDS] = [&[]; MAX_FIELDS];
        let [fu, fi, fr, ft] = match format {
            RatingsFormat::Dat | RatingsFormat::Tab => {
                let n = match format {
                    RatingsFormat::Dat => fill(split_on(text, b"::"), &mut fields),
                    _ => fill(text.split(|&b| b == b'\t'), &mut fields),
                };
                if n != 4 {
                    let field = names[n.min(3)];
                    return Err(DataError::parse(
                        path,
                        line,
                        field,
                        format!("expected 4 fields ({expect}), found {n}"),
                    ));
                }
                [fields[0], fields[1], fields[2], fields[3]]
            }
            RatingsFormat::Csv => {
                let Some(cols) = &csv else {
                    csv = Some(CsvColumns::from_header(path, text)?);
                    return Ok(());
                };
                let n = fill(text.split(|&b| b == b','), &mut fields);
                if n != cols.count {
                    return Err(DataError::parse(
                        path,
                        line,
                        names[0],
                        format!("expected {} comma-separated fields like the header, found {n}", cols.count),
                    ));
                }
                [fields[cols.user], fields[cols.item], fields[cols.rating], fields[cols.timestamp]].map(unquote)
            }
        };
        let user = id_field(path, line, names[0], fu)?;
        let item = id_field(path, line, names[1], fi)?;
        let rating = parse_f64(fr)
            .ok_or_else(|| DataError::parse(path, line, names[2], format!("`{}` is not a number", show(fr))))?;
        let timestamp = parse_i64(ft.trim_ascii())
            .ok_or_else(|| DataError::parse(path, line, names[3], format!("`{}` is not an integer", show(ft))))?;
        let rating = rating as f32;
        if let Some((lo, hi)) = range.filter(|r| !(r.0..=r.1).contains(&rating)) {
            return Err(DataError::parse(
                path,
                line,
                names[2],
                format!("{rating} is outside the declared range {lo}..={hi}"),
            ));
        }
        out.push(RawRating { user, item, rating, timestamp });
        Ok(())
    })?;
    if out.is_empty() {
        return Err(DataError::invalid(path, "no ratings in this file"));
    }
    Ok(out)
}

/// One line of `movies.dat`.
#[derive(Clone, Debug, PartialEq)]
pub struct Movie {
    pub id: u64,
    /// The title as written, year included (`Toy Story (1995)`), decoded from Latin-1.
    pub title: String,
    /// The year in the title's trailing `(YYYY)`, when there is one.
    pub year: Option<u16>,
    pub genres: Vec<String>,
}

fn title_year(title: &str) -> Option<u16> {
    let t = title.trim_end();
    let inner = t.strip_suffix(')')?;
    let open = inner.rfind('(')?;
    inner[open + 1..].parse().ok()
}

/// Reads `movies.dat` (`MovieID::Title::Genres`, Latin-1). A MovieID listed twice is an error.
pub fn load_movies(path: &Path) -> Result<Vec<Movie>> {
    load_dat_records(path, &["MovieID", "Title", "Genres"], "movie", |line, id, f| {
        let title = latin1(f[1]);
        let genres =
            if f[2].is_empty() { Vec::new() } else { f[2].split(|&b| b == b'|').map(latin1).collect::<Vec<_>>() };
        check_genres(path, line, &genres)?;
        Ok(Movie { id, year: title_year(&title), title, genres })
    })
}

/// Every genre any MovieLens release uses: ML-1M's 18, ML-100K's `unknown`, ml-latest's
/// `Children` (ML-1M's `Children's`) and `IMAX`. Another name is a file error.
pub const KNOWN_GENRES: [&str; 21] = [
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
    "unknown",
    "IMAX",
    "Children",
];

/// Rejects a genre not in [`KNOWN_GENRES`], naming the file, line and field.
fn check_genres(path: &Path, line: usize, genres: &[String]) -> Result<()> {
    match genres.iter().find(|g| !KNOWN_GENRES.contains(&g.as_str())) {
        None => Ok(()),
        Some(g) => Err(DataError::parse(
            path,
            line,
            "Genres",
            format!("unknown genre `{g}` (MovieLens genres: {})", KNOWN_GENRES.join(", ")),
        )),
    }
}

/// Reads a `::`-separated file whose records are `ID::…` with exactly `names.len()` fields,
/// each ID at most once; `record(line, id, fields)` builds one record.
fn load_dat_records<R>(
    path: &Path,
    names: &[&'static str],
    what: &str,
    mut record: impl FnMut(usize, u64, &[&[u8]]) -> Result<R>,
) -> Result<Vec<R>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for_each_line(path, |line, text| {
        if text.trim_ascii().is_empty() {
            return Ok(());
        }
        let f: Vec<&[u8]> = split_on(text, b"::").collect();
        if f.len() != names.len() {
            return Err(DataError::parse(
                path,
                line,
                names[f.len().min(names.len() - 1)],
                format!("expected {} fields ({}), found {}", names.len(), names.join("::"), f.len()),
            ));
        }
        let id = id_field(path, line, names[0], f[0])?;
        if !seen.insert(id) {
            return Err(DataError::parse(path, line, names[0], format!("{what} {id} is listed twice")));
        }
        out.push(record(line, id, &f)?);
        Ok(())
    })?;
    if out.is_empty() {
        return Err(DataError::invalid(path, format!("no {what}s in this file")));
    }
    Ok(out)
}

/// One line of `users.dat`.
#[derive(Clone, Debug, PartialEq)]
pub struct User {
    pub id: u64,
    /// `'M'` or `'F'`.
    pub gender: char,
    /// ML-1M's age bracket code: 1 (under 18), 18, 25, 35, 45, 50, 56 (56+).
    pub age: u8,
    /// ML-1M's occupation code, 0..=20.
    pub occupation: u8,
    pub zip: String,
}

/// The age bracket codes of ML-1M's `users.dat`.
pub const AGE_BRACKETS: [u8; 7] = [1, 18, 25, 35, 45, 50, 56];

/// ML-100K's occupations (its `u.occupation`), in order: `u.user`'s occupation is stored as
/// its index here, 0..=20 (ML-1M's codes, 0..=20, name other jobs; both are one-hot features).
pub const ML100K_OCCUPATIONS: [&str; 21] = [
    "administrator",
    "artist",
    "doctor",
    "educator",
    "engineer",
    "entertainment",
    "executive",
    "healthcare",
    "homemaker",
    "lawyer",
    "librarian",
    "marketing",
    "none",
    "other",
    "programmer",
    "retired",
    "salesman",
    "scientist",
    "student",
    "technician",
    "writer",
];

/// An age in years as ML-1M's bracket code ([`AGE_BRACKETS`]).
pub fn age_bracket(years: u64) -> u8 {
    match years {
        0..18 => 1,
        18..25 => 18,
        25..35 => 25,
        35..45 => 35,
        45..50 => 45,
        50..56 => 50,
        _ => 56,
    }
}

/// Reads the users of ML-1M's `users.dat` (`UserID::Gender::Age::Occupation::Zip-code`) or
/// ML-100K's `u.user` (`id|age|gender|occupation|zip`, the age in years, stored as its ML-1M
/// bracket; the occupation by name, stored as its index in [`ML100K_OCCUPATIONS`]), by file
/// name. A user listed twice, a gender other than M/F, an unknown occupation or age, or a wrong
/// field count is an error naming the file, line and field.
pub fn load_users(path: &Path) -> Result<Vec<User>> {
    if path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.ends_with(".user")) {
        return load_u_user(path);
    }
    let names = ["UserID", "Gender", "Age", "Occupation", "Zip-code"];
    load_dat_records(path, &names, "user", |line, id, f| {
        let gender = gender(path, line, "Gender", f[1])?;
        let age = parse_u64(f[2]).and_then(|a| u8::try_from(a).ok()).filter(|a| AGE_BRACKETS.contains(a)).ok_or_else(
            || DataError::parse(path, line, "Age", format!("`{}` is not one of {AGE_BRACKETS:?}", show(f[2]))),
        )?;
        let occupation = parse_u64(f[3]).filter(|&o| o <= 20).ok_or_else(|| {
            DataError::parse(path, line, "Occupation", format!("`{}` is not an occupation code 0..=20", show(f[3])))
        })? as u8;
        Ok(User { id, gender, age, occupation, zip: latin1(f[4]) })
    })
}

/// `M` or `F`, else an error naming the file, line and field.
fn gender(path: &Path, line: usize, field: &'static str, f: &[u8]) -> Result<char> {
    match f {
        b"M" => Ok('M'),
        b"F" => Ok('F'),
        g => Err(DataError::parse(path, line, field, format!("`{}` is not M or F", show(g)))),
    }
}

fn load_u_user(path: &Path) -> Result<Vec<User>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for_each_line(path, |line, text| {
        if text.trim_ascii().is_empty() {
            return Ok(());
        }
        let f: Vec<&[u8]> = text.split(|&b| b == b'|').collect();
        if f.len() != 5 {
            return Err(DataError::parse(
                path,
                line,
                "line",
                format!("expected 5 fields (id|age|gender|occupation|zip), found {}", f.len()),
            ));
        }
        let id = id_field(path, line, "user id", f[0])?;
        if !seen.insert(id) {
            return Err(DataError::parse(path, line, "user id", format!("user {id} is listed twice")));
        }
        let age = parse_u64(f[1])
            .filter(|&a| a <= 150)
            .ok_or_else(|| DataError::parse(path, line, "age", format!("`{}` is not an age in years", show(f[1]))))?;
        let gender = gender(path, line, "gender", f[2])?;
        let occupation = ML100K_OCCUPATIONS.iter().position(|o| o.as_bytes() == f[3]).ok_or_else(|| {
            DataError::parse(
                path,
                line,
                "occupation",
                format!("`{}` is not one of ML-100K's occupations ({})", show(f[3]), ML100K_OCCUPATIONS.join(", ")),
            )
        })? as u8;
        out.push(User { id, gender, age: age_bracket(age), occupation, zip: latin1(f[4]) });
        Ok(())
    })?;
    if out.is_empty() {
        return Err(DataError::invalid(path, "no users in this file"));
    }
    Ok(out)
}

/// The files of a MovieLens folder: one ratings file (the first of `ratings.dat`, `u.data`,
/// `ratings.csv` present), and its movies (`movies.dat`, `u.item` or `movies.csv`) and users
/// (`users.dat` or `u.user`) files when they exist.
#[derive(Clone, Debug)]
pub struct MovieLensFiles {
    pub ratings: PathBuf,
    pub movies: Option<PathBuf>,
    pub users: Option<PathBuf>,
}

impl MovieLensFiles {
    pub fn find(dir: &Path) -> Result<Self> {
        let ratings = ["ratings.dat", "u.data", "ratings.csv"].iter().map(|n| dir.join(n)).find(|p| p.is_file());
        let Some(ratings) = ratings else {
            return Err(DataError::invalid(dir, "no MovieLens ratings file here (ratings.dat, u.data or ratings.csv)"));
        };
        let mut f = Self::find_meta(dir)?;
        f.ratings = ratings;
        Ok(f)
    }

    /// The metadata files of a folder that may hold no ratings file (`ratings` is then the
    /// folder itself): movies and users, each `None` when absent.
    pub fn find_meta(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(DataError::invalid(dir, "not a folder"));
        }
        let ratings = dir.to_path_buf();
        let opt = |names: &[&str]| names.iter().map(|n| dir.join(n)).find(|p| p.is_file());
        Ok(MovieLensFiles {
            ratings,
            movies: opt(&["movies.dat", "u.item", "movies.csv"]),
            users: opt(&["users.dat", "u.user"]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, body: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, body).unwrap();
        p
    }

    #[test]
    fn unknown_genres_and_malformed_users_name_the_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let err = |r: Result<Vec<Movie>>| r.unwrap_err().to_string();
        let m = write(d.path(), "movies.dat", b"1::A (1995)::Comedy\n2::B (1996)::Comedy|Space Opera\n");
        let e = err(load_movies(&m));
        assert!(e.contains("movies.dat:2:") && e.contains("unknown genre `Space Opera`"), "{e}");
        let csv = write(d.path(), "movies.csv", b"movieId,title,genres\n1,A (1995),Comedy|Cyberpunk\n");
        let e = err(load_item_meta(&csv));
        assert!(e.contains("movies.csv:2:") && e.contains("unknown genre `Cyberpunk`"), "{e}");
        let flags = "|0".repeat(18);
        let item = write(d.path(), "u.item", format!("1|A (1995)|01-Jan-1995||url|2{flags}\n").as_bytes());
        let e = err(load_item_meta(&item));
        assert!(e.contains("u.item:1:") && e.contains("the `unknown` flag is `2`"), "{e}");

        let uerr = |body: &[u8], name: &str| load_users(&write(d.path(), name, body)).unwrap_err().to_string();
        let e = uerr(b"1::M::25::3::12345\n2::X::25::3::12345\n", "users.dat");
        assert!(e.contains("users.dat:2: field `Gender`"), "{e}");
        let e = uerr(b"1::M::25::3\n", "users.dat");
        assert!(e.contains("users.dat:1:") && e.contains("expected 5 fields"), "{e}");
        let e = uerr(b"1::M::26::3::1\n", "users.dat");
        assert!(e.contains("field `Age`") && e.contains("`26`"), "{e}");
        let e = uerr(b"1|24|M|technician|85711\n2|53|F|astronaut|94043\n", "u.user");
        assert!(e.contains("u.user:2: field `occupation`") && e.contains("`astronaut` is not one of"), "{e}");
        let e = uerr(b"1|old|M|technician|85711\n", "u.user");
        assert!(e.contains("u.user:1: field `age`"), "{e}");
        let ok = load_users(&write(d.path(), "u.user", b"1|24|M|technician|85711\n2|53|F|other|94043\n")).unwrap();
        assert_eq!((ok[0].age, ok[0].occupation, ok[1].age, ok[1].gender), (18, 19, 50, 'F'));
    }

    #[test]
    fn the_three_ratings_formats_read_the_same_ratings() {
        let d = tempfile::tempdir().unwrap();
        let want = vec![
            RawRating { user: 1, item: 1193, rating: 5.0, timestamp: 978300760 },
            RawRating { user: 2, item: 661, rating: 3.5, timestamp: 978302109 },
        ];
        let dat = write(d.path(), "ratings.dat", b"1::1193::5::978300760\r\n\n2::661::3.5::978302109");
        let tab = write(d.path(), "u.data", b"1\t1193\t5\t978300760\n2\t661\t3.5\t978302109\n");
        let csv = write(
            d.path(),
            "ratings.csv",
            b"timestamp,userId,movieId,rating\n978300760,1,1193,5.0\n978302109,2,661,3.5\n",
        );
        for p in [dat, tab, csv] {
            assert_eq!(load_ratings(&p).unwrap(), want, "{}", p.display());
        }
    }

    #[test]
    fn movies_are_latin1_with_year_and_genres() {
        let d = tempfile::tempdir().unwrap();
        let p =
            write(d.path(), "movies.dat", b"1::Toy Story (1995)::Animation|Children's|Comedy\n2::Am\xe9lie (2001)::\n");
        let m = load_movies(&p).unwrap();
        assert_eq!(m[0].year, Some(1995));
        assert_eq!(m[0].genres, vec!["Animation", "Children's", "Comedy"]);
        assert_eq!(m[1].title, "Am\u{e9}lie (2001)");
        assert!(m[1].genres.is_empty());
    }

    #[test]
    fn users_parse_and_validate_codes() {
        let d = tempfile::tempdir().unwrap();
        let p = write(d.path(), "users.dat", b"1::F::1::10::48067\n2::M::56::16::70072\n");
        let u = load_users(&p).unwrap();
        assert_eq!(u[1], User { id: 2, gender: 'M', age: 56, occupation: 16, zip: "70072".into() });
    }

    /// Every malformed case names the file, the line and the field.
    #[test]
    fn malformed_lines_name_file_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let cases: &[(&str, &[u8], &str)] = &[
            ("ratings.dat", b"1::2::3::4\n1::x::3::4\n", "ratings.dat:2: field `MovieID`"),
            ("ratings.dat", b"1::2::3\n", "ratings.dat:1: field `Timestamp`: expected 4 fields"),
            ("ratings.dat", b"1::2::3::4::5\n", "ratings.dat:1: field `Timestamp`: expected 4 fields"),
            ("ratings.dat", b"1::2::five::4\n", "ratings.dat:1: field `Rating`"),
            ("ratings.dat", b"-1::2::5::4\n", "ratings.dat:1: field `UserID`"),
            ("ratings.dat", b"1::2::5::yesterday\n", "ratings.dat:1: field `Timestamp`"),
            ("ratings.dat", b"", "ratings.dat: no ratings"),
            ("ratings.dat", b"\n\n", "ratings.dat: no ratings"),
            ("u.data", b"1\t2\t3\t4\n5\t6\n", "u.data:2: field `rating`: expected 4 fields"),
            ("u.data", b"1\t2\t3\t4\n5\t6\t7\t8.5\n", "u.data:2: field `timestamp`"),
            ("ratings.csv", b"userId,rating,timestamp\n", "ratings.csv:1: field `movieId`: the header has no"),
            ("ratings.csv", b"userId,movieId,rating,timestamp\n1,2,3\n", "ratings.csv:2: field `userId`: expected 4"),
            ("ratings.csv", b"userId,movieId,rating,timestamp\n1,2,3,4\n1,b,3,4\n", "ratings.csv:3: field `movieId`"),
            ("ratings.csv", b"userId,movieId,rating,timestamp\n", "ratings.csv: no ratings"),
            ("movies.dat", b"1::A (1990)::Drama\n2::B (1991)\n", "movies.dat:2: field `Genres`: expected 3"),
            (
                "movies.dat",
                b"1::A (1990)::Drama\n1::B (1991)::Drama\n",
                "movies.dat:2: field `MovieID`: movie 1 is listed twice",
            ),
            ("movies.dat", b"x::A (1990)::Drama\n", "movies.dat:1: field `MovieID`"),
            ("movies.dat", b"", "movies.dat: no movies"),
            ("users.dat", b"1::F::1::10::48067\n2::X::1::10::1\n", "users.dat:2: field `Gender`"),
            ("users.dat", b"1::F::17::10::48067\n", "users.dat:1: field `Age`"),
            ("users.dat", b"1::F::18::21::48067\n", "users.dat:1: field `Occupation`"),
            ("users.dat", b"1::F::18::2\n", "users.dat:1: field `Zip-code`: expected 5"),
            ("users.dat", b"1::F::18::2::1\n1::F::18::2::1\n", "users.dat:2: field `UserID`: user 1 is listed twice"),
        ];
        for &(name, body, want) in cases {
            let p = write(d.path(), name, body);
            let e = match name {
                "movies.dat" => load_movies(&p).map(|_| ()),
                "users.dat" => load_users(&p).map(|_| ()),
                _ => load_ratings(&p).map(|_| ()),
            }
            .expect_err(want)
            .to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
            assert!(e.contains(&d.path().display().to_string()), "{e:?} should name the full path");
        }
        let missing = load_ratings(&d.path().join("nope.dat")).unwrap_err().to_string();
        assert!(missing.contains("nope.dat"), "{missing}");
        let unknown = load_ratings(&write(d.path(), "r.xlsx", b"1")).unwrap_err().to_string();
        assert!(unknown.contains("unknown ratings format"), "{unknown}");
    }
}

/// The 19 genres of ML-100K's `u.item` flags, in column order (its `u.genre`).
pub const ML100K_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// Reads the movies of any MovieLens release, by file name: `movies.dat` (ML-1M,
/// `MovieID::Title::Genres`), `u.item` (ML-100K, `id|title|date|video date|url|19 genre
/// flags`, Latin-1) or `movies.csv` (ml-latest, `movieId,title,genres` with quoted titles).
pub fn load_item_meta(path: &Path) -> Result<Vec<Movie>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    if name.ends_with(".dat") {
        return load_movies(path);
    }
    let csv = name.ends_with(".csv");
    if !csv && !name.ends_with(".item") {
        return Err(DataError::invalid(path, "not movies.dat, u.item or movies.csv"));
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for_each_line(path, |line, text| {
        if text.trim_ascii().is_empty() || (csv && line == 1 && text.starts_with(b"movieId")) {
            return Ok(());
        }
        let fields: Vec<Vec<u8>> =
            if csv { csv_fields(text) } else { text.split(|&b| b == b'|').map(<[u8]>::to_vec).collect() };
        let want = if csv { 3 } else { 5 + ML100K_GENRES.len() };
        if fields.len() != want {
            let what = if csv { "movieId,title,genres" } else { "id|title|date|video date|url|19 genre flags" };
            return Err(DataError::parse(
                path,
                line,
                "line",
                format!("expected {want} fields ({what}), found {}", fields.len()),
            ));
        }
        let id = id_field(path, line, "movie id", &fields[0])?;
        if !seen.insert(id) {
            return Err(DataError::parse(path, line, "movie id", format!("movie {id} is listed twice")));
        }
        let title = if csv { String::from_utf8_lossy(&fields[1]).into_owned() } else { latin1(&fields[1]) };
        let genres = if csv {
            let g = String::from_utf8_lossy(&fields[2]).into_owned();
            if g == "(no genres listed)" { Vec::new() } else { g.split('|').map(str::to_string).collect() }
        } else {
            if let Some((g, f)) =
                ML100K_GENRES.iter().zip(&fields[5..]).find(|(_, f)| !matches!(f.as_slice(), b"0" | b"1"))
            {
                return Err(DataError::parse(
                    path,
                    line,
                    "genre flag",
                    format!("the `{g}` flag is `{}`, not 0 or 1", show(f)),
                ));
            }
            ML100K_GENRES
                .iter()
                .zip(&fields[5..])
                .filter(|(_, f)| f.as_slice() == b"1")
                .map(|(g, _)| g.to_string())
                .collect()
        };
        check_genres(path, line, &genres)?;
        out.push(Movie { id, year: title_year(&title), title, genres });
        Ok(())
    })?;
    if out.is_empty() {
        return Err(DataError::invalid(path, "no movies in this file"));
    }
    Ok(out)
}

/// The fields of one CSV line: commas separate, double quotes enclose fields with commas, and
/// a doubled quote inside stands for one.
fn csv_fields(line: &[u8]) -> Vec<Vec<u8>> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let (mut out, mut cur, mut quoted, mut k) = (Vec::new(), Vec::new(), false, 0);
    while k < line.len() {
        let c = line[k];
        match (c, quoted) {
            (b'"', true) if line.get(k + 1) == Some(&b'"') => {
                cur.push(b'"');
                k += 1;
            }
            (b'"', _) => quoted = !quoted,
            (b',', false) => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
        k += 1;
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod item_meta_tests {
    use super::*;

    /// The three formats give the same kind of record: id, title with year, genres.
    #[test]
    fn movies_dat_u_item_and_movies_csv_are_read() {
        let d = tempfile::tempdir().unwrap();
        let dat = d.path().join("movies.dat");
        std::fs::write(&dat, "1::Toy Story (1995)::Animation|Children's|Comedy\n").unwrap();
        let item = d.path().join("u.item");
        let flags = "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0";
        std::fs::write(&item, format!("1|Toy Story (1995)|01-Jan-1995||http://x|{flags}\n")).unwrap();
        let csv = d.path().join("movies.csv");
        std::fs::write(
            &csv,
            "movieId,title,genres\n1,Toy Story (1995),Animation|Children|Comedy\n11,\"American President, The (1995)\",Comedy\n",
        )
        .unwrap();
        let (a, b, c) = (load_item_meta(&dat).unwrap(), load_item_meta(&item).unwrap(), load_item_meta(&csv).unwrap());
        assert_eq!((a[0].id, a[0].title.as_str(), a[0].year), (1, "Toy Story (1995)", Some(1995)));
        assert_eq!(b[0].genres, ["Animation", "Children's", "Comedy"]);
        assert_eq!((c[1].id, c[1].title.as_str(), c[1].year), (11, "American President, The (1995)", Some(1995)));
        std::fs::write(&csv, "movieId,title,genres\n1,Toy Story (1995)\n").unwrap();
        let e = load_item_meta(&csv).unwrap_err().to_string();
        assert!(e.contains("movies.csv:2") && e.contains("expected 3 fields"), "{e}");
    }
}
