//! Pipeline throughput: PNG decoding + resize to 224 + normalisation, in images per second.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use df_data::pipeline::{resize_normalize, Loader, LoaderConfig};
use df_data::toy::{ToyConfig, ToyWorld};

fn bench_pipeline(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("df-data-bench-{}", std::process::id()));
    // 256 generated PNG scenes of 128 px.
    let cfg = ToyConfig {
        image_size: 128,
        ..ToyConfig::default()
    };
    let world = ToyWorld::generate(&cfg.with_counts(64, 0, 0)).expect("toy world");
    let written = world.write(&dir).expect("write toy world");
    let mut paths = written.image_paths();
    paths.truncate(256);
    let n = paths.len() as u64;
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(n));
    group.sample_size(10);
    for workers in [0, 2, 4] {
        let loader = Loader::from_paths(
            paths.clone(),
            LoaderConfig::default()
                .batch_size(32)
                .num_workers(workers)
                .prefetch(2),
            resize_normalize(224),
        )
        .expect("loader");
        group.bench_function(format!("decode+resize224+normalise/{workers}-workers"), |b| {
            b.iter(|| {
                let mut count = 0;
                for batch in loader.epoch(0) {
                    count += batch.expect("batch").len();
                }
                assert_eq!(count as u64, n);
            })
        });
    }
    group.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench_pipeline);
criterion_main!(benches);
