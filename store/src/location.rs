//! `s3://bucket/prefix`, and the place a chain lives: a local directory or an S3 prefix.

use std::fmt;
use std::path::PathBuf;

use crate::StoreError;

/// A bucket and a key prefix, as the reference reads `--s3`: a non-empty prefix always ends
/// with `/`; `s3://bucket` has the empty prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Path {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix: empty, or ending with `/`.
    pub prefix: String,
}

impl S3Path {
    /// Parses `s3://bucket[/prefix]`; `flag` names the option in errors.
    pub fn parse(flag: &str, text: &str) -> Result<S3Path, StoreError> {
        let bad = |reason: &str| StoreError::Location {
            flag: flag.to_string(),
            value: text.to_string(),
            reason: reason.to_string(),
        };
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| bad("an S3 path starts with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("the bucket name is empty"));
        }
        if !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(bad(
                "a bucket name holds lowercase letters, digits, '-', '.' and '_'",
            ));
        }
        if prefix.split('/').any(|part| part == "." || part == "..") {
            return Err(bad("the prefix may not hold '.' or '..' segments"));
        }
        let mut prefix = prefix.to_string();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Path {
            bucket: bucket.to_string(),
            prefix,
        })
    }

    /// The key of `name` under the prefix.
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// `s3://bucket/prefix+name`, as the reference writes `storageRef`.
    pub fn uri(&self, name: &str) -> String {
        format!("s3://{}/{}", self.bucket, self.key(name))
    }

    /// This path with `more` (a relative key path) appended.
    pub fn join(&self, more: &str) -> S3Path {
        let mut prefix = self.key(more.trim_matches('/'));
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        S3Path {
            bucket: self.bucket.clone(),
            prefix,
        }
    }
}

impl fmt::Display for S3Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Where a published chain is: a directory, or an S3 prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainPlace {
    /// A local published directory.
    Dir(PathBuf),
    /// `s3://bucket/prefix`.
    S3(S3Path),
}

impl ChainPlace {
    /// `s3://…` is S3, anything else a directory.
    pub fn parse(flag: &str, text: &str) -> Result<ChainPlace, StoreError> {
        if text.starts_with("s3://") {
            S3Path::parse(flag, text).map(ChainPlace::S3)
        } else {
            Ok(ChainPlace::Dir(PathBuf::from(text)))
        }
    }
}

impl fmt::Display for ChainPlace {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChainPlace::Dir(dir) => write!(f, "{}", dir.display()),
            ChainPlace::S3(path) => path.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_as_the_reference_reads_them() {
        let p = S3Path::parse("--s3", "s3://bucket").unwrap();
        assert_eq!((p.bucket.as_str(), p.prefix.as_str()), ("bucket", ""));
        let p = S3Path::parse("--s3", "s3://bucket/").unwrap();
        assert_eq!(p.prefix, "");
        let p = S3Path::parse("--s3", "s3://bucket/a/b").unwrap();
        assert_eq!(p.prefix, "a/b/");
        assert_eq!(p.uri("chunk-0.bin"), "s3://bucket/a/b/chunk-0.bin");
        assert_eq!(p.join("orders/o-1").prefix, "a/b/orders/o-1/");
        for bad in [
            "bucket/x",
            "s3://",
            "s3:///x",
            "s3://Bucket/x",
            "s3://b/../x",
        ] {
            let e = S3Path::parse("--s3", bad).unwrap_err().to_string();
            assert!(e.starts_with("--s3"), "{e}");
        }
    }

    #[test]
    fn places() {
        assert!(matches!(
            ChainPlace::parse("--chunk-dir", "s3://b/p").unwrap(),
            ChainPlace::S3(_)
        ));
        assert_eq!(
            ChainPlace::parse("--chunk-dir", "out/x").unwrap(),
            ChainPlace::Dir("out/x".into())
        );
    }
}
