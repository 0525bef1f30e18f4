//! Group life cycle: joins, adds, removes, races, ordering, rejections.

use openmls::prelude::tls_codec::Serialize as _;
use parley_crypto::{
    CIPHERSUITE, CommitError, EncryptError, Group, JoinError, KeyPackageError, ProcessError,
    Received, generate_key_packages, validate_key_package,
};

use crate::support::{Device, Hub, identity};

#[test]
fn two_devices_talk_both_ways() {
    let mut hub = Hub::default();
    let mut alice = Device::new("alice");
    let mut bob = Device::new("bob");
    alice.create_group(&hub, b"!chat1:chat.example.org");
    alice.add(&mut hub, &mut [&mut bob]);
    assert_eq!(alice.group().epoch(), 1);
    assert_eq!(bob.group().epoch(), 1);

    let members = bob.group().members().unwrap();
    assert_eq!(members.len(), 2);
    assert!(
        members
            .iter()
            .any(|m| m.identity == *alice.identity.public())
    );

    alice.send(&mut hub, "hi bob");
    bob.send(&mut hub, "hi alice");
    let got = bob.catch_up(&hub);
    assert_eq!(Device::texts(&got), ["hi bob"]);
    match &got[0] {
        Received::Application { sender, .. } => {
            assert_eq!(sender.identity, *alice.identity.public())
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(Device::texts(&alice.catch_up(&hub)), ["hi alice"]);
}

#[test]
fn fifty_devices() {
    let mut hub = Hub::default();
    let mut devices: Vec<Device> = (0..50).map(|i| Device::new(&format!("u{i}"))).collect();
    let (first, rest) = devices.split_at_mut(1);
    let creator = &mut first[0];
    creator.create_group(&hub, b"!big:chat.example.org");
    let mut refs: Vec<&mut Device> = rest.iter_mut().collect();
    creator.add(&mut hub, &mut refs);
    assert_eq!(creator.group().members().unwrap().len(), 50);

    // A few members speak; everyone reads everything.
    for i in [0usize, 17, 49] {
        let name = devices[i].name.clone();
        devices[i].send(&mut hub, &format!("hello from {name}"));
    }
    for d in devices.iter_mut() {
        let texts = Device::texts(&d.catch_up(&hub));
        let expected = if ["u0", "u17", "u49"].contains(&d.name.as_str()) {
            2
        } else {
            3
        };
        assert_eq!(texts.len(), expected, "{}", d.name);
    }

    // Member 25 rotates its keys; everyone follows and still talks.
    let pc = {
        let d = &mut devices[25];
        let (p, id) = (&d.provider, &d.identity);
        d.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    devices[25].commit(&mut hub, pc).unwrap();
    for d in devices.iter_mut() {
        d.catch_up(&hub);
        assert_eq!(d.group().epoch(), 2);
    }
    devices[3].send(&mut hub, "after update");
    for d in devices.iter_mut() {
        let texts = Device::texts(&d.catch_up(&hub));
        if d.name != "u3" {
            assert_eq!(texts, ["after update"]);
        }
    }
}

#[test]
fn adds_and_removes_across_epochs() {
    let mut hub = Hub::default();
    let (mut a, mut b, mut c, mut d) = (
        Device::new("a"),
        Device::new("b"),
        Device::new("c"),
        Device::new("d"),
    );
    a.create_group(&hub, b"!g:x");
    a.add(&mut hub, &mut [&mut b, &mut c]);
    a.send(&mut hub, "epoch1");
    let before_d = hub.log.last().unwrap().bytes.clone();
    assert_eq!(Device::texts(&c.catch_up(&hub)), ["epoch1"]);
    b.catch_up(&hub);

    // Remove c.
    let c_leaf = a
        .group()
        .find_member("@c:chat.example.org", "CDEV")
        .unwrap()
        .leaf_index;
    let pc = {
        let (p, id) = (&a.provider, &a.identity);
        a.group
            .as_mut()
            .unwrap()
            .commit_remove(p, id, &[c_leaf])
            .unwrap()
    };
    a.commit(&mut hub, pc).unwrap();
    match b.catch_up(&hub).as_slice() {
        [Received::Commit(s)] => {
            assert_eq!(s.removed.len(), 1);
            assert_eq!(s.removed[0].identity, *c.identity.public());
            assert!(!s.self_removed);
        }
        other => panic!("{other:?}"),
    }
    // c learns it was removed; its group is inactive.
    let c_received = c.catch_up(&hub);
    assert!(matches!(&c_received[0], Received::Commit(s) if s.self_removed));
    assert!(!c.group().is_active());

    a.send(&mut hub, "without c");
    let secret = hub.log.last().unwrap().bytes.clone();
    assert_eq!(Device::texts(&b.catch_up(&hub)), ["without c"]);
    let (p, g) = (&c.provider, c.group.as_mut().unwrap());
    assert_eq!(g.process(p, &secret), Err(ProcessError::GroupInactive));
    assert!(matches!(
        g.encrypt(p, &c.identity, b"x"),
        Err(EncryptError::NotAMember)
    ));

    // Add d: it reads what follows, not what came before.
    a.add(&mut hub, &mut [&mut d]);
    b.catch_up(&hub);
    a.send(&mut hub, "hello d");
    assert_eq!(Device::texts(&d.catch_up(&hub)), ["hello d"]);
    let (p, g) = (&d.provider, d.group.as_mut().unwrap());
    assert!(matches!(
        g.process(p, &before_d),
        Err(ProcessError::WrongEpoch {
            message_epoch: 1,
            group_epoch: 3
        })
    ));
    assert!(matches!(
        g.process(p, &secret),
        Err(ProcessError::WrongEpoch {
            message_epoch: 2,
            group_epoch: 3
        })
    ));
    assert_eq!(Device::texts(&b.catch_up(&hub)), ["hello d"]);
}

#[test]
fn out_of_order_delivery_within_an_epoch() {
    let mut hub = Hub::default();
    let (mut a, mut b) = (Device::new("a"), Device::new("b"));
    a.create_group(&hub, b"!ooo:x");
    a.add(&mut hub, &mut [&mut b]);
    let start = hub.log.len();
    for i in 0..10 {
        a.send(&mut hub, &format!("m{i}"));
    }
    let mut msgs: Vec<Vec<u8>> = hub.log[start..].iter().map(|e| e.bytes.clone()).collect();
    msgs.reverse();
    msgs.swap(2, 7);
    let (p, g) = (&b.provider, b.group.as_mut().unwrap());
    let mut texts: Vec<String> = msgs
        .iter()
        .map(|m| match g.process(p, m).unwrap() {
            Received::Application { plaintext, .. } => String::from_utf8(plaintext).unwrap(),
            other => panic!("{other:?}"),
        })
        .collect();
    texts.sort();
    assert_eq!(texts, (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>());
    // A replayed message does not decrypt twice.
    assert_eq!(g.process(p, &msgs[0]), Err(ProcessError::DecryptionFailed));
}

#[test]
fn messages_from_recent_past_epochs_still_decrypt() {
    let mut hub = Hub::default();
    let (mut a, mut b) = (Device::new("a"), Device::new("b"));
    a.create_group(&hub, b"!past:x");
    a.add(&mut hub, &mut [&mut b]);
    // b sends in epoch 1, but a moves on before reading it.
    let old = {
        let (p, id) = (&b.provider, &b.identity);
        b.group.as_mut().unwrap().encrypt(p, id, b"late").unwrap()
    };
    for _ in 0..3 {
        let pc = {
            let (p, id) = (&a.provider, &a.identity);
            a.group.as_mut().unwrap().commit_update(p, id).unwrap()
        };
        a.commit(&mut hub, pc).unwrap();
    }
    assert_eq!(a.group().epoch(), 4);
    let (p, g) = (&a.provider, a.group.as_mut().unwrap());
    assert!(matches!(
        g.process(p, &old).unwrap(),
        Received::Application { epoch: 1, .. }
    ));
    // One more epoch and it is too old.
    let old2 = {
        b.catch_up(&hub);
        let (p, id) = (&b.provider, &b.identity);
        b.group.as_mut().unwrap().encrypt(p, id, b"late2").unwrap()
    };
    for _ in 0..4 {
        let pc = {
            let (p, id) = (&a.provider, &a.identity);
            a.group.as_mut().unwrap().commit_update(p, id).unwrap()
        };
        a.commit(&mut hub, pc).unwrap();
    }
    let (p, g) = (&a.provider, a.group.as_mut().unwrap());
    assert!(matches!(
        g.process(p, &old2),
        Err(ProcessError::WrongEpoch {
            message_epoch: 4,
            group_epoch: 8
        })
    ));
}

#[test]
fn commit_race_is_resolved_by_hub_order() {
    let mut hub = Hub::default();
    let (mut a, mut b, mut c) = (Device::new("a"), Device::new("b"), Device::new("c"));
    a.create_group(&hub, b"!race:x");
    a.add(&mut hub, &mut [&mut b, &mut c]);

    // a and b both commit in epoch 1.
    let pa = {
        let (p, id) = (&a.provider, &a.identity);
        a.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    let pb = {
        let (p, id) = (&b.provider, &b.identity);
        b.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    assert_eq!((pa.epoch, pb.epoch), (1, 1));
    // A second commit while one is pending is refused.
    {
        let (p, id) = (&b.provider, &b.identity);
        assert_eq!(
            b.group.as_mut().unwrap().commit_update(p, id),
            Err(CommitError::PendingCommitExists)
        );
    }
    a.commit(&mut hub, pa).unwrap();
    // The hub refuses b's: 409 wrong_epoch {current_epoch: 2}.
    assert_eq!(hub.submit_commit("b", &pb), Err(2));
    {
        let p = &b.provider;
        b.group.as_mut().unwrap().discard_pending_commit(p).unwrap();
    }
    assert!(!b.group().has_pending_commit());
    let got = b.catch_up(&hub);
    assert!(matches!(&got[0], Received::Commit(s) if !s.discarded_own_pending && s.epoch == 2));
    // Retry.
    let pb2 = {
        let (p, id) = (&b.provider, &b.identity);
        b.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    assert_eq!(pb2.epoch, 2);
    b.commit(&mut hub, pb2).unwrap();

    // c sees both commits in order, a sees b's.
    c.catch_up(&hub);
    a.catch_up(&hub);
    for d in [&mut a, &mut b, &mut c] {
        assert_eq!(d.group().epoch(), 3);
    }
    c.send(&mut hub, "all agree");
    assert_eq!(Device::texts(&a.catch_up(&hub)), ["all agree"]);
    assert_eq!(Device::texts(&b.catch_up(&hub)), ["all agree"]);
}

#[test]
fn processing_the_winner_discards_the_losing_pending_commit() {
    let mut hub = Hub::default();
    let (mut a, mut b) = (Device::new("a"), Device::new("b"));
    a.create_group(&hub, b"!race2:x");
    a.add(&mut hub, &mut [&mut b]);
    let pa = {
        let (p, id) = (&a.provider, &a.identity);
        a.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    let _pb = {
        let (p, id) = (&b.provider, &b.identity);
        b.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    a.commit(&mut hub, pa).unwrap();
    // b reads the winner before it hears back about its own attempt.
    let got = b.catch_up(&hub);
    assert!(matches!(&got[0], Received::Commit(s) if s.discarded_own_pending));
    assert!(!b.group().has_pending_commit());
    b.send(&mut hub, "ok");
    assert_eq!(Device::texts(&a.catch_up(&hub)), ["ok"]);
}

#[test]
fn own_commit_echoed_by_the_hub_confirms_it() {
    let mut hub = Hub::default();
    let (mut a, mut b) = (Device::new("a"), Device::new("b"));
    a.create_group(&hub, b"!echo:x");
    a.add(&mut hub, &mut [&mut b]);
    let pc = {
        let (p, id) = (&a.provider, &a.identity);
        a.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    hub.submit_commit("a", &pc).unwrap();
    let (p, g) = (&a.provider, a.group.as_mut().unwrap());
    assert_eq!(
        g.process(p, &pc.commit),
        Ok(Received::OwnCommitConfirmed { epoch: 2 })
    );
    assert!(!g.has_pending_commit());
    assert_eq!(
        g.confirm_pending_commit(p),
        Err(CommitError::NoPendingCommit)
    );
}

#[test]
fn wrong_epoch_and_non_member_messages_are_rejected() {
    let mut hub = Hub::default();
    let (mut a, mut b) = (Device::new("a"), Device::new("b"));
    a.create_group(&hub, b"!shared-id:x");
    a.add(&mut hub, &mut [&mut b]);

    // A commit for an epoch b has already left.
    let stale = hub.log[0].bytes.clone();
    let (p, g) = (&b.provider, b.group.as_mut().unwrap());
    assert_eq!(
        g.process(p, &stale),
        Err(ProcessError::WrongEpoch {
            message_epoch: 0,
            group_epoch: 1
        })
    );

    // An application message from the future.
    let pc = {
        let (p, id) = (&a.provider, &a.identity);
        a.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    a.commit(&mut hub, pc).unwrap();
    let future = {
        let (p, id) = (&a.provider, &a.identity);
        a.group
            .as_mut()
            .unwrap()
            .encrypt(p, id, b"from epoch 2")
            .unwrap()
    };
    let (p, g) = (&b.provider, b.group.as_mut().unwrap());
    assert_eq!(
        g.process(p, &future),
        Err(ProcessError::WrongEpoch {
            message_epoch: 2,
            group_epoch: 1
        })
    );
    b.catch_up(&hub);

    // Mallory runs her own group under the same id, at the same epoch.
    let mut m = Device::new("mallory");
    let mut m2 = Device::new("mallory2");
    m.create_group(&Hub::default(), b"!shared-id:x");
    let mut mhub = Hub::default();
    m.add(&mut mhub, &mut [&mut m2]);
    let mpc = {
        let (p, id) = (&m.provider, &m.identity);
        m.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    let mmsg = {
        let (p, id) = (&m.provider, &m.identity);
        m.group.as_mut().unwrap().encrypt(p, id, b"hi").unwrap()
    };
    let (p, g) = (&b.provider, b.group.as_mut().unwrap());
    assert_eq!(g.epoch(), 2);
    let mut mpc_epoch2 = mpc.clone();
    // Bring mallory to b's epoch so only membership can tell them apart.
    m.commit(&mut mhub, mpc).unwrap();
    let mpc2 = {
        let (p, id) = (&m.provider, &m.identity);
        m.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    mpc_epoch2.commit = mpc2.commit;
    assert_eq!(mpc2.epoch, 2);
    assert_eq!(
        g.process(p, &mpc_epoch2.commit),
        Err(ProcessError::NotAMember)
    );
    assert!(matches!(
        g.process(p, &mmsg),
        Err(ProcessError::WrongEpoch { .. }) | Err(ProcessError::DecryptionFailed)
    ));
    // Garbage and other groups.
    assert_eq!(
        g.process(p, b"\x00\x01garbage"),
        Err(ProcessError::Malformed)
    );
    let mut other = Device::new("o");
    other.create_group(&Hub::default(), b"!other:x");
    let (op, oid) = (&other.provider, &other.identity);
    let other_msg = other
        .group
        .as_mut()
        .unwrap()
        .encrypt(op, oid, b"x")
        .unwrap();
    assert_eq!(g.process(p, &other_msg), Err(ProcessError::WrongGroup));
}

#[test]
fn removed_member_cannot_speak_through_a_past_epoch() {
    let mut hub = Hub::default();
    let (mut a, mut b, mut c) = (Device::new("a"), Device::new("b"), Device::new("c"));
    a.create_group(&hub, b"!evict:x");
    a.add(&mut hub, &mut [&mut b, &mut c]);
    // c has not seen its removal yet and sends in epoch 1.
    let leaf = a
        .group()
        .find_member("@c:chat.example.org", "CDEV")
        .unwrap()
        .leaf_index;
    let pc = {
        let (p, id) = (&a.provider, &a.identity);
        a.group
            .as_mut()
            .unwrap()
            .commit_remove(p, id, &[leaf])
            .unwrap()
    };
    a.commit(&mut hub, pc).unwrap();
    b.catch_up(&hub);
    let late = {
        let (p, id) = (&c.provider, &c.identity);
        c.group
            .as_mut()
            .unwrap()
            .encrypt(p, id, b"still here?")
            .unwrap()
    };
    let (p, g) = (&b.provider, b.group.as_mut().unwrap());
    assert_eq!(g.process(p, &late), Err(ProcessError::NotAMember));
}

#[test]
fn leaving_goes_through_a_proposal() {
    let mut hub = Hub::default();
    let (mut a, mut b, mut c) = (Device::new("a"), Device::new("b"), Device::new("c"));
    a.create_group(&hub, b"!leave:x");
    a.add(&mut hub, &mut [&mut b, &mut c]);
    let proposal = {
        let (p, id) = (&c.provider, &c.identity);
        c.group.as_mut().unwrap().leave(p, id).unwrap()
    };
    hub.send("c", proposal);
    let got = b.catch_up(&hub);
    assert!(
        matches!(&got[0], Received::ProposalQueued { removes: Some(m), sender }
        if m.identity == *c.identity.public() && sender.identity == *c.identity.public())
    );
    {
        let (p, id) = (&b.provider, &b.identity);
        assert_eq!(
            b.group.as_mut().unwrap().encrypt(p, id, b"x"),
            Err(EncryptError::PendingProposals)
        );
    }
    a.catch_up(&hub);
    let pc = {
        let (p, id) = (&a.provider, &a.identity);
        a.group
            .as_mut()
            .unwrap()
            .commit_pending_proposals(p, id)
            .unwrap()
    };
    a.commit(&mut hub, pc).unwrap();
    assert!(matches!(&b.catch_up(&hub)[0], Received::Commit(s) if s.removed.len() == 1));
    assert!(matches!(&c.catch_up(&hub)[0], Received::Commit(s) if s.self_removed));
    assert_eq!(a.group().members().unwrap().len(), 2);
    b.send(&mut hub, "bye c");
    assert_eq!(Device::texts(&a.catch_up(&hub)), ["bye c"]);
}

#[test]
fn key_packages_one_time_and_last_resort() {
    let bob = Device::new("bob");
    let batch = generate_key_packages(&bob.provider, &bob.identity, 3).unwrap();
    assert_eq!(batch.one_time.len(), 3);
    for kp in &batch.one_time {
        let v = validate_key_package(&bob.provider, kp).unwrap();
        assert!(!v.is_last_resort());
        assert_eq!(v.identity(), bob.identity.public());
    }
    let last = validate_key_package(&bob.provider, &batch.last_resort).unwrap();
    assert!(last.is_last_resort());

    // Tampering breaks the signature.
    let mut bad = batch.one_time[0].clone();
    let n = bad.len();
    bad[n - 10] ^= 1;
    assert!(validate_key_package(&bob.provider, &bad).is_err());
    assert_eq!(
        validate_key_package(&bob.provider, b"nope").unwrap_err(),
        KeyPackageError::Malformed
    );

    // A one-time KeyPackage joins once; the last-resort one any number of times.
    let mut bob = bob;
    let one_time = validate_key_package(&bob.provider, &batch.one_time[0]).unwrap();
    let mut welcomes_one_time = Vec::new();
    let mut welcomes_last = Vec::new();
    for i in 0..2 {
        let mut a = Device::new("a");
        a.create_group(&Hub::default(), format!("!kp{i}:x").as_bytes());
        let (p, id) = (&a.provider, &a.identity);
        let g = a.group.as_mut().unwrap();
        welcomes_one_time.push(
            g.commit_add(p, id, std::slice::from_ref(&one_time))
                .unwrap()
                .welcome
                .unwrap(),
        );
        g.discard_pending_commit(p).unwrap();
        welcomes_last.push(
            g.commit_add(p, id, std::slice::from_ref(&last))
                .unwrap()
                .welcome
                .unwrap(),
        );
    }
    Group::join(&bob.provider, &welcomes_one_time[0]).unwrap();
    assert_eq!(
        Group::join(&bob.provider, &welcomes_one_time[1]).unwrap_err(),
        JoinError::NoMatchingKeyPackage
    );
    // Distinct group ids: "!kp0" was joined above through the one-time package.
    let _ = &mut bob;
    Group::join(&bob.provider, &welcomes_last[1]).unwrap();
    assert_eq!(
        Group::join(&bob.provider, &welcomes_last[0]).unwrap_err(),
        JoinError::AlreadyExists
    );
}

#[test]
fn credentials_must_bind_the_signature_key() {
    use openmls::prelude::{KeyPackage, MlsMessageOut};
    let honest = identity("victim", "V");
    let attacker = Device::new("attacker");
    // The attacker claims the victim's credential with its own key.
    let forged = KeyPackage::builder()
        .build(
            CIPHERSUITE,
            &attacker.provider,
            &attacker.identity,
            openmls::prelude::CredentialWithKey {
                credential: honest.public().credential(),
                signature_key: attacker.identity.public().key().to_vec().into(),
            },
        )
        .unwrap();
    let bytes = MlsMessageOut::from(forged.key_package().clone())
        .tls_serialize_detached()
        .unwrap();
    assert!(matches!(
        validate_key_package(&attacker.provider, &bytes),
        Err(KeyPackageError::Credential(_))
    ));
}
