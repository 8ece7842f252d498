//! Thread helpers: large batches across the cores, small ones inline.

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

/// Batches at least this large are split across the cores.
const PARALLEL_MIN: usize = 64;

/// `f(index, item)` for every item, in order; large batches split across the cores.
/// The first error (by index) wins.
pub fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(usize, &T) -> Result<R, RequestError> + Sync,
) -> Result<Vec<R>, RequestError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if items.len() < PARALLEL_MIN || threads == 1 {
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| f(i, item))
            .collect();
    }
    let per = items.len().div_ceil(threads);
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
