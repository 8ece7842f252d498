//! Waiting for a payment: the reference's polling contract, so a confirmation service
//! written for it works unchanged.
//!
//! GET exactly the confirmation URL (the order id is not appended, no extra headers), each
//! request limited to min(10 s, time left), `poll_interval` between polls, until `timeout`:
//! - no answer, a timeout, a 5xx, or JSON that is not an object: poll again;
//! - a 4xx: the order is refused (exit 1); a 2xx that is not JSON: exit 2;
//! - `status` not `"confirmed"`: poll again, except `"failed"`, which ends the wait at once
//!   with its reason (the reference polls on to its timeout there);
//! - `order_id` not the one waited for: poll again;
//! - confirmed without a non-empty `buyer_id`, `buyer_public_key_hex` or `tx_hash`: exit 1.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::output::CliError;

/// Longest a single poll may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A confirmed payment, as the endpoint said it. Nothing here is checked on chain: the
/// endpoint is trusted, as in the reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    /// The order.
    pub order_id: String,
    /// The buyer's recipient id in the access files.
    pub buyer_id: String,
    /// The buyer's X25519 public key (hex).
    pub buyer_public_key_hex: String,
    /// The payment's transaction.
    pub tx_hash: String,
    /// When the endpoint says it was confirmed, if it says.
    pub confirmed_at: Option<String>,
}

/// What one poll found.
#[derive(Debug)]
enum Poll {
    Confirmed(Payment),
    /// Poll again; the reason is logged.
    Again(String),
}

/// How long and how often to poll.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// Between polls.
    pub interval: Duration,
    /// In all.
    pub timeout: Duration,
}

/// Polls `url` until the order is confirmed, refused, or the time is up; `say` hears each
/// reason to poll again.
pub async fn wait_for_payment(
    client: &reqwest::Client,
    url: &reqwest::Url,
    order_id: &str,
    polling: Polling,
    say: &(dyn Fn(&str) + Sync),
) -> Result<Payment, CliError> {
    let deadline = Instant::now() + polling.timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(polling, order_id));
        }
        match poll_once(client, url, order_id, REQUEST_TIMEOUT.min(left)).await? {
            Poll::Confirmed(payment) => return Ok(payment),
            Poll::Again(why) => say(&why),
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(timed_out(polling, order_id));
        }
        tokio::time::sleep(polling.interval.min(left)).await;
    }
}

fn timed_out(polling: Polling, order_id: &str) -> CliError {
    CliError::Network(format!(
        "payment confirmation timed out after {}s for order {order_id}",
        polling.timeout.as_secs()
    ))
}

/// The most of a confirmation's answer that is read: a confirmation is a few hundred bytes,
/// and an endpoint that sends more is not trusted with this process's memory.
const MAX_ANSWER: usize = 64 * 1024;

async fn poll_once(
    client: &reqwest::Client,
    url: &reqwest::Url,
    order_id: &str,
    timeout: Duration,
) -> Result<Poll, CliError> {
    let shown = super::web::redact(url);
    let response = match client.get(url.clone()).timeout(timeout).send().await {
        Ok(r) => r,
        Err(e) => {
            return Ok(Poll::Again(format!(
                "confirmation endpoint {shown} not reachable ({}); polling again",
                short(e)
            )))
        }
    };
    let status = response.status();
    if status.is_client_error() {
        return Err(CliError::Check(format!(
            "confirmation endpoint returned HTTP {} for order {order_id}",
            status.as_u16()
        )));
    }
    if !status.is_success() {
        return Ok(Poll::Again(format!(
            "confirmation endpoint returned HTTP {}; polling again",
            status.as_u16()
        )));
    }
    let too_large = || {
        CliError::Network(format!(
            "confirmation endpoint's answer is larger than {} KiB: not a confirmation",
            MAX_ANSWER / 1024
        ))
    };
    if response
        .content_length()
        .is_some_and(|n| n > MAX_ANSWER as u64)
    {
        return Err(too_large());
    }
    let mut response = response;
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(part)) => {
                if body.len() + part.len() > MAX_ANSWER {
                    return Err(too_large());
                }
                body.extend_from_slice(&part);
            }
            Ok(None) => break,
            Err(e) => {
                return Ok(Poll::Again(format!(
                    "confirmation endpoint's answer was cut ({}); polling again",
                    short(e)
                )))
            }
        }
    }
    let value: Value = serde_json::from_slice(&body).map_err(|e| {
        CliError::Network(format!(
            "confirmation endpoint returned a response that is not JSON: {e}"
        ))
    })?;
    judge(&value, order_id)
}

