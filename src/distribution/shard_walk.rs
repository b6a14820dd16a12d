//! The per-shard walk of a hash-distributed table: one sub-run per shard.
//!
//! A sub-run owns one hash range of the distribution column (a shard's
//! `shardminvalue..shardmaxvalue` when the run started). When the walk key is that column and
//! an integer, the keys of one shard in a key window `(low, high]` are exactly the integers of
//! the window whose hash falls in the range: the sub-run computes them here, in plain Rust, and
//! each batch is `... WHERE key > low AND key <= high AND key = ANY(candidates)`, which Citus
//! routes to the one shard holding those values (on whatever node holds it now: moves and splits
//! change where the statement goes, never which rows it touches). No query reads keys from every
//! shard, and the batch's cursor is the window's upper end.
//!
//! A window is grown until it holds the wanted number of candidates (the batch size divided by
//! the share of candidates that turned out to be rows), within a scan limit; a sub-run whose
//! window found no row asks the table for its next key instead of stepping through a gap.

use pgrx::pg_sys;

/// The array type a shard sub-run lists its keys in, for an integer key type (None: the key
/// cannot be walked per shard).
pub fn array_type(key_type: pg_sys::Oid) -> Option<&'static str> {
    match key_type {
        pg_sys::INT8OID => Some("bigint[]"),
        pg_sys::INT4OID => Some("integer[]"),
        pg_sys::INT2OID => Some("smallint[]"),
        _ => None,
    }
}

/// A range of the 32-bit hash values Citus assigns to shards (inclusive bounds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRange {
    pub min: i32,
    pub max: i32,
}

impl HashRange {
    pub fn contains(&self, value: i64) -> bool {
        (self.min..=self.max).contains(&int_key_hash(value))
    }
}

/// Bob Jenkins' lookup3 final mix of one 32-bit word, as PostgreSQL's `hash_bytes_uint32`
/// computes it (the hash behind `hashint2/4/8`, which Citus uses for integer columns).
fn hash_uint32(k: u32) -> u32 {
    let init = 0x9e37_79b9u32.wrapping_add(4).wrapping_add(3_923_095);
    let (mut a, mut b, mut c) = (init.wrapping_add(k), init, init);
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(14));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(11));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(25));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(16));
    a ^= c;
    a = a.wrapping_sub(c.rotate_left(4));
    b ^= a;
    b = b.wrapping_sub(a.rotate_left(14));
    c ^= b;
    c = c.wrapping_sub(b.rotate_left(24));
    c
}

/// The hash Citus gives an integer distribution value (`worker_hash`): `hashint8`, which
/// agrees with `hashint4` and `hashint2` on the values those types hold.
pub fn int_key_hash(value: i64) -> i32 {
    let lo = value as u32;
    let hi = (value >> 32) as u32;
    let folded = lo ^ if value >= 0 { hi } else { !hi };
    hash_uint32(folded) as i32
}

/// One batch's key window and the keys of the sub-run's shard in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Inclusive upper end (the batch's high key, then the cursor).
    pub high: i64,
    pub candidates: Vec<i64>,
}

/// How far one window may scan past the cursor, in integers per wanted candidate (a shard of
/// 1/S of the hash space needs about S; 256 covers tables of up to a few hundred shards).
const SCAN_PER_CANDIDATE: u64 = 256;

/// The next window after `after` (exclusive; None: from `first`, inclusive) up to `last`
/// (inclusive): integers are taken in order until `want` of them hash into `range`, the scan
/// limit is reached or `last` is passed. None when nothing is left.
pub fn next_window(
    range: HashRange,
    after: Option<i64>,
    first: i64,
    last: i64,
    want: usize,
) -> Option<Window> {
    let start = match after {
        Some(a) if a >= last => return None,
        Some(a) => a + 1,
        None => first,
    };
    if start > last {
        return None;
    }
    let want = want.max(1);
    let limit = (want as u64).saturating_mul(SCAN_PER_CANDIDATE);
    let mut candidates = Vec::with_capacity(want);
    let mut v = start;
    let mut scanned = 0u64;
    loop {
        if range.contains(v) {
            candidates.push(v);
        }
        scanned += 1;
        if candidates.len() >= want || scanned >= limit || v >= last {
            return Some(Window {
                high: v,
                candidates,
            });
        }
        v += 1;
    }
}

