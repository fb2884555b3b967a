//! Signing outgoing requests and checking signed ones: HMAC-SHA256 over `"{timestamp}.{body}"`.
//!
//! This module owns the signature scheme and nothing else: it does no I/O and reads no clock
//! (the current time is a parameter), so the ops messenger and receivers' test kits can reuse
//! it as it is.
//!
//! # The scheme (Stripe's convention)
//!
//! A signed request carries two headers:
//!
//! - `Webhook-Timestamp: <unix seconds>`, the time of the attempt;
//! - `Webhook-Signature: v1=<hex>`, where `<hex>` is the lowercase hex of
//!   `HMAC-SHA256(key = the secret's UTF-8 bytes, message = "{timestamp}.{body}")`. The secret is
//!   used whole, `whsec_` prefix included. More than one `v1=` entry may appear, separated by
//!   commas (room for rotating secrets); a receiver accepts the request if any entry matches.
//!
//! A receiver verifies by recomputing the HMAC over the *raw* body bytes (before any JSON
//! parsing), comparing in constant time, and refusing timestamps more than
//! [`DEFAULT_TOLERANCE_SECS`] (5 minutes) away from its own clock, which bounds replays; it then
//! dedupes on `Webhook-Id` because delivery is at-least-once. [`verify`] does exactly that.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// How far (in seconds, either way) a receiver should accept a `Webhook-Timestamp` from its own
/// clock. Older requests are refused as possible replays.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// The header with the unix time (seconds) of the attempt.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// The header with the signature(s): `v1=<hex>[,v1=<hex>…]`.
pub const SIGNATURE_HEADER: &str = "webhook-signature";
/// The header with the event id, the same on every attempt: receivers dedupe on it.
pub const ID_HEADER: &str = "webhook-id";

type HmacSha256 = Hmac<Sha256>;

/// The `Webhook-Signature` value for `body` sent at `timestamp` (unix seconds): `v1=<hex>`.
pub fn sign(secret: &str, timestamp: u64, body: &[u8]) -> String {
    let mac = mac(secret, timestamp, body).finalize().into_bytes();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in mac {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// Why a signed request was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("the timestamp is not a unix time in seconds")]
    BadTimestamp,
    #[error("the timestamp is {0} s away from now, more than the tolerance")]
    OutsideTolerance(u64),
    #[error("the signature header has no v1= entry")]
    NoSignature,
    #[error("no v1 signature matches the body")]
    Mismatch,
}

/// Checks a request as a receiver should: `timestamp` and `signature` are the raw header values,
/// `body` the raw body, `now` the receiver's unix time in seconds and `tolerance_secs` the
/// largest accepted clock distance (use [`DEFAULT_TOLERANCE_SECS`]).
pub fn verify(
    secret: &str,
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: u64,
    tolerance_secs: u64,
) -> Result<(), VerifyError> {
    let ts: u64 = timestamp
        .trim()
        .parse()
        .map_err(|_| VerifyError::BadTimestamp)?;
    let skew = ts.abs_diff(now);
    if skew > tolerance_secs {
        return Err(VerifyError::OutsideTolerance(skew));
    }
    let mut any = false;
    for entry in signature.split(',') {
        let Some(hex) = entry.trim().strip_prefix("v1=") else {
            continue;
        };
        any = true;
        let Some(bytes) = decode_hex(hex) else {
            continue;
        };
        // `verify_slice` compares in constant time.
        if mac(secret, ts, body).verify_slice(&bytes).is_ok() {
            return Ok(());
        }
    }
    Err(if any {
        VerifyError::Mismatch
    } else {
        VerifyError::NoSignature
    })
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn mac(secret: &str, timestamp: u64, body: &[u8]) -> HmacSha256 {
    let mut mac =
        HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    text.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answer() {
        // `printf '%s' '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test`
        assert_eq!(
            sign("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }

    #[test]
    fn verify_accepts_its_own_and_refuses_tampering() {
        let body = br#"{"id":"e1"}"#;
        let sig = sign("whsec_a", 1000, body);
        assert_eq!(verify("whsec_a", "1000", &sig, body, 1000, 300), Ok(()));
        assert_eq!(verify("whsec_a", "1000", &sig, body, 1300, 300), Ok(()));
        assert_eq!(verify("whsec_a", "1000", &sig, body, 700, 300), Ok(()));
        assert_eq!(
            verify("whsec_a", "1000", &sig, body, 1301, 300),
            Err(VerifyError::OutsideTolerance(301))
        );
        assert_eq!(
            verify("whsec_b", "1000", &sig, body, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("whsec_a", "1000", &sig, br#"{"id":"e2"}"#, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        // The timestamp is signed: moving it breaks the signature.
        assert_eq!(
            verify("whsec_a", "1001", &sig, body, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify("whsec_a", "soon", &sig, body, 1000, 300),
            Err(VerifyError::BadTimestamp)
        );
        assert_eq!(
            verify("whsec_a", "1000", "v0=abc", body, 1000, 300),
            Err(VerifyError::NoSignature)
        );
        assert_eq!(
            verify("whsec_a", "1000", "v1=zz", body, 1000, 300),
            Err(VerifyError::Mismatch)
        );
        // Rotation: any matching entry is enough.
        let both = format!("{},{}", sign("whsec_old", 1000, body), sig);
        assert_eq!(verify("whsec_a", "1000", &both, body, 1000, 300), Ok(()));
        assert_eq!(verify("whsec_old", "1000", &both, body, 1000, 300), Ok(()));
    }

    #[test]
    fn hex_round_trip() {
        let sig = sign("k", 1, b"");
        let hex = sig.strip_prefix("v1=").unwrap();
        assert_eq!(hex.len(), 64);
        assert_eq!(decode_hex(hex).unwrap().len(), 32);
        assert_eq!(decode_hex("0"), None);
        assert_eq!(decode_hex("0g"), None);
    }
}
