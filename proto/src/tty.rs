//! A terminal record's bytes as its writes made them: a record that joins several writes
//! (`Tty.write_bytes`, `Tty.write_gap_nanos`) is shown write by write, each at its own time.

use crate::v1::Tty;

/// Each write's bytes in `tty.data`, with its nanoseconds after the record's time, in order.
/// The whole of `data` at 0 when the record joins nothing, and also when its sizes and gaps
/// do not describe its bytes (sizes that do not add up to its length, or a gap too many or
/// too few): a record from a hostile or broken agent is shown as it is, never cut where it
/// says.
#[must_use]
pub fn writes(tty: &Tty) -> Vec<(u64, &[u8])> {
    let data = &tty.data[..];
    let sizes = &tty.write_bytes;
    let total = sizes
        .iter()
        .try_fold(0usize, |sum, &n| sum.checked_add(n as usize));
    if sizes.is_empty() || total != Some(data.len()) || tty.write_gap_nanos.len() + 1 != sizes.len()
    {
        return vec![(0, data)];
    }
    // The first write is at the record's time; each gap leads to the write after it.
    let gaps = std::iter::once(&0).chain(&tty.write_gap_nanos);
    let (mut start, mut after) = (0usize, 0u64);
    sizes
        .iter()
        .zip(gaps)
        .map(|(&n, &gap)| {
            after = after.saturating_add(gap);
            let bytes = &data[start..start + n as usize];
            start += n as usize;
            (after, bytes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn tty(data: &'static [u8], sizes: &[u32], gaps: &[u64]) -> Tty {
        Tty {
            data: Bytes::from_static(data),
            write_bytes: sizes.to_vec(),
            write_gap_nanos: gaps.to_vec(),
            ..Tty::default()
        }
    }

    #[test]
    fn a_joined_record_is_cut_into_its_writes_at_their_times() {
        assert_eq!(
            writes(&tty(b"abcdef", &[2, 1, 0, 2, 1], &[10, 0, 5, 885])),
            [
                (0, &b"ab"[..]),
                (10, &b"c"[..]),
                (10, &b""[..]),
                (15, &b"de"[..]),
                (900, &b"f"[..])
            ]
        );
        assert_eq!(writes(&tty(b"abc", &[], &[])), [(0, &b"abc"[..])]);
    }

    #[test]
    fn sizes_and_gaps_that_do_not_fit_the_bytes_leave_them_whole() {
        for (sizes, gaps) in [
            (&[1, 1][..], &[5][..]),
            (&[2, 2], &[5]),
            (&[3], &[5]),
            (&[1, 2], &[]),
            (&[1, 2], &[5, 6]),
            (&[], &[5]),
            (&[u32::MAX, 4], &[1]),
        ] {
            assert_eq!(
                writes(&tty(b"abc", sizes, gaps)),
                [(0, &b"abc"[..])],
                "{sizes:?} {gaps:?}"
            );
        }
    }
}
