//! Gallery search speed against this machine's limits.
//!
//! Galleries of 10k, 100k and 1M token vectors (`N·Q`, `Q = 32`, `P = 256`, random unit `f32`
//! vectors, no model) are searched for the top 10 at batch 1 (memory-bound streaming scan) and
//! batch 64 (compute-bound GEMM). Before that the run measures the machine's DRAM read
//! bandwidth (sum over a 1 GiB buffer, 1 and all threads) and its f32 GEMM rate (candle
//! `matmul` 2048×2048×2048); the summary at the end gives gallery GB/s and GFLOP/s next to them.
//!
//! `cargo bench --bench retrieval` (add `-- --quick` for a shorter run).
//!
//! With `--features usearch` it also measures the approximate backend on a toy gallery
//! (`DF_BENCH_USEARCH_IMAGES` images, default 100,000: the demo world's test split plus random
//! scenes of the same world, encoded by the demo model in `weights/demo`, queried with the
//! test split's 300 composed queries), or with `DF_BENCH_USEARCH_GALLERY=synthetic` on
//! synthetic clustered features of 32 × 256 (images scatter around cluster centres, tokens
//! around their image): graph build time, query time next to the exact flat index, and
//! recall@10 against it. `DF_BENCH_USEARCH_ONLY=1` skips the rest;
//! `DF_BENCH_USEARCH_QUANT=f16,i8` picks the quantisations (default `f16`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput};
use detailfusion::index::{FeatureDType, FlatIndex, IndexInfo, SearchOptions};

const P: usize = 256;
const Q: usize = 32;
const K: usize = 10;

struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// `rows` random unit vectors of width `P`.
fn unit_vectors(rows: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed | 1);
    let mut v: Vec<f32> = (0..rows * P).map(|_| rng.next_f32()).collect();
    for r in v.chunks_exact_mut(P) {
        let norm = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= norm);
    }
    v
}

