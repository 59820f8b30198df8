//! Measuring a built plan on data: accuracy ([`evaluate`]), a teacher's soft outputs,
//! latency and throughput; callers of [`Plan::run`], apart from the executor itself.

use super::{Plan, RuntimeError, Workspace};

/// Top-1 accuracy of `plan` on `images`/`labels`, batches of 256 over `threads` threads.
pub fn evaluate(plan: &Plan, images: &[f32], labels: &[u8], threads: usize) -> Result<f64, RuntimeError> {
    let n = labels.len();
    if n == 0 {
        return Ok(0.0);
    }
    let per = plan.input_len();
    if images.len() != n * per {
        return Err(RuntimeError::InputShape { got: images.len(), per_sample: per, shape: plan.input_shape.clone() });
    }
    let classes = plan.output_len();
    let threads = threads.max(1);
    let share = n.div_ceil(threads);
    let correct: Result<Vec<usize>, RuntimeError> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let lo = (t * share).min(n);
                let hi = ((t + 1) * share).min(n);
                s.spawn(move || {
                    let mut ws = Workspace::default();
                    let mut correct = 0;
                    let mut start = lo;
                    while start < hi {
                        let end = (start + 256).min(hi);
                        let out = plan.run(&images[start * per..end * per], end - start, &mut ws)?;
                        for (row, &y) in out.chunks_exact(classes).zip(&labels[start..end]) {
                            if crate::runtime::kernels::argmax(row) == y as usize {
                                correct += 1;
                            }
                        }
                        start = end;
                    }
                    Ok(correct)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("evaluation thread panicked")).collect()
    });
    Ok(correct?.iter().sum::<usize>() as f64 / n as f64)
}

/// `softmax(logits / temperature)` of the head output for every image (the logits are
/// read before a final Softmax node), for distillation.
pub fn teacher_outputs(plan: &Plan, images: &[f32], temperature: f32) -> Result<Vec<f32>, RuntimeError> {
    let per = plan.input_len();
    let n = images.len() / per;
    let classes = plan.output_len();
    let logits_name = plan.logits_name.clone();
    let mut out = vec![0.0f32; n * classes];
    let mut ws = Workspace::default();
    for start in (0..n).step_by(256) {
        let end = (start + 256).min(n);
        plan.run_observe(&images[start * per..end * per], end - start, &mut ws, &mut |name, data| {
            if name == logits_name {
                out[start * classes..end * classes].copy_from_slice(&data[..(end - start) * classes]);
            }
        })?;
    }
    out.iter_mut().for_each(|v| *v /= temperature);
    crate::runtime::kernels::softmax_rows(&mut out, classes);
    Ok(out)
}

/// Batch-1 latencies in µs, one per image, one thread, float input to logits.
pub fn latencies_us(plan: &Plan, images: &[f32], count: usize) -> Result<Vec<f64>, RuntimeError> {
    let per = plan.input_len();
    let n = (images.len() / per).min(count);
    let mut ws = Workspace::default();
    // Warm up buffers and caches.
    for i in 0..n.min(50) {
        plan.run(&images[i * per..(i + 1) * per], 1, &mut ws)?;
    }
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let t = std::time::Instant::now();
        let y = plan.run(&images[i * per..(i + 1) * per], 1, &mut ws)?;
        std::hint::black_box(y);
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Images per second streaming `images` in batches of `batch` on `threads` threads,
/// repeated until at least `min_seconds` have passed.
pub fn throughput(plan: &Plan, images: &[f32], batch: usize, threads: usize, min_seconds: f64) -> Result<f64, RuntimeError> {
    let per = plan.input_len();
    let n = images.len() / per;
    let batches = n / batch.max(1);
    if batches == 0 {
        return Ok(0.0);
    }
    let start = std::time::Instant::now();
    let mut done = 0usize;
    while done == 0 || start.elapsed().as_secs_f64() < min_seconds {
        let r: Result<Vec<usize>, RuntimeError> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.max(1))
                .map(|t| {
                    s.spawn(move || {
                        let mut ws = Workspace::default();
                        let mut count = 0;
                        for b in (t..batches).step_by(threads.max(1)) {
                            let x = &images[b * batch * per..(b + 1) * batch * per];
                            std::hint::black_box(plan.run(x, batch, &mut ws)?);
                            count += batch;
                        }
                        Ok(count)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("benchmark thread panicked")).collect()
        });
        done += r?.iter().sum::<usize>();
    }
    Ok(done as f64 / start.elapsed().as_secs_f64())
}
