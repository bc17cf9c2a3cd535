//! IPr2Pr parquet shards (feature `parquet`): a shard with the Hugging Face schema is written with
//! the parquet crate's low-level writer and read back.
#![cfg(feature = "parquet")]

mod common;

use std::fs::File;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use df_data::ipr2pr::parquet::{shards, Ipr2prParquet};
use df_data::{DataError, Entry, OnError, SkipReason};
use parquet::basic::Compression;
use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

const SCHEMA: &str = "
message schema {
  optional binary original_prompt (STRING);
  optional group original_image {
    optional binary bytes;
    optional binary path (STRING);
  }
  optional binary edit_prompt (STRING);
  optional binary edited_prompt (STRING);
  optional group edited_image {
    optional binary bytes;
    optional binary path (STRING);
  }
}";

fn png(name: &str) -> Vec<u8> {
    let mut buf = Cursor::new(Vec::new());
    common::image_for(name, 8)
        .write_to(&mut buf, image::ImageFormat::Png)
        .unwrap();
    buf.into_inner()
}

/// Writes `n` rows; row `null_row` (if any) has a null edit prompt.
fn write_shard(path: &Path, n: usize, null_row: Option<usize>) {
    let schema = Arc::new(parse_message_type(SCHEMA).unwrap());
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build(),
    );
    let mut w = SerializedFileWriter::new(File::create(path).unwrap(), schema, props).unwrap();
    let mut rg = w.next_row_group().unwrap();
    let text = |prefix: &str| -> Vec<ByteArray> {
        (0..n)
            .map(|i| ByteArray::from(format!("{prefix} {i}").as_str()))
            .collect()
    };
    let images = |which: &str| -> Vec<ByteArray> {
        (0..n)
            .map(|i| ByteArray::from(png(&format!("{which}{i}"))))
            .collect()
    };
    // Leaf columns in schema order: (values, definition levels, max definition level).
    let edit: Vec<ByteArray> = (0..n)
        .filter(|i| Some(*i) != null_row)
        .map(|i| ByteArray::from(format!("edit {i}").as_str()))
        .collect();
    let edit_def: Vec<i16> = (0..n).map(|i| if Some(i) == null_row { 0 } else { 1 }).collect();
    let columns: Vec<(Vec<ByteArray>, Vec<i16>)> = vec![
        (text("original"), vec![1; n]),
        (images("o"), vec![2; n]),
        (Vec::new(), vec![1; n]), // original_image.path: null inside a present struct
        (edit, edit_def),
        (text("edited"), vec![1; n]),
        (images("e"), vec![2; n]),
        (Vec::new(), vec![1; n]),
    ];
    for (values, defs) in columns {
        let mut col = rg.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, Some(&defs), None)
            .unwrap();
        col.close().unwrap();
    }
    assert!(rg.next_column().unwrap().is_none());
    rg.close().unwrap();
    w.close().unwrap();
}

#[test]
fn reads_hugging_face_schema() {
    let tmp = tempfile::tempdir().unwrap();
    write_shard(&tmp.path().join("train-00001.parquet"), 3, None);
    write_shard(&tmp.path().join("train-00000.parquet"), 40, None);
    std::fs::write(tmp.path().join("README.md"), "not a shard").unwrap();
    let files = shards(tmp.path()).unwrap();
    assert_eq!(files.len(), 2);
    assert!(files[0].ends_with("train-00000.parquet"));
    let shard = Ipr2prParquet::open(&files[0]).unwrap();
    assert_eq!(shard.len(), 40);
    let records: Vec<_> = shard.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(records.len(), 40);
    let r = &records[17];
    assert_eq!(r.row, 17);
    assert_eq!(r.original_prompt, "original 17");
    assert_eq!(r.edit_prompt, "edit 17");
    assert_eq!(r.edited_prompt, "edited 17");
    assert_eq!(
        r.decode_original().unwrap().to_rgb8(),
        common::image_for("o17", 8)
    );
    assert_eq!(r.decode_edited().unwrap().to_rgb8(), common::image_for("e17", 8));
}

#[test]
fn bad_rows_and_files() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.parquet");
    write_shard(&path, 5, Some(2));
    let shard = Ipr2prParquet::open(&path).unwrap();
    let err = shard.read_all(OnError::Fail).unwrap_err();
    assert!(
        matches!(
            &err,
            DataError::Parquet {
                entry: Entry::Row(2),
                ..
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string().contains("edit_prompt") && err.to_string().contains("bad.parquet"),
        "{err}"
    );
    let (records, report) = shard.read_all(OnError::Skip).unwrap();
    assert_eq!(records.len(), 4);
    assert_eq!(report.skipped(SkipReason::MalformedEntry), 1);

    // Not a parquet file; a parquet file with other columns.
    std::fs::write(tmp.path().join("junk.parquet"), b"PAR1 nope").unwrap();
    let err = Ipr2prParquet::open(tmp.path().join("junk.parquet")).unwrap_err();
    assert!(
        matches!(
            err,
            DataError::Parquet {
                entry: Entry::File,
                ..
            }
        ),
        "{err}"
    );
    let other = tmp.path().join("other.parquet");
    let schema = Arc::new(parse_message_type("message m { optional binary text (STRING); }").unwrap());
    let w = SerializedFileWriter::new(File::create(&other).unwrap(), schema, Default::default()).unwrap();
    w.close().unwrap();
    let err = Ipr2prParquet::open(&other).unwrap_err();
    assert!(err.to_string().contains("missing column"), "{err}");
    // Corrupt image bytes surface when decoding.
    let mut rec = records[0].clone();
    rec.original_image.truncate(10);
    assert!(matches!(
        rec.decode_original(),
        Err(DataError::CorruptImage { .. })
    ));
}
