//! IMAP sequence sets and SEARCH string matching, checked against naive versions: a set parsed
//! by imap-codec (as a client sends it) is normalised to ranges and resolved against a mailbox
//! snapshot, and must name exactly the messages the naive expansion names, once each, in order,
//! with the same errors; the case-insensitive substring test must agree with a naive one.
//!
//! Input: byte 0 = number of messages (mod 48); that many bytes of UID gaps (a byte >= 250
//! jumps by about a million, so large UIDs and `*` near u32::MAX are reached); then, split at
//! the first two `\n`: the sequence set (IMAP syntax), the haystack, the needle.
#![no_main]

use libfuzzer_sys::fuzz_target;
use relaybox::testkit::imap_sets::{
    find_ci, ranges, resolve_seqs, resolve_uids, SeqOrUid, Sequence, SequenceSet, MAX_RANGES,
};

fn naive_ranges(set: &SequenceSet, largest: u32) -> Vec<(u32, u32)> {
    let v = |s: &SeqOrUid| match s {
        SeqOrUid::Asterisk => largest,
        SeqOrUid::Value(v) if v.get() == u32::MAX => largest,
        SeqOrUid::Value(v) => v.get(),
    };
    set.0
        .as_ref()
        .iter()
        .map(|s| match s {
            Sequence::Single(a) => (v(a), v(a)),
            Sequence::Range(a, b) => (v(a).min(v(b)), v(a).max(v(b))),
        })
        .collect()
}

fn naive_in(r: &[(u32, u32)], n: u32) -> bool {
    r.iter().any(|&(lo, hi)| lo <= n && n <= hi)
}

fn uses_star(set: &SequenceSet) -> bool {
    let star = |s: &SeqOrUid| {
        matches!(s, SeqOrUid::Asterisk) || matches!(s, SeqOrUid::Value(v) if v.get() == u32::MAX)
    };
    set.0.as_ref().iter().any(|s| match s {
        Sequence::Single(a) => star(a),
        Sequence::Range(a, b) => star(a) || star(b),
    })
}

fn naive_find_ci(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty()
        || hay
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = usize::from(n % 48).min(rest.len());
    let (gaps, rest) = rest.split_at(n);
    let mut uids = Vec::with_capacity(n);
    let mut u: u32 = 0;
    for &g in gaps {
        let step = if g >= 250 {
            u32::from(g) << 12
        } else {
            1 + u32::from(g % 8)
        };
        match u.checked_add(step) {
            // u32::MAX is never a real UID (it stands for `*`).
            Some(next) if next < u32::MAX => u = next,
            _ => break,
        }
        uids.push(u);
    }
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let set_text = parts.next().unwrap_or_default();
    let hay = parts.next().unwrap_or_default();
    let needle = parts.next().unwrap_or_default();

    if hay.len() <= 4096 && needle.len() <= 64 {
        assert_eq!(
            find_ci(hay, needle),
            naive_find_ci(hay, needle),
            "find_ci({hay:?}, {needle:?})"
        );
    }

    let Ok(text) = std::str::from_utf8(set_text) else {
        return;
    };
    let Ok(set) = text.parse::<SequenceSet>() else {
        return;
    };
    let too_large = set.0.as_ref().len() > MAX_RANGES;

    // UIDs: those that exist and that the set names, ascending, once.
    let largest = uids.last().copied().unwrap_or(0);
    let got = resolve_uids(&set, &uids);
    if too_large {
        assert!(got.is_none(), "too many ranges accepted");
    } else if let Some(got) = got {
        let r = naive_ranges(&set, largest);
        let want: Vec<(u32, u32)> = if uids.is_empty() {
            Vec::new()
        } else {
            uids.iter()
                .enumerate()
                .filter(|(_, &u)| naive_in(&r, u))
                .map(|(i, &u)| (i as u32 + 1, u))
                .collect()
        };
        assert_eq!(got, want, "UID set {text} over {uids:?}");
    } else {
        panic!("a set within the cap was refused: {text}");
    }

    // Sequence numbers: all must exist.
    let count = uids.len() as u32;
    let got = resolve_seqs(&set, count);
    if too_large {
        assert_eq!(got, Err(true));
    } else {
        let r = naive_ranges(&set, count);
        let want =
            if (count == 0 && uses_star(&set)) || r.iter().any(|&(lo, hi)| lo == 0 || hi > count) {
                Err(false)
            } else {
                Ok((1..=count)
                    .filter(|&s| naive_in(&r, s))
                    .collect::<Vec<u32>>())
            };
        assert_eq!(got, want, "sequence set {text} over {count} messages");
    }

    // The normalised form: sorted, disjoint, not adjacent, and the same membership (probed
    // around every UID and range end; the naive test is O(ranges) per probe, so not for huge
    // sets).
    let r = naive_ranges(&set, largest);
    if r.len() > 512 {
        return;
    }
    let mut probe: Vec<u32> = vec![0, 1, largest, largest.saturating_add(1), u32::MAX];
    for &u in &uids {
        probe.extend([u - 1, u, u.saturating_add(1)]);
    }
    for &(lo, hi) in &r {
        probe.extend([lo.saturating_sub(1), lo, hi, hi.saturating_add(1)]);
    }
    let (norm, hits) = ranges(&set, largest, &probe);
    for w in norm.windows(2) {
        assert!(
            w[0].0 <= w[0].1 && w[0].1.saturating_add(1) < w[1].0,
            "not normalised: {norm:?}"
        );
    }
    for (&p, &hit) in probe.iter().zip(&hits) {
        assert_eq!(hit, naive_in(&r, p), "{p} in {text} (* = {largest})");
    }
});
