//! Envelope round trips (property-based) and forward compatibility.

use parley_crypto::envelope::{MediaRef, ReactionAction, Thumbnail};
use parley_crypto::{BlobHash, Content, Envelope, MediaKey, MessageId};
use proptest::prelude::*;

fn message_id() -> impl Strategy<Value = MessageId> {
    "[A-Za-z0-9_-]{1,64}".prop_map(|s| MessageId::try_from(s.as_str()).unwrap())
}

fn key() -> impl Strategy<Value = MediaKey> {
    any::<[u8; 32]>().prop_map(MediaKey::from_bytes)
}

fn blob() -> impl Strategy<Value = BlobHash> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| BlobHash::of(&b))
}

fn thumbnail() -> impl Strategy<Value = Thumbnail> {
    prop_oneof![
        (blob(), ".{0,20}", any::<u64>(), "[a-z]+/[a-z]+", key()).prop_map(
            |(blob, server, size, mime, key)| Thumbnail::Blob {
                blob,
                server,
                size,
                mime,
                key
            }
        ),
        (
            "[a-z]+/[a-z]+",
            key(),
            proptest::collection::vec(any::<u8>(), 0..100)
        )
            .prop_map(|(mime, key, ciphertext)| Thumbnail::Inline {
                mime,
                key,
                ciphertext
            }),
    ]
}

fn media() -> impl Strategy<Value = MediaRef> {
    (
        blob(),
        "[a-z0-9.:-]{1,30}",
        any::<u64>(),
        "[a-z]+/[a-z0-9.+-]+",
        key(),
        proptest::option::of(".{0,30}"),
        proptest::option::of(thumbnail()),
    )
        .prop_map(
            |(blob, server, size, mime, key, name, thumbnail)| MediaRef {
                blob,
                server,
                size,
                mime,
                key,
                name,
                thumbnail,
            },
        )
}

fn content() -> impl Strategy<Value = Content> {
    prop_oneof![
        ".{0,200}".prop_map(|text| Content::Text { text }),
        (media(), proptest::option::of(".{0,50}")).prop_map(|(m, caption)| Content::Media {
            media: Box::new(m),
            caption
        }),
        (message_id(), ".{0,100}")
            .prop_map(|(in_reply_to, text)| Content::Reply { in_reply_to, text }),
        (
            message_id(),
            ".{1,8}",
            prop_oneof![Just(ReactionAction::Add), Just(ReactionAction::Remove)]
        )
            .prop_map(|(target, emoji, action)| Content::Reaction {
                target,
                emoji,
                action
            }),
        (message_id(), ".{0,100}").prop_map(|(target, text)| Content::Edit { target, text }),
        message_id().prop_map(|target| Content::Delete { target }),
    ]
}

proptest! {
    #[test]
    fn prop_envelope_round_trip(id in message_id(), sent_at_ms in any::<u64>(), content in content()) {
        let env = Envelope { id, sent_at_ms, expires_in: None, content };
        let bytes = env.to_bytes().unwrap();
        prop_assert_eq!(Envelope::from_bytes(&bytes).unwrap(), env);
    }

    #[test]
    fn prop_unknown_kinds_never_fail(kind in "[a-z_]{1,20}", extra in ".{0,40}") {
        prop_assume!(!["text", "media", "reply", "reaction", "edit", "delete", "timer", "read_receipts"].contains(&kind.as_str()));
        let json = serde_json::json!({"v": 1, "id": "abc", "kind": kind, "content": {"x": extra}, "future_field": 1});
        let env = Envelope::from_bytes(json.to_string().as_bytes()).unwrap();
        prop_assert_eq!(env.content, Content::Unknown { kind });
    }

    #[test]
    fn prop_garbage_is_an_error_not_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let _ = Envelope::from_bytes(&bytes);
    }
}

#[test]
fn a_media_message_travels_through_a_group() {
    use crate::support::{Device, Hub};
    let mut hub = Hub::default();
    let (mut a, mut b) = (Device::new("a"), Device::new("b"));
    a.create_group(&hub, b"!media:x");
    a.add(&mut hub, &mut [&mut b]);

    let photo = vec![7u8; 100_000];
    let (meta, ciphertext) = parley_crypto::media::encrypt_bytes(&photo).unwrap();
    let env = Envelope::new(
        1_767_225_600_000,
        Content::Media {
            media: Box::new(MediaRef {
                blob: meta.blob,
                server: "chat.example.org".into(),
                size: meta.plaintext_len,
                mime: "image/jpeg".into(),
                key: meta.key.clone(),
                name: Some("holiday.jpg".into()),
                thumbnail: None,
            }),
            caption: Some("look".into()),
        },
    );
    let msg = {
        let (p, id) = (&a.provider, &a.identity);
        a.group
            .as_mut()
            .unwrap()
            .encrypt(p, id, &env.to_bytes().unwrap())
            .unwrap()
    };
    // The key and file name never appear in what the server relays.
    assert!(!msg.windows(11).any(|w| w == b"holiday.jpg"));
    hub.send("a", msg);
    let received = b.catch_up(&hub);
    let parley_crypto::Received::Application { plaintext, .. } = &received[0] else {
        panic!("{received:?}")
    };
    let got = Envelope::from_bytes(plaintext).unwrap();
    assert_eq!(got, env);
    let Content::Media { media, .. } = got.content else {
        panic!()
    };
    assert_eq!(
        parley_crypto::media::decrypt_bytes(&media.key, &ciphertext, Some(&media.blob)).unwrap(),
        photo
    );
}
