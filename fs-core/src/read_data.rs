//! What a read returns: the file's bytes as pieces of the cached chunks they lie in, not
//! copied into one buffer, so that a frontend can hand them on as they are (the NFS gateway
//! writes them to its socket with one `writev`; the FUSE reply of a read inside one block
//! borrows its single piece).

use std::borrow::Cow;

use bytes::Bytes;

/// The bytes of one read, in order.
#[derive(Clone, Debug, Default)]
pub struct ReadData {
    pieces: Vec<Bytes>,
    len: usize,
}

impl ReadData {
    pub(crate) fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.len += data.len();
            self.pieces.push(data);
        }
    }

    /// Holes and the unwritten end of a short block read as zeros.
    pub(crate) fn push_zeros(&mut self, count: usize) {
        self.push(Bytes::from(vec![0; count]));
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes `range` of these, sharing the pieces (no copy).
    pub fn slice(&self, range: std::ops::Range<usize>) -> ReadData {
        let mut out = ReadData::default();
        let mut at = 0;
        for piece in &self.pieces {
            let (start, end) = (at, at + piece.len());
            at = end;
            if end > range.start && start < range.end {
                out.push(piece.slice(range.start.max(start) - start..range.end.min(end) - start));
            }
        }
        out
    }

    /// The pieces, each non-empty, which together are the bytes read.
    pub fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
    }

    /// The bytes as one slice: borrowed when they are one piece, copied when they are more.
    pub fn contiguous(&self) -> Cow<'_, [u8]> {
        match self.pieces.as_slice() {
            [] => Cow::Borrowed(&[]),
            [one] => Cow::Borrowed(one),
            many => Cow::Owned(many.concat()),
        }
    }

    pub fn into_vec(self) -> Vec<u8> {
        self.contiguous().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_and_zeros_join_in_order() {
        let mut data = ReadData::default();
        data.push(Bytes::from_static(b"ab"));
        data.push(Bytes::new());
        data.push_zeros(2);
        data.push(Bytes::from_static(b"c"));
        assert_eq!(data.len(), 5);
        assert_eq!(data.contiguous(), &b"ab\0\0c"[..]);
        assert_eq!(data.into_pieces().len(), 3, "empty pieces are left out");
    }

    #[test]
    fn a_slice_takes_the_pieces_it_covers() {
        let mut data = ReadData::default();
        data.push(Bytes::from_static(b"abc"));
        data.push(Bytes::from_static(b"defg"));
        data.push(Bytes::from_static(b"h"));
        for start in 0..=8 {
            for end in start..=8 {
                assert_eq!(data.slice(start..end).into_vec(), &b"abcdefgh"[start..end], "{start}..{end}");
            }
        }
        assert_eq!(data.slice(3..7).into_pieces().len(), 1, "within one piece, one piece");
    }

    #[test]
    fn one_piece_is_borrowed_not_copied() {
        let mut data = ReadData::default();
        data.push(Bytes::from_static(b"abc"));
        assert!(matches!(data.contiguous(), Cow::Borrowed(b"abc")));
    }
}
