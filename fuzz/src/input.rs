//! How the fuzzer's bytes become a detector run: a small header (terminal size, read boundaries), then
//! the terminal output. `cargo xtask fuzz` writes its seed corpus (the recorded CLI logins) in this
//! shape.

/// Most read boundaries one input carries.
pub const MAX_CUTS: usize = 32;

/// One detector run: a terminal size, the output and where the reads split it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FuzzInput<'a> {
    /// Terminal width.
    pub cols: u16,
    /// Terminal height.
    pub rows: u16,
    /// Offsets (into `output`, sorted, possibly repeated) where one read ends and the next begins.
    pub cuts: Vec<usize>,
    /// What the program wrote.
    pub output: &'a [u8],
}

impl<'a> FuzzInput<'a> {
    /// Reads `[cols-1, rows-1, n, n x u16 LE cut, output...]`; `None` when the header is short.
    pub fn decode(data: &'a [u8]) -> Option<FuzzInput<'a>> {
        let (&[cols, rows, n], rest) = data.split_first_chunk::<3>()?;
        let n = usize::from(n) % (MAX_CUTS + 1);
        if rest.len() < 2 * n {
            return None;
        }
        let (cuts, output) = rest.split_at(2 * n);
        let mut cuts: Vec<usize> = cuts
            .chunks_exact(2)
            .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (output.len() + 1))
            .collect();
        cuts.sort_unstable();
        Some(FuzzInput {
            cols: u16::from(cols) + 1,
            rows: u16::from(rows % 100) + 1,
            cuts,
            output,
        })
    }

    /// The output split into reads at the cuts.
    pub fn reads(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let ends = self.cuts.iter().copied().chain([self.output.len()]);
        let mut start = 0;
        ends.map(move |end| {
            let read = &self.output[start..end];
            start = end;
            read
        })
    }
}
