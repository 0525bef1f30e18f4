//! Interoperability with an independent MLS implementation: `mls-rs` with
//! `mls-rs-crypto-rustcrypto`, same ciphersuite (0x0003). A group created by
//! parley-crypto is joined by an mls-rs client; application messages and
//! Commits flow in both directions, and a third (parley) device is added
//! while the mls-rs client is a member.

use mls_rs::client_builder::MlsConfig;
use mls_rs::group::ReceivedMessage;
use mls_rs::identity::SigningIdentity;
use mls_rs::identity::basic::{BasicCredential, BasicIdentityProvider};
use mls_rs::{CipherSuite, CipherSuiteProvider, Client, CryptoProvider, MlsMessage};
use mls_rs_crypto_rustcrypto::RustCryptoProvider;
use parley_crypto::{
    CIPHERSUITE, DeviceId, DevicePublicIdentity, Received, UserId, validate_key_package,
};

use crate::support::{Device, Hub};

const SUITE: CipherSuite = CipherSuite::CURVE25519_CHACHA;

/// An mls-rs client whose credential is Parley's canonical encoding.
fn mls_rs_client() -> (Client<impl MlsConfig>, DevicePublicIdentity) {
    let crypto = RustCryptoProvider::default();
    let suite = crypto
        .cipher_suite_provider(SUITE)
        .expect("mls-rs supports 0x0003");
    let (secret, public) = suite.signature_key_generate().unwrap();
    let identity = DevicePublicIdentity::new(
        UserId::try_from("@carol:other.example.org").unwrap(),
        DeviceId::try_from("MLSRS").unwrap(),
        public.as_bytes().try_into().unwrap(),
    )
    .unwrap();
    let signing_identity = SigningIdentity::new(
        BasicCredential::new(identity.to_bytes()).into_credential(),
        public,
    );
    let client = Client::builder()
        .identity_provider(BasicIdentityProvider)
        .crypto_provider(crypto)
        .signing_identity(signing_identity, secret, SUITE)
        .build();
    (client, identity)
}

fn text(r: &Received) -> &[u8] {
    match r {
        Received::Application { plaintext, .. } => plaintext,
        other => panic!("{other:?}"),
    }
}

#[test]
fn mls_rs_joins_a_parley_group_and_both_sides_talk_and_commit() {
    assert_eq!(u16::from(CIPHERSUITE), u16::from(SUITE));
    let mut hub = Hub::default();
    let mut alice = Device::new("alice");
    alice.create_group(&hub, b"!interop:chat.example.org");

    // carol (mls-rs) publishes a KeyPackage; alice validates and adds it.
    let (carol_client, carol_identity) = mls_rs_client();
    let kp_bytes = carol_client
        .generate_key_package_message(Default::default(), Default::default(), None)
        .unwrap()
        .to_bytes()
        .unwrap();
    let kp = validate_key_package(&alice.provider, &kp_bytes).unwrap();
    assert_eq!(kp.identity(), &carol_identity);
    let pc = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .commit_add(p, id, &[kp])
            .unwrap()
    };
    let welcome = MlsMessage::from_bytes(pc.welcome.as_ref().unwrap()).unwrap();
    alice.commit(&mut hub, pc).unwrap();
    let (mut carol, _) = carol_client.join_group(None, &welcome, None).unwrap();
    assert_eq!(carol.current_epoch(), 1);

    // parley → mls-rs
    let m = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .encrypt(p, id, b"hello from openmls")
            .unwrap()
    };
    match carol
        .process_incoming_message(MlsMessage::from_bytes(&m).unwrap())
        .unwrap()
    {
        ReceivedMessage::ApplicationMessage(app) => assert_eq!(app.data(), b"hello from openmls"),
        other => panic!("{other:?}"),
    }

    // mls-rs → parley
    let m = carol
        .encrypt_application_message(b"hello from mls-rs", vec![])
        .unwrap()
        .to_bytes()
        .unwrap();
    let (p, g) = (&alice.provider, alice.group.as_mut().unwrap());
    let r = g.process(p, &m).unwrap();
    assert_eq!(text(&r), b"hello from mls-rs");
    match &r {
        Received::Application { sender, .. } => assert_eq!(sender.identity, carol_identity),
        _ => unreachable!(),
    }

    // A Commit from mls-rs (PublicMessage with an UpdatePath), processed by parley.
    let out = carol.commit(vec![]).unwrap();
    let commit = out.commit_message.to_bytes().unwrap();
    hub.send("carol", commit.clone());
    hub.epoch += 1;
    carol.apply_pending_commit().unwrap();
    match alice.catch_up(&hub).as_slice() {
        [Received::Commit(s)] => {
            assert_eq!(s.committer.identity, carol_identity);
            assert_eq!(s.epoch, 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(carol.current_epoch(), 2);

    // A Commit from parley (adds bob, an openmls device), processed by mls-rs.
    let mut bob = Device::new("bob");
    let kp = bob.key_package();
    let pc = {
        let (p, id) = (&alice.provider, &alice.identity);
        alice
            .group
            .as_mut()
            .unwrap()
            .commit_add(p, id, &[kp])
            .unwrap()
    };
    let commit = pc.commit.clone();
    let welcome = pc.welcome.clone().unwrap();
    alice.commit(&mut hub, pc).unwrap();
    bob.join(&hub, &welcome);
    match carol
        .process_incoming_message(MlsMessage::from_bytes(&commit).unwrap())
        .unwrap()
    {
        ReceivedMessage::Commit(_) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(carol.current_epoch(), 3);

    // And a key rotation from parley.
    let pc = {
        let (p, id) = (&bob.provider, &bob.identity);
        bob.group.as_mut().unwrap().commit_update(p, id).unwrap()
    };
    let commit = pc.commit.clone();
    bob.commit(&mut hub, pc).unwrap();
    alice.catch_up(&hub);
    assert!(matches!(
        carol
            .process_incoming_message(MlsMessage::from_bytes(&commit).unwrap())
            .unwrap(),
        ReceivedMessage::Commit(_)
    ));

    // Everyone reads everyone in epoch 4.
    let m = carol
        .encrypt_application_message(b"three of us", vec![])
        .unwrap()
        .to_bytes()
        .unwrap();
    hub.send("carol", m);
    assert_eq!(Device::texts(&alice.catch_up(&hub)), ["three of us"]);
    assert_eq!(Device::texts(&bob.catch_up(&hub)), ["three of us"]);
    let m = {
        let (p, id) = (&bob.provider, &bob.identity);
        bob.group
            .as_mut()
            .unwrap()
            .encrypt(p, id, b"bob here")
            .unwrap()
    };
    match carol
        .process_incoming_message(MlsMessage::from_bytes(&m).unwrap())
        .unwrap()
    {
        ReceivedMessage::ApplicationMessage(app) => assert_eq!(app.data(), b"bob here"),
        other => panic!("{other:?}"),
    }
    assert_eq!(alice.group().epoch(), 4);
    assert_eq!(carol.current_epoch(), 4);
}
