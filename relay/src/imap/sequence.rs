//! Sequence sets (RFC 3501 §9 `sequence-set`) resolved against a session's snapshot of the
//! selected mailbox.
//!
//! imap-types' `SequenceSet::normalize` (applied by imap-codec when encoding, with the default
//! `quirk_always_normalize_sequence_sets`) writes `*` as the number 4294967295. That number can
//! never be a real sequence number or UID here, so it is read as `*` wherever it comes from.

use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::extensions::uidplus::{UidElement, UidSet};
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use std::num::NonZeroU32;

/// The inclusive ranges a set names, with `*` meaning `largest`. `None` if the set uses `*` and
/// there is no largest (empty mailbox).
fn ranges(set: &SequenceSet, largest: u32) -> impl Iterator<Item = (u32, u32)> + '_ {
    let value = move |s: &SeqOrUid| match s {
        SeqOrUid::Asterisk => largest,
        SeqOrUid::Value(v) if v.get() == u32::MAX => largest,
        SeqOrUid::Value(v) => v.get(),
    };
    set.0.as_ref().iter().map(move |seq| match seq {
        Sequence::Single(s) => (value(s), value(s)),
        // `n:*` includes the largest even when n is larger (RFC 3501 §6.4.8).
        Sequence::Range(a, b) => {
            let (a, b) = (value(a), value(b));
            (a.min(b), a.max(b))
        }
    })
}

fn uses_asterisk(set: &SequenceSet) -> bool {
    let star = |s: &SeqOrUid| match s {
        SeqOrUid::Asterisk => true,
        SeqOrUid::Value(v) => v.get() == u32::MAX,
    };
    set.0.as_ref().iter().any(|seq| match seq {
        Sequence::Single(s) => star(s),
        Sequence::Range(a, b) => star(a) || star(b),
    })
}

/// Most ranges one command may name in its sequence sets (together, for SEARCH). Real clients
/// send a few hundred at most (Delta Chat splits long UID sets); the cap keeps the sort of a
/// pathological set (`1:*,1:*,…` fills a 64 KiB line with 16 000) small.
pub(crate) const MAX_RANGES: usize = 2000;

/// Why a sequence set cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SetError {
    /// A sequence number that does not exist (RFC 3501 §9 wants BAD).
    Invalid,
    /// More than [`MAX_RANGES`] ranges.
    TooLarge,
}

/// Checks the range count of one set against [`MAX_RANGES`].
pub(crate) fn check_size(set: &SequenceSet) -> Result<(), SetError> {
    if set.0.as_ref().len() > MAX_RANGES {
        return Err(SetError::TooLarge);
    }
    Ok(())
}

/// A sequence set with `*` resolved, as sorted, disjoint, non-adjacent inclusive ranges. Built
/// without expanding a range, so its memory is O(ranges) whatever the set names; everything
/// resolved from it is O(matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Ranges(Vec<(u32, u32)>);

impl Ranges {
    pub(crate) fn new(set: &SequenceSet, largest: u32) -> Ranges {
        let mut v: Vec<(u32, u32)> = ranges(set, largest).collect();
        v.sort_unstable();
        let mut out: Vec<(u32, u32)> = Vec::with_capacity(v.len());
        for (lo, hi) in v {
            match out.last_mut() {
                Some((_, h)) if lo <= h.saturating_add(1) => *h = (*h).max(hi),
                _ => out.push((lo, hi)),
            }
        }
        out.shrink_to_fit();
        Ranges(out)
    }

    pub(crate) fn as_slice(&self) -> &[(u32, u32)] {
        &self.0
    }

    /// Whether `n` is in the set: a binary search, not a walk over every range.
    pub(crate) fn contains(&self, n: u32) -> bool {
        let i = self.0.partition_point(|&(_, hi)| hi < n);
        self.0.get(i).is_some_and(|&(lo, _)| lo <= n)
    }
}

/// Message sequence numbers (1-based) named by `set` in a mailbox of `count` messages, ascending
/// and without duplicates. A number beyond `count` (or `*` in an empty mailbox) is an error, as
/// RFC 3501 §9 wants BAD for it.
pub(crate) fn resolve_seqs(set: &SequenceSet, count: u32) -> Result<Vec<u32>, SetError> {
    check_size(set)?;
    if count == 0 && uses_asterisk(set) {
        return Err(SetError::Invalid);
    }
    let r = Ranges::new(set, count);
    // Sorted, so the first and the last range hold the extremes.
    match (r.0.first(), r.0.last()) {
        (Some(&(lo, _)), Some(&(_, hi))) if lo == 0 || hi > count => return Err(SetError::Invalid),
        _ => {}
    }
    Ok(r.0.iter().flat_map(|&(lo, hi)| lo..=hi).collect())
}