fn short(e: reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "connection failed".into()
    } else {
        // Never the URL: it may carry a token.
        e.without_url().to_string()
    }
}

/// Reads one confirmation document.
fn judge(value: &Value, order_id: &str) -> Result<Poll, CliError> {
    let Some(doc) = value.as_object() else {
        return Ok(Poll::Again(
            "confirmation response is not a JSON object; polling again".into(),
        ));
    };
    let status = doc.get("status").and_then(Value::as_str);
    let answered_order = doc.get("order_id");
    if status == Some("failed") && answered_order.and_then(Value::as_str) == Some(order_id) {
        let reason = ["reason", "error", "message"]
            .iter()
            .find_map(|k| doc.get(*k).and_then(Value::as_str))
            .unwrap_or("no reason given");
        return Err(CliError::Check(format!(
            "payment failed for order {order_id}: {reason}"
        )));
    }
    if status != Some("confirmed") {
        return Ok(Poll::Again(format!(
            "order {order_id} status is {}; polling again",
            status.map_or_else(|| "missing".to_string(), |s| format!("{s:?}"))
        )));
    }
    if answered_order.and_then(Value::as_str) != Some(order_id) {
        return Ok(Poll::Again(format!(
            "confirmation is for order {}, not {order_id}; polling again",
            answered_order.map_or_else(|| "none".to_string(), Value::to_string)
        )));
    }
    let field = |name: &str| -> Result<String, CliError> {
        match doc.get(name).and_then(Value::as_str) {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err(CliError::Check(format!(
                "confirmation for order {order_id} is 'confirmed' but {name:?} is missing or not a non-empty string"
            ))),
        }
    };
    Ok(Poll::Confirmed(Payment {
        order_id: order_id.to_string(),
        buyer_id: field("buyer_id")?,
        buyer_public_key_hex: field("buyer_public_key_hex")?,
        tx_hash: field("tx_hash")?,
        confirmed_at: doc
            .get("confirmed_at")
            .and_then(Value::as_str)
            .map(str::to_string),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn again(v: Value) -> bool {
        matches!(judge(&v, "o-1"), Ok(Poll::Again(_)))
    }

    #[test]
    fn the_reference_contract() {
        assert!(again(json!([1, 2])));
        assert!(again(json!({"status": "pending", "order_id": "o-1"})));
        assert!(again(json!({"status": "confirmed", "order_id": "o-2"})));
        // "failed" for another order is not ours to end on.
        assert!(again(json!({"status": "failed", "order_id": "o-2"})));
        let failed = judge(
            &json!({"status": "failed", "order_id": "o-1", "reason": "card declined"}),
            "o-1",
        );
        assert!(matches!(failed, Err(CliError::Check(m)) if m.contains("card declined")));
        let missing = judge(
            &json!({"status": "confirmed", "order_id": "o-1", "buyer_id": "b", "tx_hash": "0x1"}),
            "o-1",
        );
        assert!(matches!(missing, Err(CliError::Check(m)) if m.contains("buyer_public_key_hex")));
        let ok = judge(
            &json!({"status": "confirmed", "order_id": "o-1", "buyer_id": "b", "buyer_public_key_hex": "aa", "tx_hash": "0x1"}),
            "o-1",
        );
        assert!(
            matches!(ok, Ok(Poll::Confirmed(p)) if p.buyer_id == "b" && p.confirmed_at.is_none())
        );
    }
}
