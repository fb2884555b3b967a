//! Throughput and size of the point codec on realistic 1 Hz scooter traces.
//!
//! Run with `cargo bench -p kickstand-domain --bench codec`. Prints nanoseconds per point for
//! encode and decode and bytes per point, for a moving and a parked hour of fixes.

use kickstand_domain::codec;

use std::hint::black_box;
use std::time::{Duration, Instant};

#[path = "../tests/traces/mod.rs"]
mod traces;
use traces::{moving_trace, parked_trace};

/// Runs `f` in batches for about `budget` and returns nanoseconds per point of the fastest
/// batch; the minimum shrugs off preemption by other processes on a busy machine.
fn time_per_point(points: usize, budget: Duration, mut f: impl FnMut()) -> f64 {
    for _ in 0..3 {
        f();
    }
    let start = Instant::now();
    let mut best = f64::INFINITY;
    while start.elapsed() < budget {
        let batch = Instant::now();
        for _ in 0..10 {
            f();
        }
        best = best.min(batch.elapsed().as_nanos() as f64 / (10.0 * points as f64));
    }
    best
}

fn main() {
    let n = 3600;
    let budget = Duration::from_millis(1500);
    for (name, points) in [
        ("moving", moving_trace(7, n)),
        ("parked", parked_trace(7, n)),
    ] {
        let mut buf = Vec::new();
        codec::encode(&points, &mut buf);
        let bytes_per_point = buf.len() as f64 / n as f64;
        let mut decoded = Vec::with_capacity(n);
        codec::decode(&buf, &mut decoded).expect("decodes");
        assert_eq!(decoded, points, "round trip");
        let encode_ns = time_per_point(n, budget, || {
            buf.clear();
            codec::encode(black_box(&points), &mut buf);
            black_box(&buf);
        });
        let decode_ns = time_per_point(n, budget, || {
            decoded.clear();
            codec::decode(black_box(&buf), &mut decoded).expect("decodes");
            black_box(&decoded);
        });
        println!(
            "{name}: {n} points, {bytes_per_point:.3} bytes/point, encode {encode_ns:.1} ns/point, decode {decode_ns:.1} ns/point"
        );
    }
}
