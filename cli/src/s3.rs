//! S3 for the commands: opening a bucket from the flags and the environment, and a chain
//! in S3 brought into a private temporary directory for the commands that read one.

use std::path::{Path, PathBuf};

use store::fetch::{fetch_chain, Fetch};
use store::{ChainPlace, Patience, S3Bucket, S3Path, S3Settings};

use crate::cli::S3Options;
use crate::output::{input, CliError};

/// The runtime S3 requests run on (two workers: uploads overlap with sealing).
pub fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Input(format!("cannot start the S3 client: {e}")))
}

/// The bucket of `path`, reached as `options` and the environment say.
pub fn open(path: &S3Path, options: &S3Options) -> Result<S3Bucket, CliError> {
    let settings =
        S3Settings::resolve(options.s3_region.as_deref(), options.s3_endpoint.as_deref())
            .map_err(input)?;
    S3Bucket::open(&path.bucket, &settings, Patience::default()).map_err(input)
}

/// A published chain as a local directory: the directory itself, or a private temporary
/// copy of one in S3 (removed when this is dropped).
pub struct LocalChain {
    dir: PathBuf,
    _copy: Option<tempfile::TempDir>,
}

impl LocalChain {
    /// The directory to read.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `text` (a directory or `s3://bucket/prefix`, given as `flag`): with S3, `what` is
    /// downloaded first.
    pub fn open(
        flag: &str,
        text: &Path,
        what: Fetch,
        options: &S3Options,
    ) -> Result<LocalChain, CliError> {
        let place = match text.to_str() {
            Some(t) => ChainPlace::parse(flag, t).map_err(input)?,
            None => ChainPlace::Dir(text.to_path_buf()),
        };
        match place {
            ChainPlace::Dir(dir) => Ok(LocalChain { dir, _copy: None }),
            ChainPlace::S3(path) => {
                let bucket = open(&path, options)?;
                let copy = tempfile::Builder::new()
                    .prefix("peaqos-chain-")
                    .tempdir()
                    .map_err(|e| input(format!("cannot make a temporary directory: {e}")))?;
                runtime()?
                    .block_on(fetch_chain(&bucket, &path, copy.path(), what))
                    .map_err(|e| CliError::Network(format!("{flag} {path}: {e}")))?;
                Ok(LocalChain {
                    dir: copy.path().to_path_buf(),
                    _copy: Some(copy),
                })
            }
        }
    }
}
