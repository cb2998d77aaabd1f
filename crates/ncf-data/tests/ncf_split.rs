//! Malformed NCF split files: every error names the file, the line and the field.

use ncf_data::NcfSplit;
use std::path::Path;

fn write_split(dir: &Path, train: &str, test: &str, neg: &str) {
    std::fs::write(dir.join("toy.train.rating"), train).unwrap();
    std::fs::write(dir.join("toy.test.rating"), test).unwrap();
    std::fs::write(dir.join("toy.test.negative"), neg).unwrap();
}

const TRAIN: &str = "0\t1\t5\t100\n0\t2\t3\t90\n1\t0\t4\t80\n";
const TEST: &str = "0\t3\t4\t200\n1\t2\t5\t210\n";
const NEG: &str = "(0,3)\t0\t2\n(1,2)\t1\t3\n";

fn err(train: &str, test: &str, neg: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    write_split(d.path(), train, test, neg);
    NcfSplit::load(d.path()).unwrap_err().to_string()
}

#[test]
fn a_good_split_loads_and_drops_duplicates() {
    let d = tempfile::tempdir().unwrap();
    write_split(d.path(), &format!("{TRAIN}0\t1\t2\t50\r\n"), TEST, NEG);
    let s = NcfSplit::load(d.path()).unwrap();
    assert_eq!((s.n_users, s.n_items, s.train.len(), s.duplicates), (2, 4, 3, 1));
    assert_eq!(s.negatives, vec![vec![0, 2], vec![1, 3]]);
}

#[test]
fn malformed_lines_name_file_line_and_field() {
    let cases = [
        (err("0\t1\t5\t100\n0\tx\t3\t90\n", TEST, NEG), "toy.train.rating:2: field `item`"),
        (err("0\t1\t5\n", TEST, NEG), "toy.train.rating:1: field `timestamp`"),
        (err("0\t1\tfive\t100\n", TEST, NEG), "toy.train.rating:1: field `rating`"),
        (err("0\t1\t5\t100\t7\n", TEST, NEG), "toy.train.rating:1: field `timestamp`: extra fields"),
        (err(TRAIN, "0\t3\t4\t200\n-1\t2\t5\t210\n", NEG), "toy.test.rating:2: field `user`"),
        (err(TRAIN, TEST, "(0,3)\t0\t2\n(1,2)\t1\t9\n"), "toy.test.negative:2: field `negative`: unknown item 9"),
        (err(TRAIN, TEST, "(0,3)\t0\t2\n(1,1)\t1\t3\n"), "toy.test.negative:2: field `(user,item)`"),
        (err(TRAIN, TEST, "0,3\t0\t2\n(1,2)\t1\t3\n"), "toy.test.negative:1: field `(user,item)`"),
        (err(TRAIN, TEST, "(0,3)\t0\tz\n"), "toy.test.negative:1: field `negative`"),
        (err("", TEST, NEG), "toy.train.rating: file is empty"),
        (err(TRAIN, TEST, "(0,3)\t0\t2\n"), "toy.test.negative: 1 lines"),
    ];
    for (msg, want) in cases {
        assert!(msg.contains(want), "`{msg}` should contain `{want}`");
    }
}

#[test]
fn missing_files_are_named() {
    let d = tempfile::tempdir().unwrap();
    let msg = NcfSplit::load(d.path()).unwrap_err().to_string();
    assert!(msg.contains("no NAME.train.rating file here"), "{msg}");
    std::fs::write(d.path().join("x.train.rating"), TRAIN).unwrap();
    let msg = NcfSplit::load(d.path()).unwrap_err().to_string();
    assert!(msg.contains("x.test.rating and x.test.negative are missing"), "{msg}");
    let msg = NcfSplit::load(&d.path().join("nope")).unwrap_err().to_string();
    assert!(msg.contains("nope"), "{msg}");
}

/// A split folder lacking one of its three files names that file, and the folder.
fn one_file_missing(file: &str) {
    let d = tempfile::tempdir().unwrap();
    write_split(d.path(), TRAIN, TEST, NEG);
    std::fs::remove_file(d.path().join(file)).unwrap();
    let msg = NcfSplit::load(d.path()).unwrap_err().to_string();
    let want = format!("{}: {file} is missing", d.path().display());
    assert!(msg.contains(&want), "`{msg}` should contain `{want}`");
}

#[test]
fn a_missing_train_rating_is_named() {
    one_file_missing("toy.train.rating");
}

#[test]
fn a_missing_test_rating_is_named() {
    one_file_missing("toy.test.rating");
}

#[test]
fn a_missing_test_negative_is_named() {
    one_file_missing("toy.test.negative");
}

/// An id that would make a table far larger than the data (ids are row numbers) is refused
/// before any table is allocated, naming the file, the line, the id and the limit; the same
/// id is accepted when the split is big enough to be dense.
#[test]
fn a_sparse_id_that_would_allocate_a_huge_table_is_refused() {
    let e = err(TRAIN, "0\t3\t4\t200\n1\t2147483647\t5\t210\n", NEG);
    let head = e.split(" exceeds").next().unwrap();
    assert!(
        head.ends_with(
            "/toy.test.rating:2: item id 2147483647, a table of 2147483648 rows for 5 training and test lines,"
        ),
        "{e}"
    );
    assert!(e.contains("the limit of 1048576 rows or 2 per line (MAX_SPARSE_ROWS)"), "{e}");
    let e = err("0\t1\t5\t100\n2000000\t2\t3\t90\n", TEST, NEG);
    assert!(e.contains("/toy.train.rating:2: user id 2000000, a table of 2000001 rows"), "{e}");
    // Up to MAX_SPARSE_ROWS rows, any id is fine: user 1048575 is the last row allowed.
    let d = tempfile::tempdir().unwrap();
    write_split(d.path(), &format!("{TRAIN}1048575\t1\t5\t100\n"), TEST, NEG);
    assert_eq!(NcfSplit::load(d.path()).unwrap().n_users, 1 << 20);
}

/// A 10 GB line is refused at the line-length limit, never read whole: a file of one line of
/// 2 MiB without a newline stands in for it.
#[test]
fn a_huge_line_is_refused_at_the_line_limit() {
    let long = "1".repeat(2 << 20);
    let e = err(&format!("0\t1\t5\t100\n{long}"), TEST, NEG);
    assert!(
        e.ends_with("/toy.train.rating:2: line length exceeds the limit of 1048576 bytes per line (MAX_LINE_BYTES)"),
        "{e}"
    );
    let e = err(TRAIN, TEST, &format!("(0,3)\t{long}\n"));
    assert!(e.contains("/toy.test.negative:1: line length exceeds the limit"), "{e}");
}
