//! The Merkle tree of RFC 6962 §2.1 (and RFC 9162 §2.1): leaf and node hashes with their
//! one-byte domain prefixes, the tree hash (MTH), audit paths and consistency proofs, made
//! and checked.
//!
//! Written here rather than taken from `ct-merkle`: that crate needs the digest 0.11
//! generation of RustCrypto (this graph is on 0.10, see `chain::source`) and keeps every leaf
//! in memory, while [`RootBuilder`] computes a root over any number of leaves in O(log n)
//! memory. Checked against the RFC 6962 test vectors below and, in the test suite, against
//! an independent implementation.

use sha2::{Digest, Sha256};

/// A SHA-256 node of the tree.
pub type Hash = [u8; 32];

/// The hash of a leaf: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update([0x00]);
    h.update(data);
    h.finalize().into()
}

/// The hash of an inner node: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0x01]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// The tree hash of no leaves: `SHA-256("")`.
pub fn empty_root() -> Hash {
    Sha256::digest(b"").into()
}

/// The largest power of two smaller than `n` (`n` ≥ 2).
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH over leaf hashes.
pub fn root(leaves: &[Hash]) -> Hash {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split(n);
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

/// The root of leaves pushed one at a time, holding one hash per set bit of the count:
/// the complete subtrees, largest first, that MTH combines from the right.
#[derive(Debug, Clone, Default)]
pub struct RootBuilder {
    /// (hash, leaf count) of each complete subtree, sizes strictly decreasing.
    stack: Vec<(Hash, u64)>,
    size: u64,
}

impl RootBuilder {
    /// Adds the next leaf hash.
    pub fn push(&mut self, leaf: Hash) {
        let mut node = (leaf, 1u64);
        while let Some(&(top, size)) = self.stack.last() {
            if size != node.1 {
                break;
            }
            self.stack.pop();
            node = (node_hash(&top, &node.0), size * 2);
        }
        self.stack.push(node);
        self.size += 1;
    }

    /// The number of leaves pushed.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// MTH of the leaves pushed so far.
    pub fn root(&self) -> Hash {
        let mut nodes = self.stack.iter().rev();
        let Some(&(mut right, _)) = nodes.next() else {
            return empty_root();
        };
        for (left, _) in nodes {
            right = node_hash(left, &right);
        }
        right
    }
}

/// The audit path of leaf `index` in the tree over `leaves` (RFC 6962 §2.1.1: PATH), from
/// the leaf's sibling up. `None` if `index` is not a leaf.
pub fn inclusion_path(leaves: &[Hash], index: usize) -> Option<Vec<Hash>> {
    if index >= leaves.len() {
        return None;
    }
    let mut path = Vec::new();
    path_into(leaves, index, &mut path);
    Some(path)
}

fn path_into(leaves: &[Hash], m: usize, path: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path_into(&leaves[..k], m, path);
        path.push(root(&leaves[k..]));
    } else {
        path_into(&leaves[k..], m - k, path);
        path.push(root(&leaves[..k]));
    }
}

/// Checks an audit path (RFC 9162 §2.1.3.2): that `leaf` is leaf `index` of the tree of
/// `size` leaves whose root is `root`.
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, path: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f, mut s) = (index, size - 1);
    let mut r = *leaf;
    for p in path {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            r = node_hash(p, &r);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f >>= 1;
        s >>= 1;
    }
    s == 0 && r == *root
}

/// The consistency proof (RFC 6962 §2.1.2: PROOF) that the tree over the first `m` of
/// `leaves` is a prefix of the tree over all of them. `None` unless 1 ≤ m ≤ n.
pub fn consistency_path(leaves: &[Hash], m: usize) -> Option<Vec<Hash>> {
    if m == 0 || m > leaves.len() {
        return None;
    }
    let mut proof = Vec::new();
    subproof_into(m, leaves, true, &mut proof);
    Some(proof)
}

