//! The client-side framing of chat event payloads.
//!
//! The homeserver stores and relays an event's payload as opaque bytes; Parley clients
//! put one [`ChatPayload`] in it. Binary, versioned:
//!
//! ```text
//! 0x01                          framing version
//! 0x01 ‖ mls_message            Application: an MLS PrivateMessage (an encrypted Envelope)
//! 0x02 ‖ u64 epoch ‖ u32 len ‖ commit ‖ 0x00                      Commit without Welcome
//! 0x02 ‖ u64 epoch ‖ u32 len ‖ commit ‖ 0x01 ‖ u32 len ‖ welcome  Commit with Welcome
//! 0x03 ‖ u64 epoch ‖ u32 len ‖ proposal   Proposal (a member leaving: a Remove of its own leaf)
//! ```
//!
//! Integers are big-endian. `epoch` is the epoch the Commit was created in (the
//! compare-and-set value of the hub). A Welcome travels in the same event as its
//! Commit, so the devices it adds join exactly when the Commit is sequenced; devices it
//! does not address ignore it.

use thiserror::Error;

/// The framing version this SDK writes and reads.
pub const FRAMING_VERSION: u8 = 1;

const TAG_APPLICATION: u8 = 1;
const TAG_COMMIT: u8 = 2;
const TAG_PROPOSAL: u8 = 3;

/// What one chat event carries.
#[derive(Clone, PartialEq, Eq)]
pub enum ChatPayload {
    /// An MLS application message (TLS-encoded `MLSMessage`, PrivateMessage).
    Application { mls_message: Vec<u8> },
    /// An MLS Commit (TLS-encoded `MLSMessage`, PublicMessage) created in `epoch`,
    /// with the Welcome for the devices it adds.
    Commit {
        epoch: u64,
        commit: Vec<u8>,
        welcome: Option<Vec<u8>>,
    },
    /// An MLS Proposal (TLS-encoded `MLSMessage`, PublicMessage) made in `epoch`; another
    /// member commits it. Parley sends one kind: a member's request to leave.
    Proposal { epoch: u64, proposal: Vec<u8> },
}

impl std::fmt::Debug for ChatPayload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChatPayload::Application { mls_message } => f
                .debug_struct("Application")
                .field("len", &mls_message.len())
                .finish(),
            ChatPayload::Commit {
                epoch,
                commit,
                welcome,
            } => f
                .debug_struct("Commit")
                .field("epoch", epoch)
                .field("commit_len", &commit.len())
                .field("welcome_len", &welcome.as_ref().map(Vec::len))
                .finish(),
            ChatPayload::Proposal { epoch, proposal } => f
                .debug_struct("Proposal")
                .field("epoch", epoch)
                .field("len", &proposal.len())
                .finish(),
        }
    }
}

/// Why bytes are not a [`ChatPayload`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PayloadError {
    #[error("unsupported payload framing version {0}")]
    UnsupportedVersion(u8),
    #[error("unknown payload kind {0}")]
    UnknownKind(u8),
    #[error("malformed payload: {0}")]
    Malformed(&'static str),
}

