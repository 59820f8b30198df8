//! Batch-1 latency of several model files measured in the same process, in interleaved
//! rounds (each round times every file over the same first 1,000 test images), so a
//! loaded machine affects them alike: compares e.g. a full-int8 file with float
//! nonlinearities against the same model with integer ones.
//!
//!     cargo run --release --example latency_pair -- a.sqz b.sqz [ROUNDS]
//!
//! Prints, per file, the median over rounds of each round's median batch-1 latency and
//! the range of those round medians.
use std::path::Path;

use anyhow::Result;
use squeeze::runtime::exec;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (files, rounds): (Vec<&String>, usize) = match args.last().and_then(|a| a.parse().ok()) {
        Some(r) => (args[..args.len() - 1].iter().collect(), r),
        None => (args.iter().collect(), 5),
    };
    anyhow::ensure!(!files.is_empty(), "usage: latency_pair MODEL... [ROUNDS]");
    let dir = squeeze::data::locate(None)?;
    let splits = squeeze::data::load_fashion_mnist(&dir, 1000, Some(2000), Some(1000))?;
    let plans = files.iter().map(|f| squeeze::store::read(Path::new(f.as_str()))?.plan().map_err(Into::into)).collect::<Result<Vec<_>>>()?;
    let mut medians = vec![Vec::new(); plans.len()];
    for _ in 0..rounds {
        for (plan, m) in plans.iter().zip(&mut medians) {
            let mut lat = exec::latencies_us(plan, &splits.test.images, 1000)?;
            m.push(median(&mut lat));
        }
    }
    for ((file, plan), m) in files.iter().zip(&plans).zip(&mut medians) {
        let (lo, hi) = (m.iter().cloned().fold(f64::INFINITY, f64::min), m.iter().cloned().fold(0.0, f64::max));
        println!("{file}: batch-1 median {:.2} us (round medians {lo:.2}..{hi:.2}, {rounds} rounds), kernel {}", median(m), plan.kernel_description());
    }
    Ok(())
}