fn subproof_into(m: usize, leaves: &[Hash], complete: bool, proof: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            proof.push(root(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof_into(m, &leaves[..k], complete, proof);
        proof.push(root(&leaves[k..]));
    } else {
        subproof_into(m - k, &leaves[k..], false, proof);
        proof.push(root(&leaves[..k]));
    }
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2): that the tree of `old_size` leaves with
/// root `old_root` is a prefix of the tree of `new_size` leaves with root `new_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> bool {
    if old_size == 0 || old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    let mut path: Vec<Hash> = Vec::with_capacity(proof.len() + 1);
    if old_size.is_power_of_two() {
        path.push(*old_root);
    }
    path.extend_from_slice(proof);
    let Some((first, rest)) = path.split_first() else {
        return false;
    };
    let (mut f, mut s) = (old_size - 1, new_size - 1);
    while f & 1 == 1 {
        f >>= 1;
        s >>= 1;
    }
    let (mut fr, mut sr) = (*first, *first);
    for c in rest {
        if s == 0 {
            return false;
        }
        if f & 1 == 1 || f == s {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f & 1 == 0 {
                while f & 1 == 0 && f != 0 {
                    f >>= 1;
                    s >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f >>= 1;
        s >>= 1;
    }
    fr == *old_root && sr == *new_root && s == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The leaves of the RFC 6962 test vectors (certificate-transparency, merkle_test).
    const LEAVES: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    /// MTH of the first 1..=8 of them.
    const ROOTS: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];

    fn h(text: &str) -> Hash {
        hex::decode(text).unwrap().try_into().unwrap()
    }

    fn leaves() -> Vec<Hash> {
        LEAVES
            .iter()
            .map(|l| leaf_hash(&hex::decode(l).unwrap()))
            .collect()
    }

    #[test]
    fn roots_match_the_rfc6962_vectors() {
        assert_eq!(
            hex::encode(empty_root()),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let leaves = leaves();
        let mut builder = RootBuilder::default();
        for (n, expected) in ROOTS.iter().enumerate() {
            assert_eq!(
                hex::encode(root(&leaves[..=n])),
                *expected,
                "size {}",
                n + 1
            );
            builder.push(leaves[n]);
            assert_eq!(
                hex::encode(builder.root()),
                *expected,
                "builder, size {}",
                n + 1
            );
        }
    }

    #[test]
    fn audit_paths_match_the_rfc6962_vectors() {
        // (leaf index, tree size, path) from certificate-transparency's merkle_test.
        let vectors: [(usize, usize, &[&str]); 5] = [
            (0, 1, &[]),
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
            (
                2,
                3,
                &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
            ),
            (
                1,
                5,
                &[
                    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                    "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                    "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                ],
            ),
        ];
        let leaves = leaves();
        for (index, size, expected) in vectors {
            let path = inclusion_path(&leaves[..size], index).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|e| h(e)).collect();
            assert_eq!(path, expected, "leaf {index} of {size}");
            let root = h(ROOTS[size - 1]);
            assert!(verify_inclusion(
                &leaves[index],
                index as u64,
                size as u64,
                &path,
                &root
            ));
        }
    }

    #[test]
    fn consistency_proofs_match_the_rfc6962_vectors() {
        let vectors: [(usize, usize, &[&str]); 4] = [
            (1, 1, &[]),
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
        let leaves = leaves();
        for (m, n, expected) in vectors {
            let proof = consistency_path(&leaves[..n], m).unwrap();
            let expected: Vec<Hash> = expected.iter().map(|e| h(e)).collect();
            assert_eq!(proof, expected, "{m} -> {n}");
            assert!(verify_consistency(
                m as u64,
                n as u64,
                &h(ROOTS[m - 1]),
                &h(ROOTS[n - 1]),
                &proof
            ));
        }
    }

    fn tree(n: usize) -> Vec<Hash> {
        (0..n)
            .map(|i| leaf_hash(&(i as u64).to_be_bytes()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_audit_path_checks_and_any_change_fails(n in 1usize..300, pick in any::<usize>(), bit in 0usize..256) {
            let leaves = tree(n);
            let r = root(&leaves);
            let mut builder = RootBuilder::default();
            leaves.iter().for_each(|l| builder.push(*l));
            prop_assert_eq!(builder.root(), r);
            for i in 0..n {
                let path = inclusion_path(&leaves, i).unwrap();
                prop_assert!(path.len() <= 64 - (n as u64).leading_zeros() as usize);
                prop_assert!(verify_inclusion(&leaves[i], i as u64, n as u64, &path, &r));
            }
            let i = pick % n;
            let path = inclusion_path(&leaves, i).unwrap();
            let size = n as u64;
            let mut other = leaves[i];
            other[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify_inclusion(&other, i as u64, size, &path, &r));
            if n > 1 {
                let j = (i + 1 + pick / n % (n - 1)) % n;
                prop_assert!(!verify_inclusion(&leaves[i], j as u64, size, &path, &r));
            }
            // A size at or below the index is refused. (Other sizes can check against the same
            // root: RFC 9162 binds a proof to a (size, root) pair, which the signed dataset
            // document fixes; its tests change the size there.)
            prop_assert!(!verify_inclusion(&leaves[i], i as u64, i as u64, &path, &r));
            prop_assert!(!verify_inclusion(&leaves[i], i as u64, size, &path, &other));
            if !path.is_empty() {
                let mut bad = path.clone();
                let k = pick % bad.len();
                bad[k][bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_inclusion(&leaves[i], i as u64, size, &bad, &r));
                prop_assert!(!verify_inclusion(&leaves[i], i as u64, size, &path[..path.len() - 1], &r));
            }
            let mut longer = path.clone();
            longer.push(r);
            prop_assert!(!verify_inclusion(&leaves[i], i as u64, size, &longer, &r));
        }

        #[test]
        fn every_consistency_proof_checks_and_any_change_fails(n in 1usize..200, pick in any::<usize>(), bit in 0usize..256) {
            let leaves = tree(n);
            let new_root = root(&leaves);
            for m in 1..=n {
                let proof = consistency_path(&leaves, m).unwrap();
                let old_root = root(&leaves[..m]);
                prop_assert!(verify_consistency(m as u64, n as u64, &old_root, &new_root, &proof));
            }
            let m = 1 + pick % n;
            let proof = consistency_path(&leaves, m).unwrap();
            let old_root = root(&leaves[..m]);
            let mut other = old_root;
            other[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(!verify_consistency(m as u64, n as u64, &other, &new_root, &proof));
            prop_assert!(!verify_consistency(m as u64, n as u64, &old_root, &other, &proof));
            prop_assert!(!verify_consistency(n as u64 + 1, n as u64, &old_root, &new_root, &proof));
            if !proof.is_empty() {
                let mut bad = proof.clone();
                let k = pick % bad.len();
                bad[k][bit / 8] ^= 1 << (bit % 8);
                prop_assert!(!verify_consistency(m as u64, n as u64, &old_root, &new_root, &bad));
            }
        }
    }
}
