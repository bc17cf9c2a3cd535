//! Input pipeline: seeded shuffling, batching, image decoding and user preprocessing on worker
//! threads with bounded prefetch.
//!
//! A [`Loader`] holds a list of items, each a short list of image paths (one for a gallery,
//! `[reference, target]` for training pairs, see [`cir_pairs`]). An epoch ([`Loader::epoch`]) is an
//! iterator of [`Batch`]es. The order of items depends only on the seed and the epoch: batch `b` is
//! built by worker `b % num_workers` and batches are handed out strictly in order, so the output is
//! identical for any number of workers (0 = build batches in the calling thread).
//!
//! ```no_run
//! use df_data::pipeline::{Loader, LoaderConfig, resize_normalize};
//! let paths = vec!["a.png".into(), "b.png".into()];
//! let loader = Loader::from_paths(paths, LoaderConfig::default().batch_size(2), resize_normalize(224))?;
//! for batch in loader.epoch(0) {
//!     let batch = batch?;
//!     let pixels: Vec<&Vec<f32>> = batch.items.iter().map(|item| &item[0]).collect();
//! }
//! # Ok::<(), df_data::DataError>(())
//! ```

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;

use image::imageops::FilterType;
use image::DynamicImage;

use crate::error::{BoxError, DataError, Entry, Result};
use crate::imageio::open_image;
use crate::report::{LoadReport, OnError};
use crate::rng::Rng;
use crate::sample::{CirSample, Gallery};

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoaderConfig {
    /// Items per batch (≥ 1). Default 32.
    pub batch_size: usize,
    /// Shuffle the items each epoch (default `false`).
    pub shuffle: bool,
    /// Seed of the shuffle; epoch `e` uses the permutation drawn from `(seed, e)`.
    pub seed: u64,
    /// Drop the last batch if it is smaller than `batch_size` (default `false`).
    pub drop_last: bool,
    /// Worker threads (default 2; 0 = decode in the calling thread).
    pub num_workers: usize,
    /// Batches each worker may have ready ahead of the consumer (≥ 1, default 2).
    pub prefetch: usize,
    /// Fail on the first bad image (default) or drop bad items from their batch and report them.
    pub on_error: OnError,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 32,
            shuffle: false,
            seed: 0,
            drop_last: false,
            num_workers: 2,
            prefetch: 2,
            on_error: OnError::Fail,
        }
    }
}

impl LoaderConfig {
    /// Sets the batch size.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n;
        self
    }
    /// Enables seeded shuffling.
    pub fn shuffle(mut self, seed: u64) -> Self {
        self.shuffle = true;
        self.seed = seed;
        self
    }
    /// Sets `drop_last`.
    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }
    /// Sets the number of worker threads.
    pub fn num_workers(mut self, n: usize) -> Self {
        self.num_workers = n;
        self
    }
    /// Sets the per-worker prefetch depth (in batches).
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = n;
        self
    }
    /// Sets the error policy.
    pub fn on_error(mut self, on_error: OnError) -> Self {
        self.on_error = on_error;
        self
    }
}

/// One batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch<T> {
    /// The epoch.
    pub epoch: u64,
    /// Position of the batch in the epoch.
    pub index: usize,
    /// Item indices (into the loader's item list) of the kept items, in batch order.
    pub indices: Vec<usize>,
    /// For each kept item, its preprocessed images in the item's path order.
    pub items: Vec<Vec<T>>,
    /// Items of this batch dropped under [`OnError::Skip`].
    pub skipped: usize,
}

impl<T> Batch<T> {
    /// Number of kept items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// `true` if every item of the batch was dropped.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

type Preprocess<T> = Arc<dyn Fn(&DynamicImage) -> std::result::Result<T, BoxError> + Send + Sync>;

/// A reusable, seeded loader over items of image paths.
pub struct Loader<T> {
    items: Arc<Vec<Vec<PathBuf>>>,
    preprocess: Preprocess<T>,
    config: LoaderConfig,
}

impl<T> Clone for Loader<T> {
    fn clone(&self) -> Self {
        Self {
            items: Arc::clone(&self.items),
            preprocess: Arc::clone(&self.preprocess),
            config: self.config.clone(),
        }
    }
}

impl<T> std::fmt::Debug for Loader<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("items", &self.items.len())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Loader<T> {
    /// A loader over `items` (each a list of image paths), decoding each image and passing it to
    /// `preprocess` on the worker threads.
    pub fn new<F, E>(items: Vec<Vec<PathBuf>>, config: LoaderConfig, preprocess: F) -> Result<Self>
    where
        F: Fn(&DynamicImage) -> std::result::Result<T, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        if config.batch_size == 0 {
            return Err(DataError::InvalidConfig("batch_size must be at least 1".into()));
        }
        if config.prefetch == 0 {
            return Err(DataError::InvalidConfig("prefetch must be at least 1".into()));
        }
        Ok(Self {
            items: Arc::new(items),
            preprocess: Arc::new(move |img: &DynamicImage| preprocess(img).map_err(Into::into)),
            config,
        })
    }

