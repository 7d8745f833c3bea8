//! Offline evidence packages: a stretch of one log that an auditor takes away and checks with
//! `fhirvault audit verify --package FILE`, with no server and no database.
//!
//! A package is NDJSON, one object per line, told apart by `type`:
//!
//! - `header`: the format, the log, the log key's public key (`<name>+<id>+<key>`, to compare
//!   with the one the auditor pins), and the range `from..to` of entries it holds;
//! - `frontier`: the stored hashes of the complete subtrees of the tree of `from` entries
//!   (base64), from which the entries extend the tree;
//! - `checkpoint`: a signed checkpoint (the note as signed): every one in `from..=to` (`to`
//!   always is one), the last one at or before `from`, and the log's latest;
//! - `consistency`: RFC 6962 consistency proofs linking those outside the range to it;
//! - `entry`: one entry, its `index` and its `event` written as the exact bytes that were
//!   hashed into the tree (so a line is also a readable AuditEvent).
//!
//! The verifier trusts nothing in the package but the key: the frontier is only as good as
//! the signed roots the entries then reproduce.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::log::{Frontier, Hash, check_consistency, open_checkpoint};
use super::verify::{EntrySummary, Finding, LogReport, order_findings};

pub const FORMAT: &str = "fhirvault-audit-evidence/1";
/// How every entry line starts (the writer puts `type` first).
const ENTRY_PREFIX: &str = r#"{"type":"entry","#;

/// Writes a package, line by line.
pub struct Package {
    out: Vec<u8>,
}

impl Package {
    pub fn new(log: &str, public_key: &str, from: u64, to: u64) -> Self {
        let mut package = Self { out: Vec::new() };
        package.line(&json!({
            "type": "header",
            "format": FORMAT,
            "log": log,
            "publicKey": public_key,
            "from": from,
            "to": to,
        }));
        package
    }

    pub fn frontier(&mut self, hashes: impl Iterator<Item = Hash>) {
        let hashes: Vec<String> = hashes.map(|h| STANDARD.encode(h.0)).collect();
        self.line(&json!({ "type": "frontier", "hashes": hashes }));
    }

    pub fn checkpoint(&mut self, size: u64, note: &str) {
        self.line(&json!({ "type": "checkpoint", "size": size, "note": note }));
    }

    /// `proof` as the consistency endpoint answers it.
    pub fn consistency(&mut self, from: u64, to: u64, proof: &serde_json::Value) {
        self.line(&json!({ "type": "consistency", "from": from, "to": to, "proof": proof["proof"] }));
    }

