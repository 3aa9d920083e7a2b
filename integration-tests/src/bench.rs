//! What the framework crates' benches share: the paired measurement of an added cost.

use std::future::Future;
use std::time::Duration;

/// Requests per block in the paired benches (about a millisecond of requests).
pub const PAIRED_BLOCK: u64 = 1000;

/// The time `with` takes beyond `without` for `iters` requests each, measured in pairs: blocks
/// of [`PAIRED_BLOCK`] requests alternate between the two, so the machine's drift between two
/// benchmarks cannot enter the difference. Each closure runs `n` requests and returns the time
/// they took (for criterion's `iter_custom`).
pub async fn paired<Without, WithoutRan, With, WithRan>(
    iters: u64,
    mut without: Without,
    mut with: With,
) -> Duration
where
    Without: FnMut(u64) -> WithoutRan,
    WithoutRan: Future<Output = Duration>,
    With: FnMut(u64) -> WithRan,
    WithRan: Future<Output = Duration>,
{
    let (mut bare, mut wrapped) = (Duration::ZERO, Duration::ZERO);
    let mut left = iters;
    while left > 0 {
        let n = left.min(PAIRED_BLOCK);
        bare += without(n).await;
        wrapped += with(n).await;
        left -= n;
    }
    wrapped.saturating_sub(bare)
}
