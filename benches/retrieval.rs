//! Gallery search speed against this machine's limits.
//!
//! Galleries of 10k, 100k and 1M token vectors (`N·Q`, `Q = 32`, `P = 256`, random unit `f32`
//! vectors, no model) are searched for the top 10 at batch 1 (memory-bound streaming scan) and
//! batch 64 (compute-bound GEMM). Before that the run measures the machine's DRAM read
//! bandwidth (sum over a 1 GiB buffer, 1 and all threads) and its f32 GEMM rate (candle
//! `matmul` 2048×2048×2048); the summary at the end gives gallery GB/s and GFLOP/s next to them.
//!
//! `cargo bench --bench retrieval` (add `-- --quick` for a shorter run).

use std::hint::black_box;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use criterion::{BenchmarkId, Criterion, Throughput};
use detailfusion::index::{FeatureDType, GalleryIndex, IndexInfo, SearchOptions};

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

/// Best-of-`reps` read bandwidth (GB/s) of summing a 1 GiB buffer on `t` threads.
fn dram_bandwidth(buf: &[f32], t: usize, reps: usize) -> f64 {
    fn sum(s: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        for c in s.chunks_exact(16) {
            for i in 0..16 {
                acc[i] += c[i];
            }
        }
        acc.iter().sum()
    }
    let mut best = f64::MAX;
    for _ in 0..reps {
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

/// Best-of-`reps` GFLOP/s of candle's f32 matmul 2048×2048×2048.
fn gemm_rate(reps: usize) -> f64 {
    let n = 2048;
    let a = Tensor::from_vec(unit_vectors(n * n / P, 7), (n, n), &Device::Cpu).unwrap();
    let b = Tensor::from_vec(unit_vectors(n * n / P, 8), (n, n), &Device::Cpu).unwrap();
    black_box(a.matmul(&b).unwrap());
    let mut best = f64::MAX;
    for _ in 0..reps {
        let start = Instant::now();
        black_box(a.matmul(&b).unwrap());
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (n * n * n) as f64 / best / 1e9
}

/// Median seconds of `f` over at least `min_runs` runs and about `budget`.
fn median_time(mut f: impl FnMut(), min_runs: usize, budget: Duration) -> f64 {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs || (start.elapsed() < budget && times.len() < 200) {
        let t = Instant::now();
        f();
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    times[times.len() / 2]
}

struct Row {
    name: String,
    vectors: usize,
    batch: usize,
    bytes: usize,
    seconds: f64,
}

static ROWS: Mutex<Vec<Row>> = Mutex::new(Vec::new());

fn index_of(vectors: usize, dtype: FeatureDType) -> GalleryIndex {
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
    GalleryIndex::from_raw(info, names, unit_vectors(n * Q, vectors as u64), None).unwrap()
}

fn bench_search(c: &mut Criterion, label: &str, index: &GalleryIndex, batches: &[usize]) {
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
        let seconds = median_time(
            || {
                search();
            },
            5,
            Duration::from_millis(1500),
        );
        ROWS.lock().unwrap().push(Row {
            name: label.to_string(),
            vectors,
            batch: b,
            bytes,
            seconds,
        });
    }
    group.finish();
}

fn probe() {
    let dt = if std::env::var("DF_PROBE").unwrap() == "f16" {
        FeatureDType::F16
    } else {
        FeatureDType::F32
    };
    let index = index_of(1_000_000, dt);
    for b in [1usize, 2, 4, 5, 6, 8] {
        let queries = Tensor::from_vec(unit_vectors(b, 5), (b, P), &Device::Cpu).unwrap();
        let t = median_time(
            || {
                black_box(index.search_features(&queries, &SearchOptions::top(10)).unwrap());
            },
            5,
            Duration::from_secs(1),
        );
        let gf = 2.0 * (b * 1_000_000 * P) as f64 / t / 1e9;
        println!(
            "b={b} {:.1} ms  {:.1} GB/s {gf:.1} GFLOP/s",
            t * 1e3,
            1.024e9 / t / 1e9
        );
    }
}

fn main() {
    if std::env::var("DF_PROBE").is_ok() {
        return probe();
    }
    let mut c = Criterion::default().configure_from_args();
    let t = threads();
    eprintln!("load average before: {}", loadavg());

    // The machine's limits.
    let buf: Vec<f32> = (0..(1usize << 28)).map(|i| (i & 1023) as f32).collect(); // 1 GiB, touched
    let dram1 = dram_bandwidth(&buf, 1, 5);
    let dram = dram_bandwidth(&buf, t, 5);
    drop(buf);
    let gemm = gemm_rate(5);
    eprintln!(
        "machine: DRAM read {dram:.1} GB/s on {t} threads ({dram1:.1} GB/s on 1), f32 GEMM {gemm:.0} GFLOP/s \
         (candle matmul 2048^3, {t} threads)"
    );

    for (vectors, label) in [(10_000, "10k"), (100_000, "100k"), (1_000_000, "1M")] {
        let index = index_of(vectors, FeatureDType::F32);
        bench_search(&mut c, &format!("{label}/f32"), &index, &[1, 64]);
        if vectors == 100_000 {
            // The same gallery memory-mapped from an index file.
            let path = std::env::temp_dir().join(format!("df-bench-{}.dfindex", std::process::id()));
            index.save(&path).unwrap();
            let mapped = GalleryIndex::load(&path).unwrap();
            assert!(mapped.is_mapped());
            bench_search(&mut c, &format!("{label}/f32-mapped"), &mapped, &[1]);
            drop(mapped);
            let _ = std::fs::remove_file(&path);
        }
        if vectors == 1_000_000 {
            drop(index);
            let half = index_of(vectors, FeatureDType::F16);
            bench_search(&mut c, &format!("{label}/f16"), &half, &[1]);
        }
    }
    c.final_summary();

    let gemm_check = gemm_rate(3);
    eprintln!("load average after: {}", loadavg());
    println!();
    println!(
        "machine: DRAM read {dram:.1} GB/s ({t} threads; {dram1:.1} GB/s on 1 thread), \
         GEMM {gemm:.0} GFLOP/s (re-measured at the end: {gemm_check:.0})"
    );
    println!(
        "{:<16} {:>9} {:>5} {:>10} {:>12} {:>9} {:>10} {:>8}",
        "gallery", "vectors", "batch", "ms/search", "gallery GB/s", "% DRAM", "GFLOP/s", "% GEMM"
    );
    for r in ROWS.lock().unwrap().iter() {
        let gbs = r.bytes as f64 / r.seconds / 1e9;
        let gflops = 2.0 * (r.batch * r.vectors * P) as f64 / r.seconds / 1e9;
        println!(
            "{:<16} {:>9} {:>5} {:>10.3} {:>12.1} {:>8.0}% {:>10.1} {:>7.0}%",
            r.name,
            r.vectors,
            r.batch,
            r.seconds * 1e3,
            gbs,
            100.0 * gbs / dram,
            gflops,
            100.0 * gflops / gemm
        );
    }
}
