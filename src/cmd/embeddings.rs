//! `ncf embeddings`: a trained model's user and item embedding tables, with their raw ids, as
//! CSV and as `.npy` files that `numpy.load` reads.

use anyhow::{Result, bail};
use ncf::{Recommender, Side};
use ncf_data::write_atomic;
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EmbeddingsArgs {
    /// A checkpoint written by `ncf train --save`.
    #[arg(long)]
    model: PathBuf,
    /// Folder to write into (created if missing). For each embedding table NAME (e.g.
    /// `gmf_item_embedding`): NAME.csv (`raw_id,e0,e1,…`, a header line first), NAME.npy
    /// (float32, rows × width) and NAME.ids.npy (uint64 raw ids, one per row).
    #[arg(long)]
    out: PathBuf,
    /// Overwrite existing files.
    #[arg(long)]
    force: bool,
}

/// A `.npy` file (format 1.0): magic, header dict padded to a multiple of 64 bytes, data.
pub fn npy(descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims = match shape {
        [n] => format!("({n},)"),
        _ => format!("({})", shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")),
    };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {dims}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat(total.next_multiple_of(64) - total));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

pub fn run(a: EmbeddingsArgs) -> Result<bool> {
    let rec = Recommender::open(&a.model)?;
    std::fs::create_dir_all(&a.out)?;
    let mut written = Vec::new();
    for t in rec.embedding_tables() {
        let ids = match t.side {
            Side::Users => rec.users(),
            Side::Items => rec.items(),
        };
        let (rows, width) = (t.rows, t.width);
        if rows != ids.len() || t.data.len() != rows * width {
            bail!("{}: `{}` has {} values, not {} rows", a.model.display(), t.name, t.data.len(), ids.len());
        }
        let raw = |r: usize| ids[r];
        let mut csv = String::from("raw_id");
        (0..width).for_each(|c| write!(csv, ",e{c}").unwrap_or_default());
        csv.push('\n');
        for r in 0..rows {
            write!(csv, "{}", raw(r)).unwrap_or_default();
            for &x in &t.data[r * width..(r + 1) * width] {
                write!(csv, ",{x}").unwrap_or_default();
            }
            csv.push('\n');
        }
        let floats: Vec<u8> = t.data.iter().flat_map(|&x| x.to_le_bytes()).collect();
        let ids: Vec<u8> = (0..rows).flat_map(|r| raw(r).to_le_bytes()).collect();
        for (file, bytes) in [
            (format!("{}.csv", t.name), csv.into_bytes()),
            (format!("{}.npy", t.name), npy("<f4", &[rows, width], &floats)),
            (format!("{}.ids.npy", t.name), npy("<u8", &[rows], &ids)),
        ] {
            let path = a.out.join(&file);
            write_atomic(&path, &bytes, a.force)?;
            written.push(file);
        }
        eprintln!("{}: {rows} × {width}", t.name);
    }
    if written.is_empty() {
        bail!("{} holds no embedding tables", a.model.display());
    }
    eprintln!("wrote {} files to {}: {}", written.len(), a.out.display(), written.join(", "));
    Ok(true)
}