    /// A loader with one image per item.
    pub fn from_paths<F, E>(paths: Vec<PathBuf>, config: LoaderConfig, preprocess: F) -> Result<Self>
    where
        F: Fn(&DynamicImage) -> std::result::Result<T, E> + Send + Sync + 'static,
        E: Into<BoxError>,
    {
        Self::new(paths.into_iter().map(|p| vec![p]).collect(), config, preprocess)
    }

    /// The configuration.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// `true` if there is no item.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The image paths of item `i`.
    pub fn item(&self, i: usize) -> Option<&[PathBuf]> {
        self.items.get(i).map(Vec::as_slice)
    }

    /// The item order of `epoch` (a seeded permutation if shuffling, else `0..len`).
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        if self.config.shuffle {
            Rng::derive(self.config.seed, &[epoch]).permutation(self.items.len())
        } else {
            (0..self.items.len()).collect()
        }
    }

    /// The batches (item indices) of `epoch`, after shuffling and `drop_last`.
    pub fn batch_indices(&self, epoch: u64) -> Vec<Vec<usize>> {
        let bs = self.config.batch_size.max(1);
        self.order(epoch)
            .chunks(bs)
            .filter(|c| !self.config.drop_last || c.len() == bs)
            .map(<[usize]>::to_vec)
            .collect()
    }

    /// Number of batches per epoch.
    pub fn num_batches(&self) -> usize {
        let (n, bs) = (self.items.len(), self.config.batch_size.max(1));
        if self.config.drop_last {
            n / bs
        } else {
            n.div_ceil(bs)
        }
    }

    /// Starts an epoch: workers begin decoding right away, at most `prefetch` batches ahead each.
    pub fn epoch(&self, epoch: u64) -> EpochIter<T> {
        let job = Arc::new(Job {
            items: Arc::clone(&self.items),
            preprocess: Arc::clone(&self.preprocess),
            batches: self.batch_indices(epoch),
            on_error: self.config.on_error,
            epoch,
        });
        let stop = Arc::new(AtomicBool::new(false));
        let n = self.config.num_workers;
        let mut receivers = Vec::with_capacity(n);
        let mut handles = Vec::with_capacity(n);
        for w in 0..n {
            let (tx, rx) = sync_channel(self.config.prefetch);
            receivers.push(rx);
            let job = Arc::clone(&job);
            let worker_stop = Arc::clone(&stop);
            let spawned = std::thread::Builder::new()
                .name(format!("df-data-worker-{w}"))
                .spawn(move || {
                    let mut b = w;
                    while b < job.batches.len() && !worker_stop.load(Ordering::Relaxed) {
                        let out = job.run(b, w);
                        let failed = out.is_err();
                        if tx.send(out).is_err() || failed {
                            break;
                        }
                        b += n;
                    }
                });
            match spawned {
                Ok(h) => handles.push(h),
                Err(_) => {
                    // Could not spawn: fall back to decoding in the calling thread.
                    stop.store(true, Ordering::Relaxed);
                    receivers.clear();
                    for h in handles.drain(..) {
                        let _ = h.join();
                    }
                    break;
                }
            }
        }
        EpochIter {
            job,
            next: 0,
            receivers,
            handles,
            stop,
            report: LoadReport::default(),
            done: false,
        }
    }
}

type BatchResult<T> = Result<(Batch<T>, LoadReport)>;

struct Job<T> {
    items: Arc<Vec<Vec<PathBuf>>>,
    preprocess: Preprocess<T>,
    batches: Vec<Vec<usize>>,
    on_error: OnError,
    epoch: u64,
}

impl<T> Job<T> {
    /// Builds batch `b`, turning a panic of the user closure into an error.
    fn run(&self, b: usize, worker: usize) -> BatchResult<T> {
        match catch_unwind(AssertUnwindSafe(|| self.build(b))) {
            Ok(r) => r,
            Err(_) => Err(DataError::WorkerPanicked { worker, batch: b }),
        }
    }