/// (sequence number, UID) for every UID of `uids` (the ascending snapshot) that `set` names.
/// UIDs that do not exist are ignored, as RFC 3501 §6.4.8 wants.
pub(crate) fn resolve_uids(set: &SequenceSet, uids: &[u32]) -> Result<Vec<(u32, u32)>, SetError> {
    check_size(set)?;
    let Some(&largest) = uids.last() else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(u32, u32)> = Vec::new();
    // The ranges are disjoint and ascending, so the output is too: no sort, no duplicates.
    for &(lo, hi) in Ranges::new(set, largest).as_slice() {
        let start = uids.partition_point(|&u| u < lo);
        let end = uids.partition_point(|&u| u <= hi);
        for (i, &u) in uids.iter().enumerate().take(end).skip(start) {
            out.push((i as u32 + 1, u));
        }
    }
    Ok(out)
}

/// Compact ranges of ascending numbers, for COPYUID and MODIFIED.
fn runs(nums: &[u32]) -> Vec<(u32, u32)> {
    let mut out: Vec<(u32, u32)> = Vec::new();
    for &n in nums {
        match out.last_mut() {
            Some((_, hi)) if n == hi.saturating_add(1) => *hi = n,
            _ => out.push((n, n)),
        }
    }
    out
}

pub(crate) fn uid_set(nums: &[u32]) -> Option<UidSet> {
    let elems: Vec<UidElement> = runs(nums)
        .into_iter()
        .filter_map(|(lo, hi)| {
            let lo = NonZeroU32::new(lo)?;
            let hi = NonZeroU32::new(hi)?;
            Some(if lo == hi {
                UidElement::Single(lo)
            } else {
                UidElement::Range(lo, hi)
            })
        })
        .collect();
    Vec1::try_from(elems).ok().map(UidSet)
}

pub(crate) fn sequence_set(nums: &[u32]) -> Option<SequenceSet> {
    let elems: Vec<Sequence> = runs(nums)
        .into_iter()
        .filter_map(|(lo, hi)| {
            let lo = NonZeroU32::new(lo)?;
            let hi = NonZeroU32::new(hi)?;
            Some(if lo == hi {
                Sequence::Single(SeqOrUid::Value(lo))
            } else {
                Sequence::Range(SeqOrUid::Value(lo), SeqOrUid::Value(hi))
            })
        })
        .collect();
    SequenceSet::try_from(elems).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(s: &str) -> SequenceSet {
        s.parse().unwrap()
    }

    #[test]
    fn uid_ranges_ignore_missing_and_star_includes_the_largest() {
        let uids = [3, 5, 9];
        let r = |s: &str, uids: &[u32]| resolve_uids(&set(s), uids).unwrap();
        assert_eq!(r("1:*", &uids), vec![(1, 3), (2, 5), (3, 9)]);
        assert_eq!(r("4:6", &uids), vec![(2, 5)]);
        assert_eq!(r("100:*", &uids), vec![(3, 9)]);
        assert_eq!(r("*", &uids), vec![(3, 9)]);
        assert_eq!(r("4294967295", &uids), vec![(3, 9)]);
        assert_eq!(r("6,1,5", &uids), vec![(2, 5)]);
        assert_eq!(r("9,3:5,5:3,*", &uids), vec![(1, 3), (2, 5), (3, 9)]);
        assert!(r("1:*", &[]).is_empty());
    }

    #[test]
    fn sequence_numbers_must_exist() {
        assert_eq!(resolve_seqs(&set("2:*"), 3), Ok(vec![2, 3]));
        assert_eq!(resolve_seqs(&set("3,1"), 3), Ok(vec![1, 3]));
        assert_eq!(resolve_seqs(&set("3:1,2,1:2"), 3), Ok(vec![1, 2, 3]));
        assert_eq!(resolve_seqs(&set("4"), 3), Err(SetError::Invalid));
        assert_eq!(resolve_seqs(&set("2,4:3"), 3), Err(SetError::Invalid));
        assert_eq!(resolve_seqs(&set("*"), 0), Err(SetError::Invalid));
    }

    #[test]
    fn ranges_merge_without_expanding() {
        let r = Ranges::new(&set("7,1:3,2:4,10:*,6,100"), 4_000_000_000);
        assert_eq!(r.as_slice(), &[(1, 4), (6, 7), (10, 4_000_000_000)]);
        assert!(r.contains(1) && r.contains(4) && r.contains(7) && r.contains(12345));
        assert!(!r.contains(0) && !r.contains(5) && !r.contains(8) && !r.contains(9));
        // `1:*` repeated: one range, whatever the repetition.
        let many = vec!["1:*"; MAX_RANGES].join(",");
        assert_eq!(Ranges::new(&set(&many), 15_000).as_slice(), &[(1, 15_000)]);
    }

    #[test]
    fn too_many_ranges_are_refused() {
        let ok = vec!["1:*"; MAX_RANGES].join(",");
        let uids: Vec<u32> = (1..=3).collect();
        assert_eq!(resolve_uids(&set(&ok), &uids).unwrap().len(), 3);
        let big = vec!["1:*"; MAX_RANGES + 1].join(",");
        assert_eq!(resolve_uids(&set(&big), &uids), Err(SetError::TooLarge));
        assert_eq!(resolve_seqs(&set(&big), 3), Err(SetError::TooLarge));
    }

    #[test]
    fn runs_compress() {
        assert_eq!(runs(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert!(uid_set(&[]).is_none());
    }
}
