//! Artifacts as the blob store keeps them: a file, or a directory's files, packed as a tar
//! whose entries are sorted and whose times, owners and modes are normalised, so the same
//! files always make the same archive, and so the same digest. The CLI packs a service's
//! `model:` with it; an agent packs what a stage publishes (`artifacts:`) with it; build
//! contexts are packed the same way, less a checkout's `.git` ([`pack_context`]).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The archive of `path`, refused (`FileTooLarge`) once it would pass `limit` bytes.
pub fn pack(path: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    pack_except(path, limit, None)
}

/// A build context as the Docker Engine takes it: [`pack`] of the directory, without its
/// top-level `.git` (a checkout's history is no part of an image).
pub fn pack_context(dir: &Path, limit: usize) -> std::io::Result<Vec<u8>> {
    pack_except(dir, limit, Some(".git"))
}

fn pack_except(path: &Path, limit: usize, skip: Option<&str>) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Bounded(Vec::new(), limit));
    tar.follow_symlinks(false);
    // The Engine's tar reader does not take GNU sparse entries.
    tar.sparse(false);
    tar.mode(tar::HeaderMode::Deterministic);
    if path.is_dir() {
        let mut files = Vec::new();
        walk(path, Path::new(""), &mut files)?;
        if let Some(skip) = skip {
            files.retain(|f| !f.starts_with(skip));
        }
        files.sort();
        for rel in files {
            tar.append_path_with_name(path.join(&rel), &rel)?;
        }
    } else {
        let name = path.file_name().ok_or(std::io::ErrorKind::InvalidInput)?;
        tar.append_path_with_name(path, name)?;
    }
    Ok(tar.into_inner()?.0)
}

/// A blob as `Blobs.PutBlob` takes it: chunks of at most 1 MiB, the first naming the digest
/// (one empty chunk for an empty blob).
pub fn put_chunks(digest: &str, bytes: &[u8]) -> Vec<crate::pb::BlobChunk> {
    let mut chunks: Vec<crate::pb::BlobChunk> = bytes
        .chunks(1 << 20)
        .map(|c| crate::pb::BlobChunk {
            data: c.to_vec(),
            digest: String::new(),
        })
        .collect();
    if chunks.is_empty() {
        chunks.push(crate::pb::BlobChunk::default());
    }
    chunks[0].digest = digest.to_string();
    chunks
}

/// Every file (and symlink) below `dir`, as paths relative to it.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir.join(rel))? {
        let entry = entry?;
        let path = rel.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            walk(dir, &path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// A buffer that refuses to grow past its limit.
struct Bounded(Vec<u8>, usize);

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.0.len() + buf.len() > self.1 {
            return Err(std::io::ErrorKind::FileTooLarge.into());
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_files_pack_the_same_and_the_limit_holds() {
        let dir = std::env::temp_dir().join(format!("kiln-artifact-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("b")).unwrap();
        std::fs::write(dir.join("b/w.json"), "{}").unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap();
        let first = pack(&dir, 1 << 20).unwrap();
        std::fs::write(dir.join("a.txt"), "a").unwrap(); // a new mtime, the same bytes
        assert_eq!(pack(&dir, 1 << 20).unwrap(), first);
        let e = pack(&dir, 100).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::FileTooLarge);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
