//! KeyPackages and device lists (client-api.md KP1–KP3), locally and, through the
//! suite's federation peer, across servers.

use anyhow::{Context, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use parley_client_api::http::fill;
use reqwest::Method;
use serde_json::{Value, json};

use super::net::{Ctx, Peer, User};
use super::peer::PEER_DEVICE;

const KEY_PACKAGES: &str = "/v1/keys/key_packages";
const CLAIM: &str = "/v1/keys/claim";

fn kp(tag: &str) -> String {
    STANDARD.encode(format!(
        "conformance key package {tag} {}",
        rand::random::<u64>()
    ))
}

async fn upload(
    ctx: &Ctx,
    u: &User,
    one_time: &[String],
    last_resort: Option<&str>,
) -> Result<Value> {
    let mut body = json!({"key_packages": one_time});
    if let Some(lr) = last_resort {
        body["last_resort"] = json!(lr);
    }
    let r = ctx
        .as_user(u, Method::POST, KEY_PACKAGES, Some(body))
        .await?;
    r.expect(200, None).context("upload KeyPackages")?;
    Ok(r.body)
}

/// Whether the server federates (serves a key directory).
async fn federates(ctx: &Ctx) -> Result<bool> {
    let r = ctx
        .call(Method::GET, parley_federation::directory::PATH, None, None)
        .await?;
    Ok(r.status == 200)
}

pub(super) async fn upload_count(ctx: &Ctx) -> Result<()> {
    let u = ctx.register().await?;
    let body = upload(ctx, &u, &[kp("a"), kp("b"), kp("c")], Some(&kp("lr"))).await?;
    ensure!(
        body == json!({"one_time": 3, "has_last_resort": true}),
        "after uploading 3 and a last resort: {body}"
    );
    let r = ctx.as_user(&u, Method::GET, KEY_PACKAGES, None).await?;
    r.expect(200, None)?;
    ensure!(
        r.body == json!({"one_time": 3, "has_last_resort": true}),
        "count: {}",
        r.body
    );
    // More one-time packages add up; a new last resort replaces the old one.
    let body = upload(ctx, &u, &[kp("d")], Some(&kp("lr2"))).await?;
    ensure!(body["one_time"] == 4, "after one more: {body}");
    for (what, bad) in [
        ("nothing to upload", json!({"key_packages": []})),
        ("an empty KeyPackage", json!({"key_packages": [""]})),
        (
            "more than 100 in one request",
            json!({"key_packages": (0..101).map(|i| kp(&i.to_string())).collect::<Vec<_>>()}),
        ),
    ] {
        let r = ctx
            .as_user(&u, Method::POST, KEY_PACKAGES, Some(bad))
            .await?;
        r.expect(400, Some("invalid_param"))
            .with_context(|| what.to_owned())?;
    }
    let r = ctx.as_user(&u, Method::GET, KEY_PACKAGES, None).await?;
    ensure!(
        r.body["one_time"] == 4,
        "refused uploads changed the count: {}",
        r.body
    );
    Ok(())
}

async fn claim(ctx: &Ctx, claimer: &User, user_id: &str) -> Result<Vec<Value>> {
    let r = ctx
        .as_user(
            claimer,
            Method::POST,
            CLAIM,
            Some(json!({"user_id": user_id})),
        )
        .await?;
    r.expect(200, None)
        .with_context(|| format!("claim {user_id}"))?;
    ensure!(r.body["user_id"] == user_id, "claim answer: {}", r.body);
    Ok(r.body["devices"].as_array().cloned().unwrap_or_default())
}

pub(super) async fn claim_once(ctx: &Ctx) -> Result<()> {
    let (owner, claimer) = (ctx.register().await?, ctx.register().await?);
    let (one, two, lr) = (kp("one"), kp("two"), kp("last resort"));
    upload(ctx, &owner, &[one.clone(), two.clone()], Some(&lr)).await?;
    // Two one-time packages, each handed out once, then the last resort, again and again.
    let mut got = Vec::new();
    for _ in 0..4 {
        let devices = claim(ctx, &claimer, &owner.user_id).await?;
        ensure!(devices.len() == 1, "one device, one package: {devices:?}");
        let d = &devices[0];
        ensure!(d["device_id"] == owner.device_id.as_str(), "claimed {d}");
        got.push((
            d["key_package"].as_str().unwrap_or("").to_owned(),
            d["last_resort"].as_bool(),
        ));
    }
    let mut one_time: Vec<&str> = got[..2].iter().map(|(k, _)| k.as_str()).collect();
    one_time.sort_unstable();
    let mut want = [one.as_str(), two.as_str()];
    want.sort_unstable();
    ensure!(
        one_time == want && got[..2].iter().all(|(_, l)| *l == Some(false)),
        "the first two claims are not the two one-time packages, each once: {got:?}"
    );
    ensure!(
        got[2..].iter().all(|(k, l)| k == &lr && *l == Some(true)),
        "once the one-time packages are gone, a claim returns the last resort (kept): {got:?}"
    );
    let r = ctx.as_user(&owner, Method::GET, KEY_PACKAGES, None).await?;
    ensure!(
        r.body == json!({"one_time": 0, "has_last_resort": true}),
        "count after the claims: {}",
        r.body
    );
    // A device with no package is left out; an unknown user is unknown.
    let empty = ctx.register().await?;
    ensure!(
        claim(ctx, &claimer, &empty.user_id).await?.is_empty(),
        "a device without KeyPackages was claimed"
    );
    let server = ctx.server_name().await?;
    let r = ctx
        .as_user(
            &claimer,
            Method::POST,
            CLAIM,
            Some(json!({"user_id": format!("@{}:{server}", ctx.username())})),
        )
        .await?;
    r.expect(404, Some("unknown_user"))?;
    if !federates(ctx).await? {
        return Ok(());
    }
    // Over federation, the same: the suite's peer claims from the server...
    let fed_owner = ctx.register().await?;
    let fed_one = kp("federated");
    let fed_lr = kp("federated last resort");
    upload(
        ctx,
        &fed_owner,
        std::slice::from_ref(&fed_one),
        Some(&fed_lr),
    )
    .await?;
    let peer = ctx.peer().await?;
    let path = parley_federation::api::keys::claim::PATH;
    let mut fed_got = Vec::new();
    for _ in 0..2 {
        let body = json!({"users": [fed_owner.user_id]})
            .to_string()
            .into_bytes();
        let h = Peer::sign_now(&peer.signer(), "POST", server, path, &body)?;
        let r = ctx.fed_call(Method::POST, path, Some(body), h).await?;
        r.expect(200, None).context("a signed federation claim")?;
        let d = r.body["users"][fed_owner.user_id.as_str()][0].clone();
        fed_got.push((
            d["key_package"].as_str().unwrap_or("").to_owned(),
            d["last_resort"].as_bool(),
        ));
    }
    ensure!(
        fed_got == vec![(fed_one.clone(), Some(false)), (fed_lr.clone(), Some(true))],
        "federation claims: {fed_got:?}"
    );
    // ...and the server claims a remote user's package from the user's server.
    let fresh = ctx.new_peer().await?;
    let remote = fresh.user(&ctx.username());
    let devices = claim(ctx, &claimer, &remote).await?;
    let want = STANDARD.encode(format!("suite peer key package of {remote}"));
    ensure!(
        devices.len() == 1
            && devices[0]["device_id"] == PEER_DEVICE
            && devices[0]["key_package"] == want.as_str(),
        "a remote user's claim: {devices:?}"
    );
    let asked = fresh.received();
    ensure!(
        asked
            .iter()
            .any(|r| r.method == "POST" && r.path == path && r.signed.is_ok()),
        "the server did not ask the user's server with a signed claim: {:?}",
        asked
            .iter()
            .map(|r| (&r.method, &r.path, &r.signed))
            .collect::<Vec<_>>()
    );
    Ok(())
}

pub(super) async fn device_list(ctx: &Ctx) -> Result<()> {
    let (u, asker) = (ctx.register().await?, ctx.register().await?);
    let second = ctx.login(&u).await?.device_id;
    let path = fill("/v1/users/{u}/devices", &[("u", &u.user_id)]);
    let r = ctx.as_user(&asker, Method::GET, &path, None).await?;
    r.expect(200, None)?;
    let mut got: Vec<String> = serde_json::from_value(r.body["devices"].clone())
        .with_context(|| format!("devices: {}", r.body))?;
    got.sort();
    let mut want = vec![u.device_id.clone(), second];
    want.sort();
    ensure!(
        got == want && r.body["user_id"] == u.user_id.as_str(),
        "devices of a user with two: {}",
        r.body
    );
    if !federates(ctx).await? {
        return Ok(());
    }
    let peer = ctx.new_peer().await?;
    let remote = peer.user(&ctx.username());
    let path = fill("/v1/users/{u}/devices", &[("u", &remote)]);
    let r = ctx.as_user(&asker, Method::GET, &path, None).await?;
    r.expect(200, None).context("a remote user's devices")?;
    ensure!(
        r.body["devices"] == json!([PEER_DEVICE]),
        "a remote user's devices are not their server's list: {}",
        r.body
    );
    Ok(())
}
