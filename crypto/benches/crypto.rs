//! parley-crypto benchmarks: `cargo bench -p parley-crypto`.
//!
//! - `message/encrypt+decrypt 1 KiB`: one application message through a
//!   two-member group (sender encrypts, receiver decrypts).
//! - `commit/add 1 device to 1000-device group`: creating the Commit + Welcome
//!   that adds one device to a group of 1,000 devices (the group is built once,
//!   outside the timing; the Commit is discarded after each iteration).
//! - `media/encrypt 100 MiB`, `media/decrypt 100 MiB`: streaming media
//!   encryption throughput (padding, STREAM, SHA-256 of the ciphertext).

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use parley_crypto::{
    DeviceId, DeviceIdentity, Group, Provider, UserId, generate_key_packages, media,
    validate_key_package,
};

type Mem = Provider<openmls_rust_crypto::MemoryStorage>;

fn device(i: usize) -> (DeviceIdentity, Mem) {
    (
        DeviceIdentity::generate(
            UserId::try_from(format!("@u{i}:bench.example.org").as_str()).unwrap(),
            DeviceId::try_from(format!("D{i}").as_str()).unwrap(),
        ),
        Provider::new(openmls_rust_crypto::MemoryStorage::default()),
    )
}

fn key_package(
    id: &DeviceIdentity,
    p: &Mem,
    validator: &Mem,
) -> parley_crypto::ValidatedKeyPackage {
    let batch = generate_key_packages(p, id, 1).unwrap();
    validate_key_package(validator, &batch.one_time[0]).unwrap()
}

fn message(c: &mut Criterion) {
    let (a_id, a_p) = device(0);
    let (b_id, b_p) = device(1);
    let mut a = Group::create(&a_p, &a_id, b"!bench-msg:x").unwrap();
    let kp = key_package(&b_id, &b_p, &a_p);
    let pc = a.commit_add(&a_p, &a_id, &[kp]).unwrap();
    a.confirm_pending_commit(&a_p).unwrap();
    let mut b = Group::join(&b_p, &pc.welcome.unwrap()).unwrap();
    let payload = vec![0x42u8; 1024];
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Bytes(1024));
    g.bench_function("encrypt+decrypt 1 KiB", |bench| {
        bench.iter(|| {
            let ct = a.encrypt(&a_p, &a_id, &payload).unwrap();
            b.process(&b_p, &ct).unwrap()
        })
    });
    g.finish();
}

fn commit(c: &mut Criterion) {
    const N: usize = 1000;
    let (a_id, a_p) = device(0);
    let mut a = Group::create(&a_p, &a_id, b"!bench-big:x").unwrap();
    let kps: Vec<_> = (1..N)
        .map(|i| {
            let (id, p) = device(i);
            key_package(&id, &p, &a_p)
        })
        .collect();
    a.commit_add(&a_p, &a_id, &kps).unwrap();
    a.confirm_pending_commit(&a_p).unwrap();
    assert_eq!(a.members().unwrap().len(), N);

    let mut g = c.benchmark_group("commit");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("add 1 device to 1000-device group", |bench| {
        bench.iter_batched(
            || {
                let (id, p) = device(N);
                key_package(&id, &p, &a_p)
            },
            |kp| {
                let pc = a.commit_add(&a_p, &a_id, &[kp]).unwrap();
                a.discard_pending_commit(&a_p).unwrap();
                pc
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn media_throughput(c: &mut Criterion) {
    const LEN: usize = 100 * 1024 * 1024;
    let plaintext = vec![0x5Au8; LEN];
    let mut ciphertext = Vec::with_capacity(media::ciphertext_len(LEN as u64) as usize);
    let meta = media::encrypt(plaintext.as_slice(), &mut ciphertext).unwrap();

    let mut g = c.benchmark_group("media");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(15));
    g.throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("encrypt 100 MiB", |bench| {
        bench.iter(|| media::encrypt(plaintext.as_slice(), std::io::sink()).unwrap())
    });
    g.bench_function("decrypt 100 MiB", |bench| {
        bench.iter(|| {
            media::decrypt(
                &meta.key,
                ciphertext.as_slice(),
                std::io::sink(),
                Some(&meta.blob),
            )
            .unwrap()
        })
    });
    g.finish();
}

criterion_group!(benches, message, commit, media_throughput);
criterion_main!(benches);