    /// One entry; `event` is written as stored (the server rendered it as one line of JSON).
    pub fn entry(&mut self, index: u64, event: &[u8]) {
        self.out.extend_from_slice(format!(r#"{ENTRY_PREFIX}"index":{index},"event":"#).as_bytes());
        self.out.extend_from_slice(event);
        self.out.extend_from_slice(b"}\n");
    }

    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    fn line(&mut self, value: &serde_json::Value) {
        if let Ok(bytes) = serde_json::to_vec(value) {
            self.out.extend_from_slice(&bytes);
            self.out.push(b'\n');
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("line {line}: {reason}")]
    Malformed { line: usize, reason: String },
    #[error("this is not a fhirvault audit evidence package (its first line is not a `{FORMAT}` header)")]
    NotAPackage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
enum Line {
    #[serde(rename_all = "camelCase")]
    Header {
        format: String,
        log: String,
        public_key: String,
        from: u64,
        to: u64,
    },
    Frontier {
        hashes: Vec<String>,
    },
    Checkpoint {
        size: u64,
        note: String,
    },
    Consistency {
        from: u64,
        to: u64,
        proof: Vec<String>,
    },
    /// Read as an `EntryLine`: an internally tagged enum buffers its content, and a raw
    /// value cannot come from a buffer.
    Entry {},
}

/// An entry line; its event as the exact bytes of the line.
#[derive(Deserialize)]
struct EntryLine<'a> {
    index: u64,
    #[serde(borrow)]
    event: &'a RawValue,
}

/// What a package holds, read.
#[derive(Debug, Clone, Default)]
pub struct Read {
    pub log: String,
    /// The key the package names; the auditor compares it with the one they pin.
    pub public_key: String,
    pub from: u64,
    pub to: u64,
    frontier: Vec<Hash>,
    checkpoints: Vec<(u64, String)>,
    proofs: Vec<(u64, u64, Vec<Hash>)>,
    entries: Vec<EntrySummary>,
}

fn hash(s: &str) -> Option<Hash> {
    STANDARD.decode(s).ok()?.try_into().ok().map(Hash)
}

/// Read a package. An entry whose event is not JSON is kept (and reported as inserted); a
/// package whose structure is broken is refused.
pub fn read(text: &str) -> Result<Read, PackageError> {
    let mut lines = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, first)) = lines.next() else { return Err(PackageError::NotAPackage) };
    let Ok(Line::Header { format, log, public_key, from, to }) = serde_json::from_str(first) else {
        return Err(PackageError::NotAPackage);
    };
    if format != FORMAT {
        return Err(PackageError::NotAPackage);
    }
    let mut read = Read { log, public_key, from, to, ..Read::default() };
    let bad = |line: usize, reason: &str| PackageError::Malformed { line: line + 1, reason: reason.to_owned() };
    for (n, text) in lines {
        let entry = text.starts_with(ENTRY_PREFIX).then(|| serde_json::from_str::<EntryLine<'_>>(text));
        if let Some(entry) = entry {
            read.entries.push(match entry {
                Ok(EntryLine { index, event }) => {
                    let mut entry = EntrySummary::of(event.get().as_bytes());
                    // The line's index and the event's own must agree, or the entry is out of place.
                    if entry.claimed != Some(index) {
                        entry.claimed = None;
                    }
                    entry
                }
                // An entry line someone broke: it is still an entry, one no tree will match.
                Err(_) => EntrySummary { claimed: None, ..EntrySummary::of(text.as_bytes()) },
            });
            continue;
        }
        match serde_json::from_str::<Line>(text) {
            Ok(Line::Header { .. }) => return Err(bad(n, "a second header")),
            Ok(Line::Frontier { hashes }) => {
                read.frontier =
                    hashes.iter().map(|h| hash(h)).collect::<Option<_>>().ok_or_else(|| bad(n, "a hash"))?;
            }
            Ok(Line::Checkpoint { size, note }) => read.checkpoints.push((size, note)),
            Ok(Line::Consistency { from, to, proof }) => {
                let proof = proof.iter().map(|h| hash(h)).collect::<Option<_>>().ok_or_else(|| bad(n, "a hash"))?;
                read.proofs.push((from, to, proof));
            }
            Ok(Line::Entry {}) => return Err(bad(n, "an entry line must start with `{\"type\":\"entry\",`")),
            Err(e) => return Err(bad(n, &e.to_string())),
        }
    }
    Ok(read)
}

/// Verify a package against `vkey` (the verifier key of its log; the package's own when the
/// auditor pins none). Entries must run from `from` to `to` in order and reproduce the root of
/// every signed checkpoint in that range; the proofs must link the others.
pub fn verify(package: &Read, vkey: &str) -> LogReport {
    let (from, to) = (package.from, package.to);
    let mut report = LogReport {
        log: package.log.clone(),
        entries: package.entries.len() as u64,
        checkpoints: package.checkpoints.len() as u64,
        ..LogReport::default()
    };
    let mut findings = Vec::new();
    let origin = vkey.split('+').next().unwrap_or_default();
    if origin.rsplit_once('/').map(|(_, log)| log) != Some(package.log.as_str()) {
        findings.push(Finding::BadCheckpoint {
            source: "package header".into(),
            reason: format!("the package names log `{}`, the key is that of `{origin}`", package.log),
        });
    }
    let mut signed: BTreeMap<u64, (String, Hash)> = BTreeMap::new();
    for (size, note) in &package.checkpoints {
        let source = format!("package checkpoint {size}");
        match open_checkpoint(note.as_bytes(), vkey) {
            Ok(c) if c.size == *size => match signed.get(&c.size) {
                Some((first, root)) if *root != c.root => {
                    findings.push(Finding::Fork { first: first.clone(), second: source, sizes: (c.size, c.size) });
                }
                _ => {
                    signed.insert(c.size, (source, c.root));
                }
            },
            Ok(c) => findings.push(Finding::BadCheckpoint {
                source,
                reason: format!("it signs a tree of {} entries, not {size}", c.size),
            }),
            Err(e) => findings.push(Finding::BadCheckpoint { source, reason: e.to_string() }),
        }
    }
    if !signed.contains_key(&to) {
        findings.push(Finding::BadCheckpoint {
            source: format!("package checkpoint {to}"),
            reason: "the package ends without the signed checkpoint that covers it".into(),
        });
    }

    findings.extend(order_findings(&package.entries, from, to, Some(to)));

    // Extend the tree of `from` with the entries; compare the root at each signed size.
    let frontier = Frontier::load(from, Frontier::indexes(from).into_iter().zip(package.frontier.iter().copied()));
    match frontier {
        Ok(mut tree) => {
            let mut last_good = from;
            let mut bounded = false;
            let mut check = |tree: &Frontier, findings: &mut Vec<Finding>| {
                let Some((source, root)) = signed.get(&tree.size()) else { return };
                if tree.root().is_ok_and(|r| r == *root) {
                    report.verified_size = report.verified_size.max(tree.size());
                    last_good = tree.size();
                } else {
                    findings.push(Finding::RootMismatch { source: source.clone(), size: tree.size() });
                    if !bounded {
                        findings.push(Finding::AlteredWithin { from: last_good, to: tree.size() });
                        bounded = true;
                    }
                }
            };
            if from > 0 {
                check(&tree, &mut findings);
            }
            for e in &package.entries {
                if tree.append(e.leaf).is_err() {
                    break;
                }
                check(&tree, &mut findings);
                if tree.size() >= to {
                    break;
                }
            }
        }
        Err(e) => findings.push(Finding::BadCheckpoint {
            source: "package frontier".into(),
            reason: format!("the tree of {from} entries cannot be rebuilt: {e}"),
        }),
    }

    // Checkpoints outside the range: each must be linked to one inside by a valid proof.
    for (&size, (source, _)) in signed.iter().filter(|(s, _)| **s < from || **s > to) {
        let (a, b) = if size < from { (size, to) } else { (to, size) };
        let linked = package.proofs.iter().any(|(pf, pt, proof)| {
            (*pf, *pt) == (a, b)
                && signed
                    .get(&a)
                    .zip(signed.get(&b))
                    .is_some_and(|((_, ra), (_, rb))| check_consistency(proof, a, *ra, b, *rb))
        });
        if !linked {
            let second = signed.get(&to).map_or_else(|| format!("package checkpoint {to}"), |(s, _)| s.clone());
            findings.push(Finding::Fork { first: source.clone(), second, sizes: (a, b) });
        }
    }

    findings.dedup();
    report.findings = findings;
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::log::tests::Rng;
    use crate::audit::log::{LogKey, Tree, log_verifier_key, record_hash};

    fn event(i: u64) -> Vec<u8> {
        format!(r#"{{"resourceType":"AuditEvent","id":"{i}","outcome":"0"}}"#).into_bytes()
    }

    /// A log of 40 entries signed every 10, and its package of entries 15..30 (with the
    /// checkpoints 10, 20 and 30, the latest 40, and proofs 10 -> 30 and 30 -> 40).
    fn package() -> (String, String) {
        let key = LogKey::parse(&LogKey::generate("audit.test").unwrap()).unwrap();
        let mut tree = Tree::new();
        for i in 0..40 {
            tree.push(record_hash(&event(i))).unwrap();
        }
        let note = |size: u64| key.sign("demo", size, tree.root_at(size).unwrap()).unwrap();
        let mut p = Package::new("demo", &key.public_key(), 15, 30);
        let frontier = Frontier::indexes(15);
        p.frontier(frontier.iter().map(|&i| tlog_tiles::HashReader::read_hashes(&tree, &[i]).unwrap()[0]));
        for size in [20, 30, 10, 40] {
            p.checkpoint(size, &note(size));
        }
        for (a, b) in [(10, 30), (30, 40)] {
            let proof: Vec<String> = tree.consistency(a, b).unwrap().iter().map(|h| STANDARD.encode(h.0)).collect();
            p.consistency(a, b, &json!({ "proof": proof }));
        }
        for i in 15..30 {
            p.entry(i, &event(i));
        }
        let vkey = log_verifier_key(&key.public_key(), "demo").unwrap();
        (String::from_utf8(p.finish()).unwrap(), vkey)
    }

    fn findings(text: &str, vkey: &str) -> Option<Vec<Finding>> {
        read(text).ok().map(|r| verify(&r, vkey).findings)
    }

    #[test]
    fn a_package_verifies_and_each_tampering_is_located() {
        let (text, vkey) = package();
        let report = verify(&read(&text).unwrap(), &vkey);
        assert!(report.ok(), "{:?}", report.findings);
        assert_eq!((report.entries, report.verified_size), (15, 30));

        let lines: Vec<&str> = text.lines().collect();
        let entry =
            |i: usize| lines.iter().position(|l| l.starts_with(&format!(r#"{{"type":"entry","index":{i},"#))).unwrap();
        let join = |lines: &[String]| lines.join("\n");
        let owned = || lines.iter().map(|l| (*l).to_owned()).collect::<Vec<String>>();

        let mut edited = owned();
        edited[entry(22)] = edited[entry(22)].replace(r#""outcome":"0""#, r#""outcome":"4""#);
        let f = findings(&join(&edited), &vkey).unwrap();
        assert!(f.contains(&Finding::AlteredWithin { from: 20, to: 30 }), "{f:?}");

        let mut removed = owned();
        removed.remove(entry(17));
        let f = findings(&join(&removed), &vkey).unwrap();
        assert!(f.contains(&Finding::Removed { from: 17, to: 18 }), "{f:?}");

        let mut swapped = owned();
        swapped.swap(entry(25), entry(26));
        let f = findings(&join(&swapped), &vkey).unwrap();
        assert!(f.contains(&Finding::Reordered { index: 25, after: 26 }), "{f:?}");

        let mut truncated = owned();
        truncated.truncate(entry(28));
        let f = findings(&join(&truncated), &vkey).unwrap();
        assert!(f.contains(&Finding::Truncated { from: 28, to: 30 }), "{f:?}");

        let other = LogKey::parse(&LogKey::generate("audit.test").unwrap()).unwrap();
        let f = findings(&text, &log_verifier_key(&other.public_key(), "demo").unwrap()).unwrap();
        assert!(f.iter().filter(|f| matches!(f, Finding::BadCheckpoint { .. })).count() >= 4, "{f:?}");
    }

    #[test]
    fn two_thousand_random_mutations_of_a_package_are_all_caught() {
        let (text, vkey) = package();
        let mut rng = Rng(0x5eed_cafe_f00d_0001);
        let bytes = text.as_bytes();
        // The header's key is not evidence (the auditor pins theirs); everything else is.
        let key_at = text.find(r#""publicKey""#).unwrap();
        let key_end = key_at + text[key_at..].find(',').unwrap();
        let mut tried = 0;
        while tried < 2_000 {
            let at = rng.below(bytes.len() as u64) as usize;
            if (key_at..key_end).contains(&at) {
                continue;
            }
            let mut mutated = bytes.to_vec();
            mutated[at] ^= 1 << rng.below(7);
            let Ok(mutated) = String::from_utf8(mutated) else { continue };
            tried += 1;
            if let Some(f) = findings(&mutated, &vkey) {
                assert!(!f.is_empty(), "byte {at} of {text} changed and nothing was found: {mutated}");
            }
        }
    }
}
