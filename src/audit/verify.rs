//! The offline verifier: recompute a log's tree from its entries, check every checkpoint's
//! signature against the pinned log key, check that the entries are the ones the checkpoints
//! signed, and say which entries were altered, removed, inserted or reordered.
//!
//! What each finding rests on:
//! - every entry's AuditEvent carries its index (`id`), so a gap, a duplicate or a descent in
//!   the stored order locates a removal, an insertion or a reordering;
//! - the stored leaf hashes, once they are shown authentic (the tree they build has the roots
//!   the signed checkpoints state), locate every altered entry exactly: its recomputed leaf
//!   hash differs from the stored one at its index;
//! - when the stored hashes were rewritten too, the first signed checkpoint whose root the
//!   entries no longer produce bounds where the alteration lies;
//! - checkpoints from several places (the index, the object store, an auditor's copy) must
//!   all be consistent with one tree: two that are not reveal a fork;
//! - the search columns beside each entry are outside the tree, so each is compared with the
//!   event (`event::columns_match`): a changed one is located by its index.
//!
//! The verifier trusts only the log key it is given; everything else is evidence.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use super::log::{Hash, Tree, check_consistency, open_checkpoint, record_hash};
use crate::storage::{Index, Locations, StorageError};

/// One entry as the verifier keeps it (the event's bytes are hashed and dropped).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EntrySummary {
    /// The index the event claims (its `id`), if it has a readable one.
    pub claimed: Option<u64>,
    pub leaf: Hash,
}

impl EntrySummary {
    pub fn of(event: &[u8]) -> Self {
        Self { claimed: claimed_index(event), leaf: record_hash(event) }
    }
}

/// The `id` of a rendered AuditEvent: it follows `"resourceType":"AuditEvent"` (the renderer
/// writes it there); anything else is parsed in full.
fn claimed_index(event: &[u8]) -> Option<u64> {
    const PREFIX: &[u8] = br#"{"resourceType":"AuditEvent","id":""#;
    if let Some(rest) = event.strip_prefix(PREFIX) {
        let end = rest.iter().position(|&b| b == b'"')?;
        let digits = rest.get(..end)?;
        return std::str::from_utf8(digits).ok()?.parse().ok().filter(|_| !digits.starts_with(b"+"));
    }
    let value: serde_json::Value = serde_json::from_slice(event).ok()?;
    value.get("id")?.as_str()?.parse().ok()
}

/// A checkpoint as found somewhere (the note's bytes and where they came from).
#[derive(Debug, Clone)]
pub struct FoundCheckpoint {
    pub source: String,
    pub note: Vec<u8>,
}