/// The keys of `range` in `(low, high]` (low None: from `first`): a window rebuilt from its
/// bounds, for a batch done again after a failure or a crash.
pub fn candidates_in(range: HashRange, low: Option<i64>, first: i64, high: i64) -> Vec<i64> {
    let start = match low {
        Some(l) if l >= high => return Vec::new(),
        Some(l) => l + 1,
        None => first,
    };
    (start..=high).filter(|v| range.contains(*v)).collect()
}

/// Whether a table of about `rows` rows whose integer keys span `span` values suits per-shard
/// windows: at least one key value in 16 must be a row (a sparser table would have its
/// sub-runs compute many candidates for each row). Unknown figures (0) count as dense.
pub fn dense_enough(rows: i64, span: i64) -> bool {
    rows <= 0 || span <= 0 || rows.saturating_mul(Density::INVERSE_FLOOR) >= span
}

/// The sub-run's estimate of how many candidates are rows (EWMA), which sizes its windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Density(f64);

impl Default for Density {
    fn default() -> Self {
        Density(1.0)
    }
}

impl Density {
    const INVERSE_FLOOR: i64 = 16;
    const FLOOR: f64 = 1.0 / Self::INVERSE_FLOOR as f64;

    /// Candidates to ask for so that a batch holds about `batch_size` rows.
    pub fn want(&self, batch_size: i64) -> usize {
        ((batch_size.max(1) as f64) / self.0).ceil() as usize
    }

    /// A batch of `candidates` candidates changed `rows` rows.
    pub fn observe(&mut self, candidates: usize, rows: i64) {
        if candidates == 0 {
            return;
        }
        let seen = (rows.max(0) as f64 / candidates as f64).clamp(Self::FLOOR, 1.0);
        self.0 = (0.5 * self.0 + 0.5 * seen).clamp(Self::FLOOR, 1.0);
    }
}

