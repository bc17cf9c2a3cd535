//! The input pipeline: seeded order independent of the number of workers, batching, drop_last,
//! bounded prefetch.

mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::write_image;
use df_data::pipeline::{resize_normalize, Batch, Loader, LoaderConfig};
use df_data::DataError;

fn images(n: usize) -> (tempfile::TempDir, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let paths = (0..n)
        .map(|i| {
            let p = tmp.path().join(format!("img{i}.png"));
            write_image(&p, &format!("img{i}"), 6);
            p
        })
        .collect();
    (tmp, paths)
}

/// Preprocessing that identifies the image: its top-left pixel.
fn pixel(img: &image::DynamicImage) -> Result<[u8; 3], DataError> {
    Ok(img.to_rgb8().get_pixel(0, 0).0)
}

fn run(loader: &Loader<[u8; 3]>, epoch: u64) -> Vec<Batch<[u8; 3]>> {
    loader.epoch(epoch).map(Result::unwrap).collect()
}

#[test]
fn order_is_identical_for_any_number_of_workers() {
    let (_tmp, paths) = images(23);
    let cfg = LoaderConfig::default().batch_size(4).shuffle(42);
    let reference = run(
        &Loader::from_paths(paths.clone(), cfg.clone().num_workers(0), pixel).unwrap(),
        3,
    );
    assert_eq!(reference.len(), 6);
    for workers in [1, 2, 3, 7] {
        for prefetch in [1, 3] {
            let loader = Loader::from_paths(
                paths.clone(),
                cfg.clone().num_workers(workers).prefetch(prefetch),
                pixel,
            )
            .unwrap();
            assert_eq!(
                run(&loader, 3),
                reference,
                "{workers} workers, prefetch {prefetch}"
            );
        }
    }
    // The pixels belong to the indexed images.
    for b in &reference {
        for (i, item) in b.indices.iter().zip(&b.items) {
            assert_eq!(
                item[0],
                common::image_for(&format!("img{i}"), 6).get_pixel(0, 0).0
            );
        }
    }
    // Each epoch is a permutation; epochs and seeds differ.
    let loader = Loader::from_paths(paths.clone(), cfg.clone(), pixel).unwrap();
    let mut all: Vec<usize> = reference.iter().flat_map(|b| b.indices.clone()).collect();
    all.sort_unstable();
    assert_eq!(all, (0..23).collect::<Vec<_>>());
    assert_ne!(loader.order(3), loader.order(4));
    assert_eq!(loader.order(3), loader.order(3));
    let other = Loader::from_paths(paths.clone(), cfg.clone().shuffle(43), pixel).unwrap();
    assert_ne!(loader.order(3), other.order(3));
    let plain = Loader::from_paths(paths, LoaderConfig::default(), pixel).unwrap();
    assert_eq!(plain.order(9), (0..23).collect::<Vec<_>>());
}

#[test]
fn batching_and_drop_last() {
    let (_tmp, paths) = images(10);
    let cfg = LoaderConfig::default().batch_size(4).num_workers(2);
    let loader = Loader::from_paths(paths.clone(), cfg.clone(), pixel).unwrap();
    let sizes: Vec<usize> = run(&loader, 0).iter().map(Batch::len).collect();
    assert_eq!(sizes, [4, 4, 2]);
    assert_eq!(loader.num_batches(), 3);
    let loader = Loader::from_paths(paths.clone(), cfg.clone().drop_last(true), pixel).unwrap();
    let batches = run(&loader, 0);
    assert_eq!(batches.iter().map(Batch::len).collect::<Vec<_>>(), [4, 4]);
    assert_eq!(batches[1].indices, [4, 5, 6, 7]);
    assert_eq!(batches[1].index, 1);
    assert_eq!(loader.num_batches(), 2);
    // Multi-image items keep their path order.
    let items: Vec<Vec<PathBuf>> = paths.chunks(2).map(<[PathBuf]>::to_vec).collect();
    let loader = Loader::new(items, cfg, pixel).unwrap();
    let b = run(&loader, 0);
    assert_eq!(b[0].items[1].len(), 2);
    assert_eq!(b[0].items[1][1], common::image_for("img3", 6).get_pixel(0, 0).0);
    // Empty loader.
    let empty = Loader::from_paths(Vec::new(), LoaderConfig::default(), pixel).unwrap();
    assert_eq!(empty.epoch(0).count(), 0);
}

#[test]
fn prefetch_is_bounded_and_early_drop_stops_workers() {
    let (_tmp, paths) = images(4);
    // 200 items over 4 files, batches of 2.
    let paths: Vec<PathBuf> = (0..200).map(|i| paths[i % 4].clone()).collect();
    let done = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&done);
    let (workers, prefetch, bs) = (2, 1, 2);
    let loader = Loader::from_paths(
        paths,
        LoaderConfig::default()
            .batch_size(bs)
            .num_workers(workers)
            .prefetch(prefetch),
        move |_img| {
            counter.fetch_add(1, Ordering::SeqCst);
            Ok::<_, DataError>(())
        },
    )
    .unwrap();
    let mut it = loader.epoch(0);
    it.next().unwrap().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(150));
    // Each worker holds at most `prefetch` finished batches plus the one it is building.
    let bound = bs * (1 + workers * (prefetch + 1));
    let seen = done.load(Ordering::SeqCst);
    assert!(seen <= bound, "{seen} items decoded ahead, bound {bound}");
    drop(it); // must not hang
    let after = done.load(Ordering::SeqCst);
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(done.load(Ordering::SeqCst), after, "workers stopped");
}

#[test]
fn resize_normalize_shape() {
    let (_tmp, paths) = images(3);
    let loader =
        Loader::from_paths(paths, LoaderConfig::default().batch_size(3), resize_normalize(16)).unwrap();
    let b = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(b.items.len(), 3);
    assert_eq!(b.items[0][0].len(), 3 * 16 * 16);
    assert!(b.items[0][0].iter().all(|v| v.is_finite() && v.abs() < 3.0));
}
