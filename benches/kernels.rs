//! Inference speed of every encoding the runtime can run, against our own f32 path in
//! the same run: zoo models briefly trained on Fashion-MNIST, then pruned / quantized /
//! shared, timed interleaved (f32, then each encoding, repeated) so the machine's load
//! hits all alike; medians over rounds and ratios to f32 are printed.
//!
//! Run: `cargo bench --bench kernels [-- MODEL...]` (models: mlp lenet300 lenet5;
//! env SQUEEZE_BENCH_ROUNDS, default 30).

use std::time::Instant;

use squeeze::compress::{prune, quantize, share};
use squeeze::data;
use squeeze::model::{zoo, Model};
use squeeze::runtime::exec::{Plan, Workspace};
use squeeze::store;
use squeeze::train::{self, TrainConfig};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Mean µs per image at batch 1 over `count` images (one thread).
fn b1_us(plan: &Plan, images: &[f32], count: usize, ws: &mut Workspace) -> f64 {
    let per = plan.input_len();
    let t = Instant::now();
    for i in 0..count {
        std::hint::black_box(plan.run(&images[i * per..(i + 1) * per], 1, ws).unwrap());
    }
    t.elapsed().as_secs_f64() * 1e6 / count as f64
}

/// Images per second at batch 256, `batches` batches on each of `threads` threads
/// (each thread warms its workspace with one untimed batch first).
fn b256(plan: &Plan, images: &[f32], batches: usize, threads: usize) -> f64 {
    let per = plan.input_len();
    let avail = images.len() / per / 256;
    let barrier = std::sync::Barrier::new(threads);
    let secs: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|th| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut ws = Workspace::default();
                    std::hint::black_box(plan.run(&images[..256 * per], 256, &mut ws).unwrap());
                    barrier.wait();
                    let t = Instant::now();
                    for b in 0..batches {
                        let b = (b * threads + th) % avail;
                        std::hint::black_box(plan.run(&images[b * 256 * per..(b + 1) * 256 * per], 256, &mut ws).unwrap());
                    }
                    t.elapsed().as_secs_f64()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    (threads * batches * 256) as f64 / secs.iter().cloned().fold(0.0, f64::max)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let models: Vec<String> = if args.is_empty() { vec!["mlp".into(), "lenet300".into(), "lenet5".into()] } else { args };
    let rounds: usize = std::env::var("SQUEEZE_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let dir = data::locate(None).expect("Fashion-MNIST not found");
    let splits = data::load_fashion_mnist(&dir, 5000, Some(6000), Some(2560)).expect("dataset");
    let per = splits.train.sample_len();
    for name in &models {
        let mut m = Model::init(zoo::build(name).expect("zoo model"), 1).unwrap();
        let cfg = TrainConfig { epochs: 1, ..TrainConfig::default() };
        train::train(&mut m, &splits.train.images, &splits.train.labels, &cfg, &mut |_| {});
        let calib = &splits.train.images[..1000 * per];
        let mut encodings: Vec<(String, Plan)> = vec![("f32".into(), store::model_plan(&m).unwrap())];
        encodings.push(("int8".into(), store::sqz_plan(&quantize::quantize(&m, &quantize::Precision::int8_all(&m, quantize::Mode::Full), calib).unwrap()).unwrap()));
        let mut p50 = m.clone();
        prune::magnitude(&mut p50, 0.5, prune::Scope::Layer, &[]).unwrap();
        encodings.push(("int8-pruned50".into(), store::sqz_plan(&quantize::quantize(&p50, &quantize::Precision::int8_all(&p50, quantize::Mode::Full), calib).unwrap()).unwrap()));
        let mut p90 = m.clone();
        prune::magnitude(&mut p90, 0.9, prune::Scope::Layer, &[]).unwrap();
        encodings.push(("f32-pruned90".into(), store::sqz_plan(&store::stored_f32(&p90)).unwrap()));
        encodings.push(("int8-pruned90".into(), store::sqz_plan(&quantize::quantize(&p90, &quantize::Precision::int8_all(&p90, quantize::Mode::Full), calib).unwrap()).unwrap()));
        let mut shared = m.clone();
        share::share(&mut shared, &share::ShareConfig { linear_bits: 5, conv_bits: 8, per_layer: Default::default(), layers: vec![] }).unwrap();
        encodings.push(("codebook".into(), store::sqz_plan(&store::stored_f32(&shared)).unwrap()));
        // Building a plan times the kernels an encoding allows: show what that costs.
        for (enc, file) in [("f32-pruned90", store::stored_f32(&p90)), ("codebook", store::stored_f32(&shared))] {
            let t = Instant::now();
            let _ = store::sqz_plan(&file).unwrap();
            println!("{name}: building the {enc} plan (kernels timed) took {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
        }
        let images = &splits.test.images;
        let mut lat = vec![Vec::new(); encodings.len()];
        let mut thr1 = vec![Vec::new(); encodings.len()];
        let mut thr2 = vec![Vec::new(); encodings.len()];
        let mut ws = Workspace::default();
        for (_, plan) in &encodings {
            b1_us(plan, images, 50, &mut ws);
        }
        // Short samples, finely interleaved: under load the best of many short samples
        // is the least disturbed estimate of each kernel's own speed.
        for _ in 0..rounds {
            for (i, (_, plan)) in encodings.iter().enumerate() {
                lat[i].push(b1_us(plan, images, 50, &mut ws));
                thr1[i].push(b256(plan, images, 2, 1));
                thr2[i].push(b256(plan, images, 2, 2));
            }
        }
        let best = |v: &[f64], low: bool| v.iter().cloned().fold(if low { f64::MAX } else { 0.0 }, |a, b| if low { a.min(b) } else { a.max(b) });
        println!("model {name} ({rounds} interleaved rounds; best sample, median in brackets)");
        println!("{:<14} {:>16} {:>20} {:>20} {:>7} {:>7} {:>7}  kernel", "encoding", "b1 µs", "b256 1 thread/s", "b256 2 threads/s", "b1×f32", "1thr×", "2thr×");
        let (l0, t10, t20) = (best(&lat[0], true), best(&thr1[0], false), best(&thr2[0], false));
        for (i, (enc, plan)) in encodings.iter().enumerate() {
            let (l, t1, t2) = (best(&lat[i], true), best(&thr1[i], false), best(&thr2[i], false));
            let (ml, mt1, mt2) = (median(&mut lat[i]), median(&mut thr1[i]), median(&mut thr2[i]));
            println!(
                "{enc:<14} {l:>7.2} ({ml:>6.2}) {t1:>9.0} ({mt1:>8.0}) {t2:>9.0} ({mt2:>8.0}) {:>6.2}× {:>6.2}× {:>6.2}×  {}",
                l0 / l,
                t1 / t10,
                t2 / t20,
                plan.kernel_description()
            );
        }
    }
}
