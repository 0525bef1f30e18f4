#!/usr/bin/env python3
"""Interop oracle for Parley's RFC 9421 profile (parley-fed-v1), test-only.

Uses the independent PyPI library `http-message-signatures` (pip install
'http-message-signatures==3.0.0'). Reads one JSON object on stdin, writes one on stdout:

  {"op": "sign", "seed": hex32, "keyid": str, "method": str, "url": str,
   "body": base64 | null, "signature_agent": str, "created": int, "expires": int,
   "nonce": str, "label": str}
    -> {"headers": [[name, value], ...]}   (Signature-Agent, Content-Digest?,
                                             Signature-Input, Signature)

  {"op": "verify", "public_key": hex32, "keyid": str, "method": str, "url": str,
   "headers": [[name, value], ...], "body": base64 | null}
    -> {"ok": true, "params": {...}, "covered": [...]} or {"ok": false, "error": str}
"""

import base64
import datetime
import json
import sys

try:
    import http_message_signatures as hms
    from http_message_signatures import algorithms
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )
except ImportError as e:  # pragma: no cover - reported to the Rust test
    print(json.dumps({"missing": str(e)}))
    sys.exit(3)

TAG = "parley-fed-v1"
WITH_BODY = ("@method", "@authority", "@path", "@query", "content-digest", "signature-agent")
WITHOUT_BODY = ("@method", "@authority", "@path", "@query", "signature-agent")


class Message:
    """The request view the library reads: method, absolute URL, header mapping."""

    def __init__(self, method, url, headers):
        self.method = method
        self.url = url
        self.headers = headers


class Keys(hms.HTTPSignatureKeyResolver):
    def __init__(self, keyid, private=None, public=None):
        self.keyid, self.private, self.public = keyid, private, public

    def resolve_private_key(self, key_id):
        assert key_id == self.keyid
        return self.private

    def resolve_public_key(self, key_id):
        return self.public if key_id == self.keyid else None


def ts(secs):
    return datetime.datetime.fromtimestamp(secs, tz=datetime.timezone.utc)


def sign(req):
    private = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(req["seed"]))
    body = base64.b64decode(req["body"]) if req.get("body") is not None else None
    headers = hms.structures.CaseInsensitiveDict()
    headers["Signature-Agent"] = '"%s"' % req["signature_agent"]
    msg = Message(req["method"], req["url"], headers)
    signer = hms.HTTPMessageSigner(
        signature_algorithm=algorithms.ED25519,
        key_resolver=Keys(req["keyid"], private=private),
    )
    signer.sign(
        msg,
        key_id=req["keyid"],
        created=ts(req["created"]),
        expires=ts(req["expires"]),
        nonce=req["nonce"],
        label=req.get("label"),
        tag=TAG,
        covered_component_ids=WITH_BODY if body else WITHOUT_BODY,
        body=body or None,
    )
    return {"headers": [[k, v] for k, v in msg.headers.items()]}


def verify(req):
    public = Ed25519PublicKey.from_public_bytes(bytes.fromhex(req["public_key"]))
    headers = hms.structures.CaseInsensitiveDict()
    for name, value in req["headers"]:
        headers[name] = value
    msg = Message(req["method"], req["url"], headers)
    body = base64.b64decode(req["body"]) if req.get("body") is not None else b""
    verifier = hms.HTTPMessageVerifier(
        signature_algorithm=algorithms.ED25519,
        key_resolver=Keys(req["keyid"], public=public),
    )
    try:
        results = verifier.verify(
            msg,
            expect_tag=TAG,
            require_components=WITH_BODY if body else WITHOUT_BODY,
            body=body,
        )
    except hms.HTTPMessageSignaturesException as e:
        return {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    r = results[0]
    return {"ok": True, "params": r.parameters, "covered": list(r.covered_components)}


def main():
    req = json.load(sys.stdin)
    out = {"sign": sign, "verify": verify}[req["op"]](req)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
