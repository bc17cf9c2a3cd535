//! The Hugging Face IPr2Pr parquet shards (`timbrooks/instructpix2pix-clip-filtered`), read with
//! the `parquet` crate's row API (no Arrow). Cargo feature `parquet`; the snappy codec is enabled.
//!
//! Columns: `original_prompt`, `original_image` (struct with `bytes`), `edit_prompt`,
//! `edited_prompt`, `edited_image` (struct with `bytes`). Rows are streamed, a few at a time.
//!
//! ```no_run
//! use df_data::ipr2pr::parquet::{shards, Ipr2prParquet};
//! for shard in shards("/data/instructpix2pix-clip-filtered/data")? {
//!     let file = Ipr2prParquet::open(&shard)?;
//!     for record in file.records() {
//!         let record = record?;
//!         let original = record.decode_original()?;
//!     }
//! }
//! # Ok::<(), df_data::DataError>(())
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};

use image::DynamicImage;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::record::reader::RowIter;
use parquet::record::{Field, Row};

use crate::error::{DataError, Entry, Result};
use crate::report::{LoadReport, OnError};

/// The columns a shard must have.
pub const COLUMNS: [&str; 5] = [
    "original_prompt",
    "original_image",
    "edit_prompt",
    "edited_prompt",
    "edited_image",
];

/// Rows decoded at a time (images make rows large).
const ROW_BATCH: usize = 16;

/// One row: prompts and encoded image bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ipr2prRecord {
    /// The shard file.
    pub path: PathBuf,
    /// Row index in the shard.
    pub row: usize,
    /// Caption of the original image.
    pub original_prompt: String,
    /// The edit instruction.
    pub edit_prompt: String,
    /// Caption of the edited image.
    pub edited_prompt: String,
    /// Encoded original image (PNG / JPEG bytes).
    pub original_image: Vec<u8>,
    /// Encoded edited image.
    pub edited_image: Vec<u8>,
}

impl Ipr2prRecord {
    fn decode(&self, bytes: &[u8], which: &str) -> Result<DynamicImage> {
        image::load_from_memory(bytes).map_err(|e| DataError::CorruptImage {
            path: self.path.clone(),
            name: format!("row {} {which}", self.row),
            entry: Entry::Row(self.row),
            source: Box::new(e),
        })
    }

    /// Decodes the original image.
    pub fn decode_original(&self) -> Result<DynamicImage> {
        self.decode(&self.original_image, "original_image")
    }

    /// Decodes the edited image.
    pub fn decode_edited(&self) -> Result<DynamicImage> {
        self.decode(&self.edited_image, "edited_image")
    }
}

/// The `*.parquet` files of a folder, sorted by name.
pub fn shards(dir: impl AsRef<Path>) -> Result<Vec<PathBuf>> {
    let dir = dir.as_ref();
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let p = entry.map_err(|e| DataError::io(dir, e))?.path();
        if p.extension().is_some_and(|e| e == "parquet") && p.is_file() {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// An open IPr2Pr parquet shard.
pub struct Ipr2prParquet {
    path: PathBuf,
    reader: SerializedFileReader<File>,
}

impl std::fmt::Debug for Ipr2prParquet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ipr2prParquet")
            .field("path", &self.path)
            .field("rows", &self.len())
            .finish()
    }
}

fn pq_err(path: &Path, entry: Entry, e: impl std::fmt::Display) -> DataError {
    DataError::Parquet {
        path: path.to_path_buf(),
        entry,
        message: e.to_string(),
    }
}

impl Ipr2prParquet {
    /// Opens a shard and checks that it has the IPr2Pr columns.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
        let reader = SerializedFileReader::new(file).map_err(|e| pq_err(&path, Entry::File, e))?;
        let schema = reader.metadata().file_metadata().schema();
        let names: Vec<&str> = schema.get_fields().iter().map(|f| f.name()).collect();
        let missing: Vec<&str> = COLUMNS.iter().filter(|c| !names.contains(c)).copied().collect();
        if !missing.is_empty() {
            return Err(pq_err(
                &path,
                Entry::File,
                format!("missing column(s) {missing:?} (found {names:?})"),
            ));
        }
        Ok(Self { path, reader })
    }

    /// The shard file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of rows (from the file metadata).
    pub fn len(&self) -> usize {
        usize::try_from(self.reader.metadata().file_metadata().num_rows()).unwrap_or(0)
    }

    /// `true` if the shard has no row.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Streams the records. A row with a null or mistyped value gives a
    /// [`DataError::Parquet`] for that row (skippable, see [`Self::read_all`]).
    pub fn records(&self) -> impl Iterator<Item = Result<Ipr2prRecord>> + '_ {
        let rows = match RowIter::from_file(None, &self.reader) {
            Ok(it) => Some(it.with_batch_size(ROW_BATCH)),
            Err(e) => {
                let err = pq_err(&self.path, Entry::File, e);
                return Box::new(std::iter::once(Err(err))) as Box<dyn Iterator<Item = _>>;
            }
        };
        Box::new(rows.into_iter().flatten().enumerate().map(move |(i, row)| {
            let row = row.map_err(|e| pq_err(&self.path, Entry::File, e))?;
            record(&self.path, i, &row)
        }))
    }

    /// Reads every record; under [`OnError::Skip`] bad rows are skipped and counted.
    pub fn read_all(&self, on_error: OnError) -> Result<(Vec<Ipr2prRecord>, LoadReport)> {
        let mut report = LoadReport::default();
        let mut out = Vec::with_capacity(self.len());
        for r in self.records() {
            match r {
                Ok(rec) => out.push(rec),
                Err(e) => report.handle(on_error, e)?,
            }
        }
        report.samples = out.len();
        Ok((out, report))
    }
}

fn record(path: &Path, row: usize, r: &Row) -> Result<Ipr2prRecord> {
    let err = |m: String| pq_err(path, Entry::Row(row), m);
    let get = |name: &str| -> Result<&Field> {
        r.get_column_iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, f)| f)
            .ok_or_else(|| err(format!("no column `{name}`")))
    };
    let text = |name: &str| -> Result<String> {
        match get(name)? {
            Field::Str(s) => Ok(s.clone()),
            Field::Bytes(b) => {
                String::from_utf8(b.data().to_vec()).map_err(|_| err(format!("`{name}` is not UTF-8")))
            }
            Field::Null => Err(err(format!("`{name}` is null"))),
            other => Err(err(format!("`{name}` is not a string: {other}"))),
        }
    };
    let bytes = |name: &str| -> Result<Vec<u8>> {
        let inner = match get(name)? {
            Field::Group(g) => g
                .get_column_iter()
                .find(|(n, _)| n.as_str() == "bytes")
                .map(|(_, f)| f)
                .ok_or_else(|| err(format!("`{name}` has no `bytes` field")))?,
            other => other,
        };
        match inner {
            Field::Bytes(b) => Ok(b.data().to_vec()),
            Field::Str(s) => Ok(s.clone().into_bytes()),
            Field::Null => Err(err(format!("`{name}.bytes` is null"))),
            other => Err(err(format!("`{name}.bytes` is not binary: {other}"))),
        }
    };
    Ok(Ipr2prRecord {
        path: path.to_path_buf(),
        row,
        original_prompt: text("original_prompt")?,
        edit_prompt: text("edit_prompt")?,
        edited_prompt: text("edited_prompt")?,
        original_image: bytes("original_image")?,
        edited_image: bytes("edited_image")?,
    })
}
