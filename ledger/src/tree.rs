//! One keyed table of the index: a sled tree, or, for a private index, a map in memory. A
//! reader builds a private index whenever a writer holds sled (for the whole of a `ledger
//! run`), so that build must be quick: in-memory sled took 12.8 s for a 1M-event log, these
//! maps about 2 s.

use crate::error::Result;
use std::collections::BTreeMap;
use std::ops::Bound;

pub enum Tree {
    Sled(sled::Tree),
    /// For trees read by prefix (in key order).
    Ordered(BTreeMap<Box<[u8]>, Box<[u8]>>),
    /// For trees read by key only: no key comparisons on the way in.
    Hashed(foldhash::HashMap<Box<[u8]>, Box<[u8]>>),
}

impl Tree {
    pub fn ordered() -> Tree {
        Tree::Ordered(BTreeMap::new())
    }

    pub fn hashed() -> Tree {
        Tree::Hashed(Default::default())
    }

    pub fn get<T>(&self, key: &[u8], read: impl FnOnce(&[u8]) -> T) -> Result<Option<T>> {
        Ok(match self {
            Tree::Sled(t) => t.get(key)?.map(|v| read(&v)),
            Tree::Ordered(m) => m.get(key).map(|v| read(v)),
            Tree::Hashed(m) => m.get(key).map(|v| read(v)),
        })
    }

    pub fn contains(&self, key: &[u8]) -> Result<bool> {
        Ok(match self {
            Tree::Sled(t) => t.contains_key(key)?,
            Tree::Ordered(m) => m.contains_key(key),
            Tree::Hashed(m) => m.contains_key(key),
        })
    }

    pub fn is_empty(&self) -> bool {
        match self {
            Tree::Sled(t) => t.is_empty(),
            Tree::Ordered(m) => m.is_empty(),
            Tree::Hashed(m) => m.is_empty(),
        }
    }

    pub fn insert(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                t.insert(key, value)?;
            }
            Tree::Ordered(m) => {
                m.insert(key.into(), value.into());
            }
            Tree::Hashed(m) => {
                m.insert(key.into(), value.into());
            }
        }
        Ok(())
    }

    /// Inserts unless the key is already there: the first value wins.
    pub fn insert_new(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                // A failed swap means the key was there: nothing to do.
                let _ = t.compare_and_swap(key, None as Option<&[u8]>, Some(value))?;
            }
            Tree::Ordered(m) => {
                if !m.contains_key(key) {
                    m.insert(key.into(), value.into());
                }
            }
            Tree::Hashed(m) => {
                if !m.contains_key(key) {
                    m.insert(key.into(), value.into());
                }
            }
        }
        Ok(())
    }

    /// Inserts unless the key holds a value that `keep` says stays.
    pub fn insert_unless(
        &mut self,
        key: &[u8],
        value: &[u8],
        keep: impl Fn(&[u8]) -> bool,
    ) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                if let Err(present) = t.compare_and_swap(key, None as Option<&[u8]>, Some(value))? {
                    if !present.current.as_deref().is_some_and(&keep) {
                        t.insert(key, value)?;
                    }
                }
            }
            Tree::Ordered(m) => {
                if !m.get(key).is_some_and(|v| keep(v)) {
                    m.insert(key.into(), value.into());
                }
            }
            Tree::Hashed(m) => {
                if !m.get(key).is_some_and(|v| keep(v)) {
                    m.insert(key.into(), value.into());
                }
            }
        }
        Ok(())
    }

    pub fn remove(&mut self, key: &[u8]) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                t.remove(key)?;
            }
            Tree::Ordered(m) => {
                m.remove(key);
            }
            Tree::Hashed(m) => {
                m.remove(key);
            }
        }
        Ok(())
    }

    pub fn clear(&mut self) -> Result<()> {
        match self {
            Tree::Sled(t) => t.clear()?,
            Tree::Ordered(m) => m.clear(),
            Tree::Hashed(m) => m.clear(),
        }
        Ok(())
    }

    /// Every entry (in key order, except in a `Hashed` tree).
    pub fn for_each(&self, mut f: impl FnMut(&[u8], &[u8])) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                for kv in t.iter() {
                    let (k, v) = kv?;
                    f(&k, &v);
                }
            }
            Tree::Ordered(m) => m.iter().for_each(|(k, v)| f(k, v)),
            Tree::Hashed(m) => m.iter().for_each(|(k, v)| f(k, v)),
        }
        Ok(())
    }

    /// The keys starting with `prefix`, in order, until `f` returns false.
    pub fn keys_with_prefix(&self, prefix: &[u8], mut f: impl FnMut(&[u8]) -> bool) -> Result<()> {
        match self {
            Tree::Sled(t) => {
                for kv in t.scan_prefix(prefix) {
                    if !f(&kv?.0) {
                        break;
                    }
                }
            }
            Tree::Ordered(m) => {
                let from: Bound<&[u8]> = Bound::Included(prefix);
                for (k, _) in m.range::<[u8], _>((from, Bound::Unbounded)) {
                    if !k.starts_with(prefix) || !f(k) {
                        break;
                    }
                }
            }
            Tree::Hashed(m) => {
                let mut keys: Vec<&[u8]> = m
                    .keys()
                    .map(|k| &k[..])
                    .filter(|k| k.starts_with(prefix))
                    .collect();
                keys.sort_unstable();
                for k in keys {
                    if !f(k) {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both kinds answer alike for the operations the index uses.
    #[test]
    fn sled_and_memory_trees_agree() {
        let db = sled::Config::new().temporary(true).open().unwrap();
        let mut trees = [
            Tree::Sled(db.open_tree("t").unwrap()),
            Tree::ordered(),
            Tree::hashed(),
        ];
        let mut seen = Vec::new();
        for t in &mut trees {
            assert!(t.is_empty());
            t.insert(b"ab1", b"x").unwrap();
            t.insert(b"ab2", b"y").unwrap();
            t.insert(b"ac", b"z").unwrap();
            t.insert_new(b"ab1", b"ignored").unwrap();
            t.insert_new(b"b", b"w").unwrap();
            t.remove(b"ac").unwrap();
            let mut all = Vec::new();
            t.for_each(|k, v| all.push((k.to_vec(), v.to_vec())))
                .unwrap();
            let mut prefixed = Vec::new();
            t.keys_with_prefix(b"ab", |k| {
                prefixed.push(k.to_vec());
                true
            })
            .unwrap();
            let mut first = Vec::new();
            t.keys_with_prefix(b"a", |k| {
                first.push(k.to_vec());
                false
            })
            .unwrap();
            seen.push((
                all,
                prefixed,
                first,
                t.get(b"ab1", |v| v.to_vec()).unwrap(),
                t.get(b"ac", |v| v.to_vec()).unwrap(),
                t.contains(b"b").unwrap(),
            ));
            t.clear().unwrap();
            assert!(t.is_empty());
        }
        assert_eq!(seen[0], seen[1]);
        // A hashed tree lists its entries in no particular order.
        seen[2].0.sort();
        assert_eq!(seen[0], seen[2]);
        assert_eq!(seen[0].0.len(), 3);
        assert_eq!(seen[0].1, [b"ab1".to_vec(), b"ab2".to_vec()]);
        assert_eq!(seen[0].2, [b"ab1".to_vec()]);
        assert_eq!(seen[0].3, Some(b"x".to_vec()));
    }
}
