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

/// Message sequence numbers (1-based) named by `set` in a mailbox of `count` messages, ascending
/// and without duplicates. A number beyond `count` (or `*` in an empty mailbox) is an error, as
/// RFC 3501 §9 wants BAD for it.
pub(crate) fn resolve_seqs(set: &SequenceSet, count: u32) -> Result<Vec<u32>, ()> {
    if count == 0 && uses_asterisk(set) {
        return Err(());
    }
    let mut out = Vec::new();
    for (lo, hi) in ranges(set, count) {
        if lo == 0 || hi > count {
            return Err(());
        }
        out.extend(lo..=hi);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// (sequence number, UID) for every UID of `uids` (the ascending snapshot) that `set` names.
/// UIDs that do not exist are ignored, as RFC 3501 §6.4.8 wants.
pub(crate) fn resolve_uids(set: &SequenceSet, uids: &[u32]) -> Vec<(u32, u32)> {
    let Some(&largest) = uids.last() else {
        return Vec::new();
    };
    let mut out: Vec<(u32, u32)> = Vec::new();
    for (lo, hi) in ranges(set, largest) {
        let start = uids.partition_point(|&u| u < lo);
        let end = uids.partition_point(|&u| u <= hi);
        for (i, &u) in uids.iter().enumerate().take(end).skip(start) {
            out.push((i as u32 + 1, u));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether `n` is in `set`, with `*` meaning `largest` (SEARCH criteria).
pub(crate) fn contains(set: &SequenceSet, n: u32, largest: u32) -> bool {
    ranges(set, largest).any(|(lo, hi)| lo <= n && n <= hi)
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
        assert_eq!(
            resolve_uids(&set("1:*"), &uids),
            vec![(1, 3), (2, 5), (3, 9)]
        );
        assert_eq!(resolve_uids(&set("4:6"), &uids), vec![(2, 5)]);
        assert_eq!(resolve_uids(&set("100:*"), &uids), vec![(3, 9)]);
        assert_eq!(resolve_uids(&set("*"), &uids), vec![(3, 9)]);
        assert_eq!(resolve_uids(&set("4294967295"), &uids), vec![(3, 9)]);
        assert_eq!(resolve_uids(&set("6,1,5"), &uids), vec![(2, 5)]);
        assert!(resolve_uids(&set("1:*"), &[]).is_empty());
    }

    #[test]
    fn sequence_numbers_must_exist() {
        assert_eq!(resolve_seqs(&set("2:*"), 3), Ok(vec![2, 3]));
        assert_eq!(resolve_seqs(&set("3,1"), 3), Ok(vec![1, 3]));
        assert_eq!(resolve_seqs(&set("4"), 3), Err(()));
        assert_eq!(resolve_seqs(&set("*"), 0), Err(()));
    }

    #[test]
    fn runs_compress() {
        assert_eq!(runs(&[1, 2, 3, 5, 7, 8]), vec![(1, 3), (5, 5), (7, 8)]);
        assert!(uid_set(&[]).is_none());
    }
}
