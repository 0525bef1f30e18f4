//! Media encryption: round trips, streaming, and every way a ciphertext can
//! be damaged.

use std::io::{Read, Write};

use parley_crypto::MediaError;
use parley_crypto::media::{
    BlobHash, CHUNK_SIZE, TAG_SIZE, ciphertext_len, decrypt, decrypt_bytes, encrypt, encrypt_bytes,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

const SEALED: usize = CHUNK_SIZE + TAG_SIZE;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

#[test]
fn round_trips_across_chunk_boundaries() {
    for len in [
        0,
        1,
        100,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        3 * CHUNK_SIZE + 5,
    ] {
        let data = pattern(len);
        let (meta, ct) = encrypt_bytes(&data).unwrap();
        assert_eq!(meta.plaintext_len, len as u64);
        assert_eq!(ct.len() as u64, ciphertext_len(len as u64));
        assert_eq!(
            decrypt_bytes(&meta.key, &ct, Some(&meta.blob)).unwrap(),
            data,
            "{len}"
        );
    }
}

#[test]
fn plaintext_ending_in_marker_and_zero_bytes_survives_unpadding() {
    for tail in [&[0x80u8][..], &[0x80, 0], &[0, 0, 0], &[0x80, 0x80, 0]] {
        for pre in [0usize, CHUNK_SIZE - 1, CHUNK_SIZE] {
            let mut data = pattern(pre);
            data.extend_from_slice(tail);
            let (meta, ct) = encrypt_bytes(&data).unwrap();
            assert_eq!(decrypt_bytes(&meta.key, &ct, None).unwrap(), data);
        }
    }
    let zeros = vec![0u8; 5 * CHUNK_SIZE];
    let (meta, ct) = encrypt_bytes(&zeros).unwrap();
    assert_eq!(decrypt_bytes(&meta.key, &ct, None).unwrap(), zeros);
}

/// A reader that yields `len` pseudo-random bytes in odd-sized pieces.
struct Source {
    left: u64,
    state: u64,
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (buf.len() as u64).min(self.left).min(7_777) as usize;
        for b in &mut buf[..n] {
            self.state = self.state.wrapping_mul(6364136223846793005).wrapping_add(1);
            *b = (self.state >> 33) as u8;
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// A writer that only hashes and counts.
#[derive(Default)]
struct Sink {
    hash: Sha256,
    len: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.hash.update(buf);
        self.len += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn streams_large_files_without_buffering_them() {
    let len = 12 * 1024 * 1024 + 12_345;
    // Encrypt from a reader into a file-like buffer, decrypt into a hashing sink.
    let mut ct = Vec::new();
    let meta = encrypt(
        Source {
            left: len,
            state: 1,
        },
        &mut ct,
    )
    .unwrap();
    assert_eq!(meta.plaintext_len, len);
    let mut expected = Sink::default();
    std::io::copy(
        &mut Source {
            left: len,
            state: 1,
        },
        &mut expected,
    )
    .unwrap();
    let mut sink = Sink::default();
    let n = decrypt(&meta.key, ct.as_slice(), &mut sink, Some(&meta.blob)).unwrap();
    assert_eq!(n, len);
    assert_eq!(sink.hash.finalize(), expected.hash.finalize());
}

fn three_chunk_file() -> (parley_crypto::media::EncryptedMedia, Vec<u8>) {
    let (meta, ct) = encrypt_bytes(&pattern(2 * CHUNK_SIZE + 100)).unwrap();
    assert_eq!(ct.len().div_ceil(SEALED), 3);
    (meta, ct)
}

#[test]
fn tampering_is_detected() {
    let (meta, ct) = three_chunk_file();
    for pos in [0, 5, SEALED - 1, SEALED + 17, ct.len() - 1] {
        let mut bad = ct.clone();
        bad[pos] ^= 0x01;
        let chunk = (pos / SEALED) as u64;
        match decrypt_bytes(&meta.key, &bad, None) {
            Err(MediaError::Tampered { chunk: c }) => assert_eq!(c, chunk, "{pos}"),
            other => panic!("{pos}: {other:?}"),
        }
    }
}

#[test]
fn truncation_is_detected() {
    let (meta, ct) = three_chunk_file();
    // At a chunk boundary: the remaining last chunk was not sealed as last.
    for cut in [SEALED, 2 * SEALED] {
        assert!(matches!(
            decrypt_bytes(&meta.key, &ct[..cut], None),
            Err(MediaError::Truncated)
        ));
    }
    assert!(matches!(
        decrypt_bytes(&meta.key, &[], None),
        Err(MediaError::Truncated)
    ));
    // Mid-chunk: that chunk fails authentication.
    for cut in [10, SEALED + 100, ct.len() - 1] {
        assert!(
            matches!(
                decrypt_bytes(&meta.key, &ct[..cut], None),
                Err(MediaError::Tampered { .. })
            ),
            "{cut}"
        );
    }
}

#[test]
fn reordering_and_splicing_are_detected() {
    let (meta, ct) = three_chunk_file();
    let mut swapped = ct[SEALED..2 * SEALED].to_vec();
    swapped.extend_from_slice(&ct[..SEALED]);
    swapped.extend_from_slice(&ct[2 * SEALED..]);
    assert!(matches!(
        decrypt_bytes(&meta.key, &swapped, None),
        Err(MediaError::Tampered { chunk: 0 })
    ));
    // Dropping a middle chunk.
    let mut dropped = ct[..SEALED].to_vec();
    dropped.extend_from_slice(&ct[2 * SEALED..]);
    assert!(matches!(
        decrypt_bytes(&meta.key, &dropped, None),
        Err(MediaError::Tampered { chunk: 1 })
    ));
    // Appending bytes after the last chunk.
    let mut longer = ct.clone();
    longer.extend_from_slice(&[0u8; 20]);
    assert!(matches!(
        decrypt_bytes(&meta.key, &longer, None),
        Err(MediaError::Tampered { chunk: 2 })
    ));
    // A chunk from another file under another key.
    let (_, other) = three_chunk_file();
    let mut spliced = ct[..SEALED].to_vec();
    spliced.extend_from_slice(&other[SEALED..]);
    assert!(matches!(
        decrypt_bytes(&meta.key, &spliced, None),
        Err(MediaError::Tampered { chunk: 1 })
    ));
}

#[test]
fn wrong_key_and_wrong_address_fail() {
    let (meta, ct) = encrypt_bytes(b"secret picture").unwrap();
    let other = parley_crypto::MediaKey::generate();
    assert!(matches!(
        decrypt_bytes(&other, &ct, None),
        Err(MediaError::Tampered { chunk: 0 })
    ));
    assert!(matches!(
        decrypt_bytes(&meta.key, &ct, Some(&BlobHash::of(b"something else"))),
        Err(MediaError::HashMismatch)
    ));
    // Identical plaintexts give unrelated blobs (no convergent encryption).
    let (meta2, ct2) = encrypt_bytes(b"secret picture").unwrap();
    assert_ne!(ct, ct2);
    assert_ne!(meta.blob, meta2.blob);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn prop_round_trip(data in proptest::collection::vec(any::<u8>(), 0..(2 * CHUNK_SIZE + 300))) {
        let (meta, ct) = encrypt_bytes(&data).unwrap();
        prop_assert_eq!(ct.len() as u64, ciphertext_len(data.len() as u64));
        prop_assert_eq!(BlobHash::of(&ct), meta.blob);
        prop_assert_eq!(decrypt_bytes(&meta.key, &ct, Some(&meta.blob)).unwrap(), data);
    }

    #[test]
    fn prop_any_bit_flip_fails(data in proptest::collection::vec(any::<u8>(), 0..5000), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (meta, mut ct) = encrypt_bytes(&data).unwrap();
        let i = pos.index(ct.len());
        ct[i] ^= 1 << bit;
        prop_assert!(decrypt_bytes(&meta.key, &ct, None).is_err());
    }
}
