//! Thread helpers: large batches across the cores, small ones inline.

use std::sync::OnceLock;

use crate::error::RequestError;

/// Batches up to this size run on the async worker (a few signatures take less than a
/// thread hand-off); larger ones on the blocking pool.
const INLINE_MAX: usize = 4;

/// Runs a request's work inline when it is small, else off the async workers.
pub async fn offload<T: Send + 'static>(
    items: usize,
    f: impl FnOnce() -> Result<T, RequestError> + Send + 'static,
) -> Result<T, RequestError> {
    if items <= INLINE_MAX {
        f()
    } else {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|_| RequestError::Internal("a worker thread failed".into()))?
    }
}

/// The cores keyd may use, asked once: `available_parallelism` reads the cgroup's CPU
/// quota from /proc and /sys on every call (strace: six files opened and read), which a
/// request must not pay.
fn cores() -> usize {
    static CORES: OnceLock<usize> = OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Batches at least this large are split across the cores.
const PARALLEL_MIN: usize = 64;

/// `f(index, item)` for every item, in order; large batches split across the cores.
/// The first error (by index) wins.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(usize, &T) -> Result<R, RequestError> + Sync,
) -> Result<Vec<R>, RequestError> {
    if items.len() < PARALLEL_MIN || cores() == 1 {
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| f(i, item))
            .collect();
    }
    let per = items.len().div_ceil(cores());
    let parts: Vec<Result<Vec<R>, RequestError>> = std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(per)
            .enumerate()
            .map(|(part, chunk)| {
                let f = &f;
                scope.spawn(move || {
                    chunk
                        .iter()
                        .enumerate()
                        .map(|(i, item)| f(part * per + i, item))
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(RequestError::Internal("a signing thread failed".into()))
                })
            })
            .collect()
    });
    let mut out = Vec::with_capacity(items.len());
    for part in parts {
        out.extend(part?);
    }
    Ok(out)
}