/// Everything the verifier is given about one log.
#[derive(Debug, Clone, Default)]
pub struct LogEvidence {
    pub log: String,
    /// Every entry, in the order the log stores them.
    pub entries: Vec<EntrySummary>,
    /// The stored tree hashes, when the source has them (the index does; a package does not).
    pub stored_hashes: Option<Vec<Hash>>,
    pub checkpoints: Vec<FoundCheckpoint>,
    /// The indexes of entries whose search columns do not agree with their event (the index
    /// has such columns; a package does not).
    pub columns_altered: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Finding {
    /// The entry at `index` is not the one that was sealed there.
    Altered { index: u64 },
    /// Entries somewhere in `from..to` (indexes) were altered; the stored hashes were rewritten
    /// too, so the signed checkpoints bound the place.
    AlteredWithin { from: u64, to: u64 },
    /// No entry claims these indexes.
    Removed { from: u64, to: u64 },
    /// The log ends at `from`, but a signed checkpoint covers up to `to`.
    Truncated { from: u64, to: u64 },
    /// The entry stored at `position` claims an index another entry holds, or none.
    Inserted { position: u64, claims: Option<u64> },
    /// The entry claiming `index` is stored after the one claiming `after`.
    Reordered { index: u64, after: u64 },
    /// A checkpoint that does not open with the log key (bad signature, other key, malformed).
    BadCheckpoint { source: String, reason: String },
    /// A signed checkpoint whose root the stored entries do not produce.
    RootMismatch { source: String, size: u64 },
    /// Two signed checkpoints that no single tree can have.
    Fork { first: String, second: String, sizes: (u64, u64) },
    /// The stored tree hashes are not those of the entries the checkpoints signed.
    TreeHashesRewritten,
    /// The entry at `index` has search columns (time, action, outcome, user, patient, resource)
    /// that its event does not show: searches, a patient's access log among them, misreport it.
    ColumnsAltered { index: u64 },
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct LogReport {
    pub log: String,
    pub entries: u64,
    pub checkpoints: u64,
    /// The largest tree size a valid checkpoint signed and the entries match.
    pub verified_size: u64,
    pub findings: Vec<Finding>,
}

impl LogReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// A checkpoint that opened with the key.
#[derive(Debug, Clone)]
struct Signed {
    source: String,
    size: u64,
    root: Hash,
}

/// Verify one log against the verifier key of that log (`<origin>+<id>+<key>`).
pub fn verify_log(evidence: &LogEvidence, vkey: &str) -> LogReport {
    let mut report = LogReport {
        log: evidence.log.clone(),
        entries: evidence.entries.len() as u64,
        checkpoints: evidence.checkpoints.len() as u64,
        ..LogReport::default()
    };
    let mut findings = Vec::new();

    // Checkpoints: signature and origin first; only those that open count as evidence.
    let mut signed: Vec<Signed> = Vec::new();
    for c in &evidence.checkpoints {
        match open_checkpoint(&c.note, vkey) {
            Ok(opened) => signed.push(Signed { source: c.source.clone(), size: opened.size, root: opened.root }),
            Err(e) => findings.push(Finding::BadCheckpoint { source: c.source.clone(), reason: e.to_string() }),
        }
    }
    signed.sort_by_key(|s| s.size);

    // The tree the stored entries make, in their stored order.
    let mut tree = Tree::new();
    for e in &evidence.entries {
        if tree.push(e.leaf).is_err() {
            break;
        }
    }
    let n = tree.size();

    // The stored leaf hashes, and whether the checkpoints vouch for them.
    let stored = evidence.stored_hashes.as_ref().and_then(|hashes| stored_tree(hashes));
    let stored_authentic = stored
        .as_ref()
        .is_some_and(|t| signed.iter().all(|s| s.size <= t.size() && t.root_at(s.size).is_ok_and(|r| r == s.root)));
    if stored.is_some() && !stored_authentic && !signed.is_empty() {
        findings.push(Finding::TreeHashesRewritten);
    }

    // Order: what each entry claims against where it is stored.
    let expected_size = signed.last().map_or(0, |s| s.size).max(n);
    findings.extend(order_findings(&evidence.entries, 0, expected_size, signed.last().map(|s| s.size)));

    // Alterations located exactly by authentic stored leaves.
    if let (Some(stored), true) = (&stored, stored_authentic) {
        let mut seen = BTreeSet::new();
        for e in &evidence.entries {
            let Some(k) = e.claimed else { continue };
            if !seen.insert(k) {
                continue;
            }
            if stored.leaf(k).is_some_and(|leaf| leaf != e.leaf) {
                findings.push(Finding::Altered { index: k });
            }
        }
    }

    // Every signed checkpoint against the entries' tree; the largest that matches is verified.
    let mut last_good = 0;
    let mut bounded = false;
    for s in &signed {
        let matches = s.size <= n && tree.root_at(s.size).is_ok_and(|r| r == s.root);
        if matches {
            report.verified_size = report.verified_size.max(s.size);
            last_good = s.size;
        } else {
            findings.push(Finding::RootMismatch { source: s.source.clone(), size: s.size });
            if !bounded && !stored_authentic && s.size <= n {
                findings.push(Finding::AlteredWithin { from: last_good, to: s.size });
                bounded = true;
            }
        }
    }

    // Forks: the signed checkpoints, in size order, must each extend the one before (a prefix
    // of a prefix is a prefix, so neighbours suffice); two of one size must agree. Same size,
    // same root; different sizes, a consistency proof from any tree that has both roots.
    for pair in signed.windows(2) {
        if let [a, b] = pair
            && !consistent(a, b, &tree, stored.as_ref())
        {
            findings.push(Finding::Fork { first: a.source.clone(), second: b.source.clone(), sizes: (a.size, b.size) });
        }
    }

    findings.extend(evidence.columns_altered.iter().map(|&index| Finding::ColumnsAltered { index }));

    findings.dedup();
    report.findings = findings;
    report
}

/// The tree of the stored leaf hashes (taken from the stored hashes at their leaf positions).
fn stored_tree(hashes: &[Hash]) -> Option<Tree> {
    let mut tree = Tree::new();
    let mut n = 0_u64;
    loop {
        let i = usize::try_from(tlog_tiles::stored_hash_index(0, n)).ok()?;
        let Some(leaf) = hashes.get(i) else { break };
        tree.push(*leaf).ok()?;
        n += 1;
    }
    Some(tree)
}

/// Whether two signed checkpoints can belong to one tree.
fn consistent(a: &Signed, b: &Signed, tree: &Tree, stored: Option<&Tree>) -> bool {
    if a.size == b.size {
        return a.root == b.root;
    }
    if a.size == 0 {
        return a.root == tlog_tiles::EMPTY_HASH;
    }
    // A proof from any tree holding b's root; a proof can only succeed if a is its prefix.
    [Some(tree), stored].into_iter().flatten().any(|t| {
        t.size() >= b.size
            && t.root_at(b.size).is_ok_and(|r| r == b.root)
            && t.consistency(a.size, b.size).is_ok_and(|p| check_consistency(&p, a.size, a.root, b.size, b.root))
    }) || !has_root(tree, stored, b)
}

/// Whether some tree we have produces `s`'s root (otherwise its consistency cannot be judged
/// from here, and its mismatch is reported as such).
fn has_root(tree: &Tree, stored: Option<&Tree>, s: &Signed) -> bool {
    [Some(tree), stored]
        .into_iter()
        .flatten()
        .any(|t| t.size() >= s.size && t.root_at(s.size).is_ok_and(|r| r == s.root))
}

/// Removals, insertions and reorderings, from the indexes the entries claim, for entries
/// expected to run from `start` to `expected_size`.
pub(crate) fn order_findings(
    entries: &[EntrySummary],
    start: u64,
    expected_size: u64,
    signed_size: Option<u64>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut count: BTreeMap<u64, u32> = BTreeMap::new();
    for e in entries {
        if let Some(k) = e.claimed {
            *count.entry(k).or_default() += 1;
        }
    }
    // Inserted: no readable index, or one already taken by an earlier entry, or beyond any size.
    let mut seen = BTreeSet::new();
    let mut previous: Option<u64> = None;
    for (position, e) in entries.iter().enumerate() {
        let position = start + position as u64;
        match e.claimed {
            Some(k) if k >= start && k < expected_size && seen.insert(k) => {
                if let Some(p) = previous
                    && k < p
                {
                    findings.push(Finding::Reordered { index: k, after: p });
                }
                previous = Some(previous.map_or(k, |p| p.max(k)));
            }
            claims => findings.push(Finding::Inserted { position, claims }),
        }
    }
    // Removed: runs of indexes nobody claims; a run at the very end is a truncation.
    let last_present = count.keys().copied().filter(|&k| k >= start && k < expected_size).max();
    let mut k = start;
    while k < expected_size {
        if count.contains_key(&k) {
            k += 1;
            continue;
        }
        let from = k;
        while k < expected_size && !count.contains_key(&k) {
            k += 1;
        }
        let at_end = last_present.is_none_or(|last| from > last);
        if at_end && signed_size.is_some_and(|s| s == k) {
            findings.push(Finding::Truncated { from, to: k });
        } else {
            findings.push(Finding::Removed { from, to: k });
        }
    }
    findings
}

/// One line for people.
pub fn describe(f: &Finding) -> String {
    match f {
        Finding::Altered { index } => format!("entry {index} was altered"),
        Finding::AlteredWithin { from, to } => {
            format!("entries were altered between index {from} and {to} (tree hashes rewritten to match)")
        }
        Finding::Removed { from, to } if to - from == 1 => format!("entry {from} was removed"),
        Finding::Removed { from, to } => format!("entries {from} to {} were removed", to - 1),
        Finding::Truncated { from, to } => format!("the log was truncated: entries {from} to {} are gone", to - 1),
        Finding::Inserted { position, claims: Some(k) } => {
            format!("an entry was inserted at position {position} (it claims index {k}, which another entry holds)")
        }
        Finding::Inserted { position, claims: None } => {
            format!("an entry was inserted at position {position} (it is not a sealed AuditEvent)")
        }
        Finding::Reordered { index, after } => format!("entry {index} was moved after entry {after}"),
        Finding::BadCheckpoint { source, reason } => format!("checkpoint {source} is not valid: {reason}"),
        Finding::RootMismatch { source, size } => {
            format!("checkpoint {source} signed a tree of {size} entries that the stored entries do not make")
        }
        Finding::Fork { first, second, sizes } => format!(
            "checkpoints {first} (size {}) and {second} (size {}) cannot both be true: the log forked",
            sizes.0, sizes.1
        ),
        Finding::TreeHashesRewritten => "the stored tree hashes were rewritten".to_owned(),
        Finding::ColumnsAltered { index } => {
            format!("entry {index}'s search columns were altered: they no longer match its event")
        }
    }
}

/// Entries and stored hashes are read from the index in pages of this many rows.
const PAGE: u32 = 10_000;

/// Every entry of `log`, summarized, and the indexes of those whose search columns disagree
/// with their event: each page is checked on a blocking thread while the index reads the next.
async fn gather_entries(index: &dyn Index, log: &str) -> Result<(Vec<EntrySummary>, Vec<u64>), StorageError> {
    let mut entries = Vec::new();
    let mut altered = Vec::new();
    let mut from = 0;
    let mut checking: Option<tokio::task::JoinHandle<(Vec<EntrySummary>, Vec<u64>)>> = None;
    loop {
        let page = index.log_entries(log, from, PAGE).await?;
        if let Some(done) = checking.take() {
            let (summaries, columns) = done.await.map_err(|e| StorageError::Task(format!("hashing entries: {e}")))?;
            entries.extend(summaries);
            altered.extend(columns);
        }
        let Some(last) = page.last() else { break };
        from = last.index + 1;
        checking = Some(tokio::task::spawn_blocking(move || {
            let summaries = page.iter().map(|e| EntrySummary::of(&e.event)).collect();
            let columns = page.iter().filter(|e| !super::event::columns_match(e)).map(|e| e.index).collect();
            (summaries, columns)
        }));
    }
    Ok((entries, altered))
}

/// The stored tree hashes of `log`, up to the first one missing.
async fn gather_hashes(index: &dyn Index, log: &str) -> Result<Vec<Hash>, StorageError> {
    let mut hashes = Vec::new();
    let mut from = 0;
    'pages: loop {
        let page = index.log_hashes(log, from, PAGE.saturating_mul(4)).await?;
        let Some(&(last, _)) = page.last() else { break };
        for (i, hash) in page {
            // A missing stored hash ends what can be used of them.
            if i != hashes.len() as u64 {
                break 'pages;
            }
            hashes.push(Hash(hash));
        }
        from = last + 1;
    }
    Ok(hashes)
}

/// What the index holds about `log`: its entries, stored hashes and checkpoints; and the copies
/// of its checkpoints in the object store (`locations`).
pub async fn gather(index: &dyn Index, locations: &Locations, log: &str) -> Result<LogEvidence, StorageError> {
    // Entries and stored hashes are read on two connections at once.
    let ((entries, columns_altered), hashes) = tokio::try_join!(gather_entries(index, log), gather_hashes(index, log))?;
    let mut evidence = LogEvidence {
        log: log.to_owned(),
        entries,
        stored_hashes: Some(hashes),
        checkpoints: Vec::new(),
        columns_altered,
    };
    for c in index.log_checkpoints(log, false).await? {
        evidence.checkpoints.push(FoundCheckpoint { source: format!("index:{}", c.size), note: c.note.into_bytes() });
    }
    let mut seen = BTreeSet::new();
    for storage in locations.iter() {
        for key in storage.list_keys(&format!("audit/{log}/checkpoints")).await? {
            if !seen.insert(key.as_str().to_owned()) {
                continue;
            }
            let note = storage.get(&key).await?;
            evidence.checkpoints.push(FoundCheckpoint { source: format!("{}:{}", storage.name(), key.as_str()), note });
        }
    }
    Ok(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::LogKey;

    struct Fixture {
        key: LogKey,
        events: Vec<Vec<u8>>,
        tree: Tree,
        checkpoints: Vec<FoundCheckpoint>,
    }

    fn event(i: u64) -> Vec<u8> {
        format!(r#"{{"resourceType":"AuditEvent","id":"{i}","outcome":"0"}}"#).into_bytes()
    }

    /// A log of `n` events with a checkpoint every `every` entries and one at the end.
    fn fixture(n: u64, every: u64) -> Fixture {
        let key = LogKey::parse(&LogKey::generate("audit.test").unwrap()).unwrap();
        let mut tree = Tree::new();
        let mut events = Vec::new();
        let mut checkpoints = Vec::new();
        for i in 0..n {
            let e = event(i);
            tree.push(record_hash(&e)).unwrap();
            events.push(e);
            if (i + 1) % every == 0 || i + 1 == n {
                let note = key.sign("demo", i + 1, tree.root_at(i + 1).unwrap()).unwrap();
                checkpoints.push(FoundCheckpoint { source: format!("index:{}", i + 1), note: note.into_bytes() });
            }
        }
        Fixture { key, events, tree, checkpoints }
    }

    impl Fixture {
        fn stored(&self) -> Vec<Hash> {
            let count = tlog_tiles::stored_hash_count(self.tree.size());
            (0..count).map(|i| tlog_tiles::HashReader::read_hashes(&self.tree, &[i]).unwrap()[0]).collect()
        }

        fn evidence(&self) -> LogEvidence {
            LogEvidence {
                log: "demo".into(),
                entries: self.events.iter().map(|e| EntrySummary::of(e)).collect(),
                stored_hashes: Some(self.stored()),
                checkpoints: self.checkpoints.clone(),
                columns_altered: Vec::new(),
            }
        }

        fn verify(&self, evidence: &LogEvidence) -> LogReport {
            verify_log(evidence, &self.key.verifier_key("demo"))
        }
    }

    #[test]
    fn an_untouched_log_verifies() {
        let f = fixture(100, 10);
        let report = f.verify(&f.evidence());
        assert!(report.ok(), "{:?}", report.findings);
        assert_eq!(report.verified_size, 100);
    }

    #[test]
    fn an_edited_event_is_located() {
        let f = fixture(100, 10);
        let mut evidence = f.evidence();
        evidence.entries[42] = EntrySummary::of(br#"{"resourceType":"AuditEvent","id":"42","outcome":"4"}"#);
        let report = f.verify(&evidence);
        assert!(report.findings.contains(&Finding::Altered { index: 42 }), "{:?}", report.findings);
        assert!(report.findings.contains(&Finding::RootMismatch { source: "index:50".into(), size: 50 }));
        assert_eq!(report.verified_size, 40);
    }

    #[test]
    fn an_edit_with_rewritten_hashes_is_bounded_by_the_checkpoints() {
        let f = fixture(100, 10);
        let mut evidence = f.evidence();
        evidence.entries[42] = EntrySummary::of(br#"{"resourceType":"AuditEvent","id":"42","outcome":"4"}"#);
        let mut forged = Tree::new();
        for e in &evidence.entries {
            forged.push(e.leaf).unwrap();
        }
        let count = tlog_tiles::stored_hash_count(100);
        evidence.stored_hashes =
            Some((0..count).map(|i| tlog_tiles::HashReader::read_hashes(&forged, &[i]).unwrap()[0]).collect());
        let report = f.verify(&evidence);
        assert!(report.findings.contains(&Finding::TreeHashesRewritten), "{:?}", report.findings);
        assert!(report.findings.contains(&Finding::AlteredWithin { from: 40, to: 50 }), "{:?}", report.findings);
    }

    #[test]
    fn a_deleted_event_is_located() {
        let f = fixture(100, 10);
        let mut evidence = f.evidence();
        evidence.entries.remove(17);
        let report = f.verify(&evidence);
        assert!(report.findings.contains(&Finding::Removed { from: 17, to: 18 }), "{:?}", report.findings);
    }

    #[test]
    fn swapped_events_are_located() {
        let f = fixture(100, 10);
        let mut evidence = f.evidence();
        evidence.entries.swap(30, 31);
        let report = f.verify(&evidence);
        assert!(report.findings.contains(&Finding::Reordered { index: 30, after: 31 }), "{:?}", report.findings);
        assert!(!report.findings.iter().any(|f| matches!(f, Finding::Altered { .. })));
    }

    #[test]
    fn a_truncated_tail_is_located() {
        let f = fixture(100, 10);
        let mut evidence = f.evidence();
        evidence.entries.truncate(95);
        let report = f.verify(&evidence);
        assert!(report.findings.contains(&Finding::Truncated { from: 95, to: 100 }), "{:?}", report.findings);
    }

    #[test]
    fn an_inserted_event_is_located() {
        let f = fixture(100, 10);
        let mut evidence = f.evidence();
        evidence.entries.insert(60, EntrySummary::of(&event(59)));
        let report = f.verify(&evidence);
        assert!(
            report.findings.contains(&Finding::Inserted { position: 60, claims: Some(59) }),
            "{:?}",
            report.findings
        );
    }

    #[test]
    fn a_replaced_or_resigned_checkpoint_is_refused() {
        let f = fixture(100, 10);
        let mut evidence = f.evidence();
        let other = LogKey::parse(&LogKey::generate("audit.test").unwrap()).unwrap();
        evidence.checkpoints[3].note = other.sign("demo", 40, f.tree.root_at(40).unwrap()).unwrap().into_bytes();
        evidence.checkpoints[4].note = b"garbage\n".to_vec();
        let report = f.verify(&evidence);
        let bad: Vec<&str> = report
            .findings
            .iter()
            .filter_map(|f| match f {
                Finding::BadCheckpoint { source, .. } => Some(source.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(bad, ["index:40", "index:50"]);
    }

    #[test]
    fn a_fork_is_detected() {
        let f = fixture(100, 10);
        let mut evidence = f.evidence();
        // The key holder signs a different history of the same log from entry 50 on.
        let mut forked = Tree::new();
        for i in 0..100 {
            let e =
                if i < 50 { event(i) } else { format!(r#"{{"resourceType":"AuditEvent","id":"{i}"}}"#).into_bytes() };
            forked.push(record_hash(&e)).unwrap();
        }
        let note = f.key.sign("demo", 80, forked.root_at(80).unwrap()).unwrap();
        evidence.checkpoints.push(FoundCheckpoint { source: "objects:80".into(), note: note.into_bytes() });
        let report = f.verify(&evidence);
        assert!(
            report.findings.iter().any(|x| matches!(x, Finding::Fork { sizes: (80, 80), .. })),
            "{:?}",
            report.findings
        );
    }
}