fn threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Best read bandwidth (GB/s) of summing a 1 GiB buffer on `t` threads, over at least `reps`
/// passes and about a second.
fn dram_bandwidth(buf: &[f32], t: usize, reps: usize) -> f64 {
    fn sum(s: &[f32]) -> f32 {
        // 32 lanes, reduced after a `black_box` so that the loop vectorises at full width.
        let mut acc = [0f32; 32];
        for c in s.chunks_exact(32) {
            let c: &[f32; 32] = c.try_into().unwrap();
            for i in 0..32 {
                acc[i] += c[i];
            }
        }
        black_box(acc).iter().sum()
    }
    let mut best = f64::MAX;
    let budget = Instant::now();
    let mut done = 0;
    while done < reps || budget.elapsed() < Duration::from_secs(1) {
        done += 1;
        let start = Instant::now();
        let per = buf.len().div_ceil(t);
        let total: f32 = std::thread::scope(|s| {
            let hs: Vec<_> = buf.chunks(per).map(|c| s.spawn(move || sum(c))).collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        black_box(total);
        best = best.min(start.elapsed().as_secs_f64());
    }
    (buf.len() * 4) as f64 / best / 1e9
}

/// Best GFLOP/s of candle's f32 matmul 2048×2048×2048 over at least `reps` runs and about a
/// second.
fn gemm_rate(reps: usize) -> f64 {
    let n = 2048;
    let a = Tensor::from_vec(unit_vectors(n * n / P, 7), (n, n), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(unit_vectors(n * n / P, 8), (n, n), &Device::Cpu).unwrap();
    black_box(a.matmul(&b).unwrap());
    let mut best = f64::MAX;
    let budget = Instant::now();
    let mut done = 0;
    while done < reps || budget.elapsed() < Duration::from_secs(1) {
        done += 1;
        let start = Instant::now();
        black_box(a.matmul(&b).unwrap());
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Best seconds of `f` over at least `min_runs` runs and about `budget` (best-of-N, like the
/// DRAM and GEMM figures: the least disturbed run on a possibly shared machine).
fn best_time(mut f: impl FnMut(), min_runs: usize, budget: Duration) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs || (start.elapsed() < budget && times.len() < 200) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.iter().copied().fold(f64::MAX, f64::min)
}

struct Row {
    name: String,
    vectors: usize,
    batch: usize,
    bytes: usize,
    seconds: f64,
    /// DRAM read GB/s and GEMM GFLOP/s measured right before this row's timing.
    dram: f64,
    gemm: f64,
}

/// The machine's reference figures, re-measured next to every timing (the machine may be
/// shared: a figure measured minutes earlier may have been taken in a noisier moment).
struct Machine {
    buf: Vec<f32>,
    threads: usize,
    rows: Vec<Row>,
    dram_seen: Vec<f64>,
    gemm_seen: Vec<f64>,
}

impl Machine {
    fn new() -> Self {
        Self {
            buf: (0..(1usize << 28)).map(|i| (i & 1023) as f32).collect(), // 1 GiB, touched
            threads: threads(),
            rows: Vec::new(),
            dram_seen: Vec::new(),
            gemm_seen: Vec::new(),
        }
    }

    fn dram(&mut self, reps: usize) -> f64 {
        let v = dram_bandwidth(&self.buf, self.threads, reps);
        self.dram_seen.push(v);
        v
    }

    fn gemm(&mut self, reps: usize) -> f64 {
        let v = gemm_rate(reps);
        self.gemm_seen.push(v);
        v
    }
}

fn index_of(vectors: usize, dtype: FeatureDType) -> FlatIndex {
    let n = vectors / Q;
    let info = IndexInfo {
        fingerprint: "bench".into(),
        config_hash: "bench".into(),
        dtype,
        q: Q,
        p: P,
        per_branch: false,
        config: None,
    };
    let names = (0..n).map(|i| format!("img{i:07}.jpg")).collect();
    FlatIndex::from_raw(info, names, unit_vectors(n * Q, vectors as u64), None).unwrap()
}

fn bench_search(c: &mut Criterion, m: &mut Machine, label: &str, index: &FlatIndex, batches: &[usize]) {
    let vectors = index.len() * Q;
    let bytes_per = if index.dtype() == FeatureDType::F16 { 2 } else { 4 };
    let bytes = vectors * P * bytes_per;
    let mut group = c.benchmark_group(format!("search/{label}"));
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(if vectors >= 1_000_000 { 4 } else { 2 }));
    group.throughput(Throughput::Bytes(bytes as u64));
    for &b in batches {
        let queries = Tensor::from_vec(unit_vectors(b, 99 + b as u64), (b, P), &Device::Cpu).unwrap();
        let opts = SearchOptions::top(K);
        let search = || black_box(index.search_features(&queries, &opts).unwrap());
        group.bench_function(BenchmarkId::from_parameter(format!("batch{b}")), |bench| {
            bench.iter(search)
        });
        let dram = m.dram(3);
        let gemm = m.gemm(3);
        let seconds = best_time(
            || {
                search();
            },
            5,
            Duration::from_millis(1500),
        );
        m.rows.push(Row {
            name: label.to_string(),
            vectors,
            batch: b,
            bytes,
            seconds,
            dram,
            gemm,
        });
    }
    group.finish();
}

/// End-to-end latency of one demo query: the shipped model encodes a reference image and a
/// text, then searches the demo gallery (the toy test split, 1,708 images).
fn bench_demo_query(c: &mut Criterion) {
    use detailfusion::data::cirr::CirrSplit;
    use detailfusion::toy::{ToyData, ToyPreset};
    use detailfusion::{DetailFusion, TextProcessor};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/demo");
    let dev = Device::Cpu;
    let model = DetailFusion::load(&dir, &dev).unwrap();
    let text = TextProcessor::from_file(dir.join("tokenizer.json")).unwrap();
    let preset: ToyPreset =
        serde_json::from_str(&std::fs::read_to_string(dir.join("toy_preset.json")).unwrap()).unwrap();
    let data = ToyData::generate_splits(&preset.world, &[CirrSplit::Test1], false, &dev).unwrap();
    let all: Vec<usize> = (0..data.len()).collect();
    let gallery = model.encode_images(&data.pixels(&all).unwrap()).unwrap();
    let mut index = FlatIndex::new(&model, FeatureDType::F32);
    let names = all.iter().map(|i| format!("{i}")).collect();
    index.add_features(names, &gallery).unwrap();
    let searcher = index.searcher(&model).unwrap();
    let reference = data.pixels(&[0]).unwrap();
    let caption = "make the red circle blue and remove the small square";
    c.bench_function("demo/query_end_to_end", |b| {
        b.iter(|| {
            let tb = text.encode(caption, &dev).unwrap();
            let q = model
                .encode_queries(&reference, &tb.input_ids, &tb.attention_mask)
                .unwrap();
            black_box(searcher.search(&q, &SearchOptions::top(10)).unwrap())
        })
    });
}

#[cfg(feature = "usearch")]
#[path = "../tests/index_support/mod.rs"]
mod index_support;

#[cfg(feature = "usearch")]
#[path = "support/toy_gallery.rs"]
mod toy_gallery;

/// Build and query time of usearch graphs, and their recall@10 against the flat index.
#[cfg(feature = "usearch")]
fn bench_usearch(c: &mut Criterion) {
    use detailfusion::index::{GalleryIndex, Quantization, UsearchIndex, UsearchOptions};
    use index_support::{clustered, features, info, queries, recall};
    let images: usize = std::env::var("DF_BENCH_USEARCH_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let quants: Vec<Quantization> = std::env::var("DF_BENCH_USEARCH_QUANT")
        .unwrap_or_else(|_| "f16".into())
        .split(',')
        .map(|q| q.trim().parse().unwrap())
        .collect();
    let dir = std::env::temp_dir().join(format!("df-bench-usearch-{}", std::process::id()));
    let small_info = info("bench", Q, P);

    // Build time: a small graph built from scratch per sample.
    let small = 1_000;
    let (names_s, values_s) = clustered(small, Q, P, 3);
    let feats_s = features(&names_s, &values_s, Q, P);
    let mut group = c.benchmark_group("usearch/build");
    group.sample_size(10);
    group.throughput(Throughput::Elements((small * Q) as u64));
    for &quant in &quants {
        let opts = UsearchOptions {
            quantization: quant,
            ..Default::default()
        };
        group.bench_function(
            BenchmarkId::from_parameter(format!("{small}img/{}", quant.as_str())),
            |b| {
                b.iter(|| {
                    let mut index =
                        UsearchIndex::create(dir.join("b.usearch"), small_info.clone(), &opts).unwrap();
                    index.add_features(names_s.clone(), &feats_s).unwrap();
                    black_box(index.len())
                })
            },
        );
    }
    group.finish();

    // The large gallery: each graph (built in chunks), then the flat reference.
    let synthetic = std::env::var("DF_BENCH_USEARCH_GALLERY").as_deref() == Ok("synthetic");
    let (names, values, q, p, qs, what) = if synthetic {
        eprintln!(
            "usearch: generating {images} synthetic clustered images ({} token vectors)",
            images * Q
        );
        let (names, values) = clustered(images, Q, P, 1);
        let qs = queries(&values, Q, P, 200, 5);
        (names, values, Q, P, qs, "synthetic clustered images")
    } else {
        let demo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/demo");
        let g = toy_gallery::toy_gallery(images, &demo);
        (
            g.names,
            g.values,
            g.q,
            g.p,
            g.queries,
            "toy images (demo model features)",
        )
    };
    let info = info("bench", q, p);
    let nq = qs.dim(0).unwrap();
    let q1 = qs.narrow(0, 0, 1).unwrap();
    let opts = SearchOptions::top(K);
    let path = |quant: Quantization| dir.join(format!("g-{}.usearch", quant.as_str()));
    let mut builds = Vec::new();
    for &quant in &quants {
        let uopts = UsearchOptions {
            quantization: quant,
            ..Default::default()
        };
        let t = Instant::now();
        let mut index = UsearchIndex::create(path(quant), info.clone(), &uopts).unwrap();
        let chunk = 4096;
        for (c, n) in names.chunks(chunk).enumerate() {
            let v = &values[c * chunk * q * p..(c * chunk + n.len()) * q * p];
            index.add_features(n.to_vec(), &features(n, v, q, p)).unwrap();
        }
        builds.push(t.elapsed().as_secs_f64());
        eprintln!(
            "usearch {}: built in {:.1} s",
            quant.as_str(),
            t.elapsed().as_secs_f64()
        );
        index.persist().unwrap();
    }
    let names_len = names.len();
    let flat = detailfusion::index::FlatIndex::from_raw(info.clone(), names, values, None).unwrap();
    let t = Instant::now();
    let want = flat.search_features(&qs, &opts).unwrap();
    let flat_batch = t.elapsed().as_secs_f64();
    let flat_one = best_time(
        || drop(flat.search_features(&q1, &opts).unwrap()),
        3,
        Duration::from_secs(3),
    );
    drop(flat);
    let mut rows = Vec::new();
    for (&quant, build) in quants.iter().zip(builds) {
        let uopts = UsearchOptions {
            quantization: quant,
            ..Default::default()
        };
        let mut index = UsearchIndex::open(path(quant), &uopts).unwrap();
        assert!(index.is_mapped());
        for (ef, overfetch) in [(64, 1.0), (64, 2.0), (128, 2.0), (256, 4.0)] {
            index.set_expansion_search(ef);
            index.set_overfetch(overfetch);
            let got = index.search_features(&qs, &opts).unwrap();
            let r = recall(&got, &want);
            let one = best_time(
                || drop(index.search_features(&q1, &opts).unwrap()),
                5,
                Duration::from_secs(2),
            );
            rows.push((quant, build, ef, overfetch, r, one));
        }
        let mut group = c.benchmark_group(format!("usearch/query/{images}img"));
        group.sample_size(20);
        index.set_expansion_search(64);
        index.set_overfetch(2.0);
        group.bench_function(
            BenchmarkId::from_parameter(format!("{}/batch1", quant.as_str())),
            |b| b.iter(|| black_box(index.search_features(&q1, &opts).unwrap())),
        );
        group.finish();
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!(
        "usearch on {} {what} ({} token vectors of {p}), {nq} queries, top-{K}; \
         flat (exact): {:.1} ms/query at batch 1, {:.1} ms/query at batch {nq}",
        names_len,
        names_len * q,
        flat_one * 1e3,
        flat_batch * 1e3 / nq as f64
    );
    println!(
        "{:<6} {:>10} {:>5} {:>9} {:>10} {:>12}",
        "quant", "build s", "ef", "overfetch", "recall@10", "ms/query b1"
    );
    for (quant, build, ef, overfetch, r, one) in rows {
        println!(
            "{:<6} {:>10.1} {:>5} {:>9.1} {:>10.3} {:>12.2}",
            quant.as_str(),
            build,
            ef,
            overfetch,
            r,
            one * 1e3
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    #[cfg(feature = "usearch")]
    {
        bench_usearch(&mut c);
        if std::env::var_os("DF_BENCH_USEARCH_ONLY").is_some() {
            c.final_summary();
            return;
        }
    }
    eprintln!("load average before: {}", loadavg());

    let mut m = Machine::new();
    let dram1 = dram_bandwidth(&m.buf, 1, 5);
    let (dram, gemm, t) = (m.dram(5), m.gemm(5), m.threads);
    eprintln!(
        "machine: DRAM read {dram:.1} GB/s on {t} threads ({dram1:.1} GB/s on 1), f32 GEMM {gemm:.0} GFLOP/s \
         (candle matmul 2048^3, {t} threads)"
    );

    bench_demo_query(&mut c);
    let sizes: &[(usize, &str)] = if std::env::var_os("DF_BENCH_DEMO_ONLY").is_some() {
        &[]
    } else {
        &[(10_000, "10k"), (100_000, "100k"), (1_000_000, "1M")]
    };
    for &(vectors, label) in sizes {
        let index = index_of(vectors, FeatureDType::F32);
        let batches: &[usize] = if vectors == 1_000_000 {
            &[1, 4, 64]
        } else {
            &[1, 64]
        };
        bench_search(&mut c, &mut m, &format!("{label}/f32"), &index, batches);
        if vectors == 100_000 {
            // The same gallery memory-mapped from an index file.
            let path = std::env::temp_dir().join(format!("df-bench-{}.dfindex", std::process::id()));
            index.save(&path).unwrap();
            let mapped = FlatIndex::load(&path).unwrap();
            assert!(mapped.is_mapped());
            bench_search(&mut c, &mut m, &format!("{label}/f32-mapped"), &mapped, &[1]);
            drop(mapped);
            let _ = std::fs::remove_file(&path);
        }
        if vectors == 1_000_000 {
            drop(index);
            let half = index_of(vectors, FeatureDType::F16);
            bench_search(&mut c, &mut m, &format!("{label}/f16"), &half, &[1]);
        }
    }
    c.final_summary();
    eprintln!("load average after: {}", loadavg());

    let max = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
    let min = |v: &[f64]| v.iter().copied().fold(f64::MAX, f64::min);
    println!();
    println!(
        "machine ({t} threads): DRAM read {:.1} GB/s (best; {:.1}..{:.1} over {} measurements; {dram1:.1} \
         GB/s on 1 thread), f32 GEMM {:.0} GFLOP/s (best; {:.0}..{:.0}; candle matmul 2048^3)",
        max(&m.dram_seen),
        min(&m.dram_seen),
        max(&m.dram_seen),
        m.dram_seen.len(),
        max(&m.gemm_seen),
        min(&m.gemm_seen),
        max(&m.gemm_seen),
    );
    println!(
        "% DRAM / % GEMM: of the figures measured right before each row (in parentheses), best-of-N timings"
    );
    println!(
        "{:<16} {:>9} {:>5} {:>10} {:>12} {:>16} {:>10} {:>16}",
        "gallery", "vectors", "batch", "ms/search", "gallery GB/s", "% DRAM", "GFLOP/s", "% GEMM"
    );
    for r in &m.rows {
        let gbs = r.bytes as f64 / r.seconds / 1e9;
        let gflops = 2.0 * (r.batch * r.vectors * P) as f64 / r.seconds / 1e9;
        println!(
            "{:<16} {:>9} {:>5} {:>10.3} {:>12.1} {:>7.0}% ({:>5.1}) {:>10.1} {:>7.0}% ({:>5.0})",
            r.name,
            r.vectors,
            r.batch,
            r.seconds * 1e3,
            gbs,
            100.0 * gbs / r.dram,
            r.dram,
            gflops,
            100.0 * gflops / r.gemm,
            r.gemm
        );
    }
}