impl ChatPayload {
    /// Encodes the payload.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            ChatPayload::Application { mls_message } => {
                let mut out = Vec::with_capacity(2 + mls_message.len());
                out.extend_from_slice(&[FRAMING_VERSION, TAG_APPLICATION]);
                out.extend_from_slice(mls_message);
                out
            }
            ChatPayload::Commit {
                epoch,
                commit,
                welcome,
            } => {
                let mut out = Vec::with_capacity(
                    16 + commit.len() + welcome.as_ref().map_or(0, |w| w.len() + 4),
                );
                out.extend_from_slice(&[FRAMING_VERSION, TAG_COMMIT]);
                out.extend_from_slice(&epoch.to_be_bytes());
                put_len_prefixed(&mut out, commit);
                match welcome {
                    None => out.push(0),
                    Some(w) => {
                        out.push(1);
                        put_len_prefixed(&mut out, w);
                    }
                }
                out
            }
            ChatPayload::Proposal { epoch, proposal } => {
                let mut out = Vec::with_capacity(14 + proposal.len());
                out.extend_from_slice(&[FRAMING_VERSION, TAG_PROPOSAL]);
                out.extend_from_slice(&epoch.to_be_bytes());
                put_len_prefixed(&mut out, proposal);
                out
            }
        }
    }

    /// Decodes a payload.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, PayloadError> {
        let (&version, rest) = bytes
            .split_first()
            .ok_or(PayloadError::Malformed("empty"))?;
        if version != FRAMING_VERSION {
            return Err(PayloadError::UnsupportedVersion(version));
        }
        let (&tag, rest) = rest
            .split_first()
            .ok_or(PayloadError::Malformed("no kind"))?;
        match tag {
            TAG_APPLICATION => {
                if rest.is_empty() {
                    return Err(PayloadError::Malformed("empty message"));
                }
                Ok(ChatPayload::Application {
                    mls_message: rest.to_vec(),
                })
            }
            TAG_COMMIT => {
                let (epoch, rest) = take::<8>(rest)?;
                let (commit, rest) = take_len_prefixed(rest)?;
                let (&has_welcome, rest) = rest
                    .split_first()
                    .ok_or(PayloadError::Malformed("truncated"))?;
                let (welcome, rest) = match has_welcome {
                    0 => (None, rest),
                    1 => {
                        let (w, rest) = take_len_prefixed(rest)?;
                        (Some(w.to_vec()), rest)
                    }
                    _ => return Err(PayloadError::Malformed("welcome flag")),
                };
                if !rest.is_empty() {
                    return Err(PayloadError::Malformed("trailing bytes"));
                }
                Ok(ChatPayload::Commit {
                    epoch: u64::from_be_bytes(epoch),
                    commit: commit.to_vec(),
                    welcome,
                })
            }
            TAG_PROPOSAL => {
                let (epoch, rest) = take::<8>(rest)?;
                let (proposal, rest) = take_len_prefixed(rest)?;
                if proposal.is_empty() || !rest.is_empty() {
                    return Err(PayloadError::Malformed("proposal"));
                }
                Ok(ChatPayload::Proposal {
                    epoch: u64::from_be_bytes(epoch),
                    proposal: proposal.to_vec(),
                })
            }
            other => Err(PayloadError::UnknownKind(other)),
        }
    }
}

fn put_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    // Event payloads are limited to far less than 4 GiB by every server.
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(bytes);
}

fn take<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), PayloadError> {
    if bytes.len() < N {
        return Err(PayloadError::Malformed("truncated"));
    }
    let (head, rest) = bytes.split_at(N);
    let mut out = [0u8; N];
    out.copy_from_slice(head);
    Ok((out, rest))
}

fn take_len_prefixed(bytes: &[u8]) -> Result<(&[u8], &[u8]), PayloadError> {
    let (len, rest) = take::<4>(bytes)?;
    let len = u32::from_be_bytes(len) as usize;
    if rest.len() < len {
        return Err(PayloadError::Malformed("truncated"));
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        let cases = [
            ChatPayload::Application {
                mls_message: vec![1, 2, 3],
            },
            ChatPayload::Commit {
                epoch: 7,
                commit: vec![9; 40],
                welcome: None,
            },
            ChatPayload::Commit {
                epoch: u64::MAX,
                commit: vec![1],
                welcome: Some(vec![2; 300]),
            },
            ChatPayload::Proposal {
                epoch: 3,
                proposal: vec![4; 20],
            },
        ];
        for p in cases {
            let bytes = p.to_bytes();
            assert_eq!(ChatPayload::from_bytes(&bytes).unwrap(), p);
            // Every strict prefix of a commit fails cleanly.
            if !matches!(p, ChatPayload::Application { .. }) {
                for n in 0..bytes.len() {
                    assert!(ChatPayload::from_bytes(&bytes[..n]).is_err(), "prefix {n}");
                }
            }
        }
        assert_eq!(
            ChatPayload::from_bytes(&[2, 1, 0]),
            Err(PayloadError::UnsupportedVersion(2))
        );
        assert_eq!(
            ChatPayload::from_bytes(&[1, 9, 0]),
            Err(PayloadError::UnknownKind(9))
        );
        assert!(ChatPayload::from_bytes(&[1, 1]).is_err());
        let mut extra = ChatPayload::Commit {
            epoch: 1,
            commit: vec![1],
            welcome: None,
        }
        .to_bytes();
        extra.push(0);
        assert!(ChatPayload::from_bytes(&extra).is_err());
    }
}
