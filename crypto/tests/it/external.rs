//! Joining by external commit (a restored device of a member, `spec/backup.md`): the
//! new device joins from the GroupInfo and talks; the other members accept it because
//! its user already has a leaf, and refuse an external join by anyone else.

use parley_crypto::{Group, ProcessError, Received};

use crate::support::{Device, Hub, identity};

#[test]
fn a_members_new_device_joins_from_the_group_info_and_others_are_refused() {
    let mut hub = Hub::default();
    let mut alice = Device::new("alice");
    let mut bob = Device::new("bob");
    alice.create_group(&hub, b"!ext:chat.example.org");
    alice.add(&mut hub, &mut [&mut bob]);
    alice.send(&mut hub, "before");
    bob.catch_up(&hub);

    // Alice's restored device: same user, a new device, no MLS state.
    let mut restored = Device::new("alice");
    restored.name = "alice-restored".into();
    restored.identity = identity("alice", "ALICENEW");
    let info = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice.group.as_ref().unwrap().group_info(p, id).unwrap()
    };
    let (group, pc) = Group::join_external(
        &restored.provider,
        &restored.identity,
        &info,
        b"!ext:chat.example.org",
    )
    .unwrap();
    assert!(pc.welcome.is_none());
    // It publishes the new epoch's GroupInfo (spec/backup.md BK18), from which the next
    // restored device joins.
    assert!(pc.group_info.is_some());
    restored.group = Some(group);
    restored.cursor = hub.log.len();
    hub.submit_commit("alice-restored", &pc).unwrap();

    for d in [&mut alice, &mut bob] {
        let got = d.catch_up(&hub);
        match &got[..] {
            [Received::Commit(s)] => {
                assert!(s.external);
                assert_eq!(s.added.len(), 1);
                assert_eq!(s.added[0].device_id().as_str(), "ALICENEW");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(alice.group().epoch(), restored.group().epoch());
    restored.send(&mut hub, "I am back");
    assert_eq!(Device::texts(&bob.catch_up(&hub)), ["I am back"]);
    bob.send(&mut hub, "welcome back");
    assert_eq!(Device::texts(&restored.catch_up(&hub)), ["welcome back"]);
    alice.catch_up(&hub);

    // Mallory, no member, joins from the same kind of GroupInfo: refused by members.
    let mut mallory = Device::new("mallory");
    let info = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice.group.as_ref().unwrap().group_info(p, id).unwrap()
    };
    let (_, pc) = Group::join_external(
        &mallory.provider,
        &mallory.identity,
        &info,
        b"!ext:chat.example.org",
    )
    .unwrap();
    mallory.cursor = hub.log.len();
    hub.submit_commit("mallory", &pc).unwrap();
    let ev = hub.log.last().unwrap().bytes.clone();
    let epoch = bob.group().epoch();
    let r = {
        let p = &bob.provider;
        bob.group.as_mut().unwrap().process(p, &ev)
    };
    assert!(matches!(r, Err(ProcessError::ExternalJoinRefused)), "{r:?}");
    assert_eq!(bob.group().epoch(), epoch, "nothing merged");

    // A GroupInfo of another group is refused before anything is stored.
    let r = Group::join_external(&mallory.provider, &mallory.identity, &info, b"!other:x");
    assert!(r.is_err());
}
