//! The block list (`spec/messaging.md` MS20–MS27): kept and enforced by the user's
//! homeserver, so it holds for every device and for users of other servers.

use parley_client_api::UserId;
use parley_client_api::http::blocks::{self, Blocked};
use parley_client_api::http::fill;

use crate::client::Client;
use crate::error::{Error, Result};

impl Client {
    /// Blocks a user: their 1:1 messages, invitations, typing and presence no longer
    /// reach this user (they are not told). Idempotent.
    pub async fn block(&self, user: &UserId) -> Result<Blocked> {
        if user == self.user_id() {
            return Err(Error::Invalid("you cannot block yourself".into()));
        }
        let path = fill(blocks::block::PATH, &[("user_id", user.as_str())]);
        self.inner
            .api
            .call::<(), _>(blocks::block::METHOD, &path, None)
            .await
    }

    /// Unblocks a user: what they send from now on arrives again (nothing sent while
    /// blocked does).
    pub async fn unblock(&self, user: &UserId) -> Result<()> {
        let path = fill(blocks::unblock::PATH, &[("user_id", user.as_str())]);
        self.inner
            .api
            .raw::<()>(blocks::unblock::METHOD, &path, None)
            .await
            .map(drop)
    }

    /// The users this user blocks.
    pub async fn blocked(&self) -> Result<Vec<Blocked>> {
        let r: blocks::list::Response = self
            .inner
            .api
            .call::<(), _>(blocks::list::METHOD, blocks::list::PATH, None)
            .await?;
        Ok(r.blocked)
    }
}