    fn build(&self, b: usize) -> BatchResult<T> {
        let mut report = LoadReport::default();
        let idx = self.batches.get(b).map(Vec::as_slice).unwrap_or_default();
        let mut indices = Vec::with_capacity(idx.len());
        let mut items = Vec::with_capacity(idx.len());
        for &i in idx {
            let paths = self.items.get(i).map(Vec::as_slice).unwrap_or_default();
            match self.load_item(i, paths) {
                Ok(v) => {
                    indices.push(i);
                    items.push(v);
                }
                Err(e) => report.handle(self.on_error, e)?,
            }
        }
        report.samples = items.len();
        let skipped = report.total_skipped();
        Ok((
            Batch {
                epoch: self.epoch,
                index: b,
                indices,
                items,
                skipped,
            },
            report,
        ))
    }

    fn load_item(&self, i: usize, paths: &[PathBuf]) -> Result<Vec<T>> {
        paths
            .iter()
            .map(|p| {
                let entry = Entry::Item(i);
                let img = open_image(p, &file_name(p), &entry)?;
                (self.preprocess)(&img).map_err(|source| DataError::Preprocess {
                    path: p.clone(),
                    entry,
                    source,
                })
            })
            .collect()
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.display().to_string())
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter<T> {
    job: Arc<Job<T>>,
    next: usize,
    receivers: Vec<Receiver<BatchResult<T>>>,
    handles: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    report: LoadReport,
    done: bool,
}

impl<T> EpochIter<T> {
    /// Items kept and skipped so far in this epoch.
    pub fn report(&self) -> &LoadReport {
        &self.report
    }

    /// Number of batches of the epoch.
    pub fn num_batches(&self) -> usize {
        self.job.batches.len()
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.receivers.clear();
        for h in self.handles.drain(..) {
            // A panicking worker already reported itself through its channel.
            let _ = h.join();
        }
    }
}

impl<T> Iterator for EpochIter<T> {
    type Item = Result<Batch<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.next >= self.job.batches.len() {
            return None;
        }
        let b = self.next;
        self.next += 1;
        let out = if self.receivers.is_empty() {
            self.job.run(b, 0)
        } else {
            let w = b % self.receivers.len();
            match self.receivers.get(w).map(Receiver::recv) {
                Some(Ok(r)) => r,
                _ => Err(DataError::WorkerPanicked { worker: w, batch: b }),
            }
        };
        match out {
            Ok((batch, report)) => {
                self.report.samples += report.samples;
                self.report.merge_skipped(&report);
                Some(Ok(batch))
            }
            Err(e) => {
                self.done = true;
                self.shutdown();
                Some(Err(e))
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = if self.done {
            0
        } else {
            self.job.batches.len() - self.next
        };
        (left, Some(left))
    }
}

impl<T> Drop for EpochIter<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// `[reference path, target path]` for every sample that has a target, with the indices of those
/// samples (samples without a target, as in test splits, are left out).
pub fn cir_pairs(samples: &[CirSample], gallery: &Gallery) -> Result<(Vec<usize>, Vec<Vec<PathBuf>>)> {
    let mut idx = Vec::with_capacity(samples.len());
    let mut items = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let Some(t) = &s.target else { continue };
        let mut pair = Vec::with_capacity(2);
        for (role, name) in [
            (crate::ImageRole::Reference, &s.reference),
            (crate::ImageRole::Target, t),
        ] {
            match gallery.path(name) {
                Some(p) => pair.push(p.to_path_buf()),
                None => {
                    return Err(DataError::UnknownImage {
                        path: PathBuf::from("<samples>"),
                        entry: s.source.clone(),
                        name: name.clone(),
                        role,
                        split_file: PathBuf::from("<gallery>"),
                    })
                }
            }
        }
        idx.push(i);
        items.push(pair);
    }
    Ok((idx, items))
}

/// CLIP / BLIP-2 normalisation mean (RGB).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP / BLIP-2 normalisation standard deviation (RGB).
pub const CLIP_STD: [f32; 3] = [0.268_629_5, 0.261_302_6, 0.275_777_1];

/// A simple preprocessing closure: resize to `size`×`size` (bilinear, aspect ratio not kept), RGB,
/// scale to [0, 1] and normalise with [`CLIP_MEAN`] / [`CLIP_STD`]; output CHW `f32`. (The exact
/// BLIP-2 processor, with target padding and bicubic resizing, lives in `df-encoders`.)
pub fn resize_normalize(
    size: u32,
) -> impl Fn(&DynamicImage) -> std::result::Result<Vec<f32>, BoxError> + Send + Sync + Clone + 'static {
    move |img: &DynamicImage| {
        let rgb = img.resize_exact(size, size, FilterType::Triangle).to_rgb8();
        let plane = (size as usize) * (size as usize);
        let mut out = vec![0f32; 3 * plane];
        for (i, px) in rgb.pixels().enumerate() {
            for c in 0..3 {
                if let Some(o) = out.get_mut(c * plane + i) {
                    *o = (f32::from(px.0[c]) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c];
                }
            }
        }
        Ok(out)
    }
}