/// Split the 32-bit hash space the way Citus does for `shard_count` shards: used by tests to
/// check windows against real shard ranges.
#[cfg(test)]
fn citus_ranges(shard_count: i64) -> Vec<HashRange> {
    let span = (1i64 << 32) / shard_count;
    (0..shard_count)
        .map(|i| {
            let min = i32::MIN as i64 + i * span;
            let max = if i == shard_count - 1 {
                i32::MAX as i64
            } else {
                min + span - 1
            };
            HashRange {
                min: min as i32,
                max: max as i32,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_postgres() {
        // Values read from PostgreSQL 15: SELECT v, hashint8(v) (= Citus's worker_hash).
        assert_eq!(int_key_hash(5), -1_330_264_708);
        assert_eq!(int_key_hash(-7_000_000_000), -890_475_936);
    }

    #[test]
    fn windows_partition_the_keys_among_shards() {
        let ranges = citus_ranges(32);
        let (first, last) = (1i64, 20_000i64);
        let mut seen = vec![0u8; (last + 1) as usize];
        for r in &ranges {
            let mut after = None;
            while let Some(w) = next_window(*r, after, first, last, 50) {
                assert!(w.high <= last);
                assert_eq!(w.candidates, candidates_in(*r, after, first, w.high));
                for c in &w.candidates {
                    seen[*c as usize] += 1;
                }
                after = Some(w.high);
            }
        }
        // Every key of the range in exactly one window of exactly one shard.
        assert!(seen[1..].iter().all(|n| *n == 1));
    }

    #[test]
    fn windows_stop_at_the_end_and_respect_the_scan_limit() {
        let r = HashRange {
            min: i32::MIN,
            max: i32::MIN + 1000,
        };
        let w = next_window(r, None, 0, i64::MAX, 2).unwrap();
        assert!(w.high < 2 * SCAN_PER_CANDIDATE as i64);
        assert_eq!(next_window(r, Some(10), 0, 10, 5), None);
        assert_eq!(next_window(r, Some(i64::MAX), 0, i64::MAX, 5), None);
        let w = next_window(citus_ranges(1)[0], Some(i64::MAX - 3), 0, i64::MAX, 100).unwrap();
        assert_eq!(w.high, i64::MAX);
        assert_eq!(w.candidates.len(), 3);
    }

    #[test]
    fn sparse_tables_are_not_walked_per_shard() {
        assert!(dense_enough(1_000_000, 1_000_000));
        assert!(dense_enough(1_000_000, 16_000_000));
        assert!(!dense_enough(1_000_000, 16_000_001));
        assert!(!dense_enough(10, i64::MAX));
        assert!(dense_enough(0, 1_000));
        assert!(dense_enough(1_000, 0));
    }

    #[test]
    fn density_sizes_windows() {
        let mut d = Density::default();
        assert_eq!(d.want(1000), 1000);
        d.observe(1000, 250);
        assert!(d.want(1000) > 1000 && d.want(1000) <= 16_000);
        for _ in 0..50 {
            d.observe(1000, 0);
        }
        assert_eq!(d.want(1000), 16_000);
        d.observe(0, 0);
        assert_eq!(d.want(1000), 16_000);
    }
}

/// A runner's sub-run of one shard: its hash range and what it learnt about the key density.
#[derive(Debug, Clone)]
pub struct ShardSub {
    pub range: HashRange,
    pub density: Density,
    /// The last batch changed no row: look up the next key instead of scanning a gap.
    pub skip: bool,
    /// The window last handed out, with its lower bound, so its batch need not rebuild it.
    last: Option<(Option<i64>, Window)>,
}

impl ShardSub {
    pub fn new(range: HashRange) -> ShardSub {
        ShardSub {
            range,
            density: Density::default(),
            skip: true,
            last: None,
        }
    }

    /// The next window after `after` (see `next_window`), remembered for its batch.
    pub fn next(&mut self, after: Option<i64>, last: i64, batch_size: i64) -> Option<&Window> {
        let w = next_window(
            self.range,
            after,
            i64::MIN,
            last,
            self.density.want(batch_size),
        )?;
        self.last = Some((after, w));
        self.last.as_ref().map(|(_, w)| w)
    }

    /// A batch's keys, rebuilt from its bounds (low None: from the smallest integer, which
    /// only the first batch of a table holding i64::MIN has).
    pub fn candidates(&self, low: Option<i64>, high: i64) -> Vec<i64> {
        match &self.last {
            Some((after, w)) if *after == low && w.high == high => w.candidates.clone(),
            _ => candidates_in(self.range, low, i64::MIN, high),
        }
    }

    /// A batch of `candidates` keys changed `rows` rows.
    pub fn observe(&mut self, candidates: usize, rows: i64) {
        self.density.observe(candidates, rows);
        self.skip = rows == 0;
    }
}

#[cfg(test)]
mod sub_tests {
    use super::*;

    #[test]
    fn a_batch_gets_the_window_it_was_marked_with() {
        let range = citus_ranges(8)[3];
        let mut sub = ShardSub::new(range);
        let w = sub.next(Some(100), 10_000, 20).cloned().unwrap();
        assert_eq!(sub.candidates(Some(100), w.high), w.candidates);
        // Other bounds (a batch redone after a restart) are rebuilt, with the same result.
        let fresh = ShardSub::new(range);
        assert_eq!(fresh.candidates(Some(100), w.high), w.candidates);
        assert_eq!(
            sub.candidates(Some(101), w.high),
            candidates_in(range, Some(101), 0, w.high)
        );
    }
}
