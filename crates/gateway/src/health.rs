//! Active health checks: one task per target group sends `GET <path>` to each of its targets
//! every interval and moves a target out of service after `unhealthy_threshold` failures in a
//! row and back after `healthy_threshold` successes in a row. It writes nothing but the
//! targets' health, the health gauge and the log.

use crate::metrics;
use crate::target::TargetGroup;
use axum::body::Body;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use std::sync::Arc;
use tokio::sync::watch;

/// The most of a health check's response body that is read (the rest is dropped with the
/// connection); the status alone decides.
const MAX_CHECK_BODY: usize = 64 * 1024;

/// Consecutive results of one target.
#[derive(Clone, Copy, Default)]
struct Streak {
    ok: u32,
    failed: u32,
}

/// Checks the targets of `group` until `stop` turns true.
pub(crate) async fn run(
    group: Arc<TargetGroup>,
    client: Client<HttpConnector, Body>,
    mut stop: watch::Receiver<bool>,
) {
    let hc = group.health.clone();
    let mut ticker = tokio::time::interval(hc.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streaks = vec![Streak::default(); group.targets.len()];
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let checks = group.targets.iter().map(|t| check(&client, &group, t));
        let results = tokio::select! {
            r = futures_util::future::join_all(checks) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        for (i, result) in results.into_iter().enumerate() {
            let target = &group.targets[i];
            let streak = &mut streaks[i];
            let labels = [
                ("group", group.name.clone()),
                ("target", target.authority().to_owned()),
            ];
            match &result {
                Ok(()) => {
                    streak.ok = streak.ok.saturating_add(1);
                    streak.failed = 0;
                }
                Err(_) => {
                    streak.failed = streak.failed.saturating_add(1);
                    streak.ok = 0;
                }
            }
            let outcome = if result.is_ok() { "ok" } else { "failed" };
            let mut check_labels = labels.to_vec();
            check_labels.push(("result", outcome.to_owned()));
            ::metrics::counter!(metrics::HEALTH_CHECKS, &check_labels).increment(1);
            if target.is_healthy() && streak.failed >= hc.unhealthy_threshold {
                group.set_healthy(i, false);
                ::metrics::gauge!(metrics::TARGET_HEALTHY, &labels).set(0.0);
                tracing::warn!(
                    message = "gateway target out of service",
                    group = %group.name,
                    target = %target.authority(),
                    failed_checks = streak.failed,
                    last_error = %result.as_ref().err().map_or("", String::as_str),
                );
            } else if !target.is_healthy() && streak.ok >= hc.healthy_threshold {
                group.set_healthy(i, true);
                ::metrics::gauge!(metrics::TARGET_HEALTHY, &labels).set(1.0);
                tracing::info!(
                    message = "gateway target back in service",
                    group = %group.name,
                    target = %target.authority(),
                    ok_checks = streak.ok,
                );
            }
        }
    }
}

/// One check of one target: `Ok` when it answered in time with a success code.
async fn check(
    client: &Client<HttpConnector, Body>,
    group: &TargetGroup,
    target: &crate::target::Target,
) -> Result<(), String> {
    let hc = &group.health;
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(target.authority.clone())
        .path_and_query(hc.path.clone())
        .build()
        .map_err(|e| e.to_string())?;
    let req = Request::get(uri)
        .header(header::USER_AGENT, "kickstand-gateway-health-check")
        .body(Body::empty())
        .map_err(|e| e.to_string())?;
    let attempt = async {
        let resp = client.request(req).await.map_err(|e| format!("{e:#}"))?;
        let status = resp.status().as_u16();
        // Read the (small) body so the connection can be reused; its content does not matter.
        let _ = Limited::new(resp.into_body(), MAX_CHECK_BODY)
            .collect()
            .await;
        if hc.success.contains(status) {
            Ok(())
        } else {
            Err(format!("answered {status}"))
        }
    };
    match tokio::time::timeout(hc.timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {:?}", hc.timeout)),
    }
}
