//! Writing `***` for every secret value in a task's output, as it is stored (and so as it
//! is streamed, which reads what was stored).
//!
//! Output arrives in chunks that may split a value anywhere, so the redactor holds back the
//! last `longest - 1` bytes of what it has seen (they may be the start of a value) until the
//! next chunk or the end.

/// What a secret value is replaced with.
pub const MASK: &[u8] = b"***";

pub struct Redactor {
    /// Longest first, so that a value containing another is masked whole.
    secrets: Vec<Vec<u8>>,
    held: Vec<u8>,
}

impl Redactor {
    pub fn new<'a>(values: impl IntoIterator<Item = &'a String>) -> Redactor {
        let mut secrets: Vec<Vec<u8>> = values
            .into_iter()
            .filter(|v| !v.is_empty())
            .map(|v| v.as_bytes().to_vec())
            .collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Redactor {
            secrets,
            held: Vec::new(),
        }
    }

    fn longest(&self) -> usize {
        self.secrets.first().map_or(0, Vec::len)
    }

    /// Takes a chunk; answers what can be written now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.held.extend_from_slice(chunk);
        let masked = self.mask(&self.held);
        // Keep back what could be the start of a value cut by the chunk's end.
        let keep = self.longest().saturating_sub(1).min(masked.len());
        let (out, tail) = masked.split_at(masked.len() - keep);
        // The tail was masked already where it held a whole value; it is re-masked with the
        // next chunk, which is harmless (`***` holds no value of one byte or more unless a
        // value is `*`, `**` or `***`, which would mask itself).
        self.held = tail.to_vec();
        out.to_vec()
    }

    /// The end of the output: whatever was held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let out = self.mask(&self.held);
        self.held.clear();
        out
    }

    fn mask(&self, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        'scan: while i < bytes.len() {
            for s in &self.secrets {
                if bytes[i..].starts_with(s) {
                    out.extend_from_slice(MASK);
                    i += s.len();
                    continue 'scan;
                }
            }
            out.push(bytes[i]);
            i += 1;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(values: &[&str], chunks: &[&str]) -> String {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        let mut r = Redactor::new(&values);
        let mut out = Vec::new();
        for c in chunks {
            out.extend(r.push(c.as_bytes()));
        }
        out.extend(r.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn values_are_masked_wherever_the_chunks_cut_them() {
        assert_eq!(redact(&["hunter2"], &["pw=hunter2\n"]), "pw=***\n");
        assert_eq!(
            redact(&["hunter2"], &["pw=hun", "te", "r2 ok\n"]),
            "pw=*** ok\n"
        );
        assert_eq!(
            redact(&["hunter2"], &["h", "u", "n", "t", "e", "r", "2"]),
            "***"
        );
        assert_eq!(redact(&["abc", "abcdef"], &["xabcdefy abc"]), "x***y ***");
        assert_eq!(redact(&[], &["nothing to hide"]), "nothing to hide");
        assert_eq!(
            redact(&[""], &["empty values mask nothing"]),
            "empty values mask nothing"
        );
        assert_eq!(redact(&["hunter2"], &["hunter", "x"]), "hunterx");
    }
}
