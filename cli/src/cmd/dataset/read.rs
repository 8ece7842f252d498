//! Reading a range of envelopes on every core: each file read, parsed and its Ed25519
//! signature checked (most of an envelope's cost) in parallel, then handed over in chain
//! order, a window at a time, so memory stays bounded by the window whatever the range.

use std::path::Path;

use stream::chain::{ChunkEnvelope, SignatureVerdict};

use super::read_envelope;
use crate::output::CliError;

const WINDOW: u64 = 2048;

/// One chunk of the range: `None` when `chunk-N.json` is not there.
pub type Checked = Option<(ChunkEnvelope, SignatureVerdict)>;

/// Calls `each(index, chunk)` for `from..=to` in order.
pub fn for_each_envelope(
    dir: &Path,
    from: u64,
    to: u64,
    mut each: impl FnMut(u64, Checked) -> Result<(), CliError>,
) -> Result<(), CliError> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let mut start = from;
    while start <= to {
        let end = to.min(start.saturating_add(WINDOW - 1));
        let count = end - start + 1;
        let per = count.div_ceil(threads).max(1);
        let parts: Vec<Result<Vec<Checked>, CliError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| start + t * per)
                .take_while(|&first| first <= end)
                .map(|first| {
                    let last = end.min(first + per - 1);
                    scope.spawn(move || {
                        (first..=last)
                            .map(|i| {
                                Ok(read_envelope(dir, i)?.map(|c| {
                                    let verdict = SignatureVerdict::of(&c);
                                    (c, verdict)
                                }))
                            })
                            .collect::<Result<Vec<_>, CliError>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(CliError::Input("a reader thread panicked".into())))
                })
                .collect()
        });
        let mut index = start;
        for part in parts {
            for chunk in part? {
                each(index, chunk)?;
                index += 1;
            }
        }
        if end == u64::MAX {
            break;
        }
        start = end + 1;
    }
    Ok(())
}
