//! Helpers for tests that run against real services (PostgreSQL, MongoDB, …). Not part of the
//! product: tests in every crate of the workspace use them, so they live here, public.
//!
//! A test that needs a service reads `KICKSTAND_TEST_<SERVICE>_URL`. Unset, or set but
//! unreachable, the test is skipped with a notice on stderr, so `cargo test` works on a bare
//! laptop; with `KICKSTAND_REQUIRE_SERVICES=1` (which `.ci/run` sets under CI) either fails the
//! test instead, except for a service no CI machine can run (MongoDB, see
//! [`NOT_ON_CI_MACHINES`]): unset, its tests are skipped even then.

use std::sync::atomic::{AtomicU64, Ordering};

/// True when `KICKSTAND_REQUIRE_SERVICES=1`: a missing service fails the test.
pub fn services_required() -> bool {
    std::env::var("KICKSTAND_REQUIRE_SERVICES").is_ok_and(|v| v == "1")
}

/// Services that cannot be installed on the development and CI machines (no package of a
/// MongoDB server is reachable there). Their tests run wherever the variable is set, and are
/// skipped where it is not, even under `KICKSTAND_REQUIRE_SERVICES=1`.
pub const NOT_ON_CI_MACHINES: [&str; 1] = ["MONGODB"];

/// The URL of `service` (e.g. `"POSTGRES"`), or `None` after printing why the test is skipped.
/// Panics when the variable is unset and services are required (except those in
/// [`NOT_ON_CI_MACHINES`]).
pub fn service_url(service: &str) -> Option<String> {
    let var = format!("KICKSTAND_TEST_{service}_URL");
    match std::env::var(&var) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            assert!(
                !services_required() || NOT_ON_CI_MACHINES.contains(&service),
                "{var} is not set, and KICKSTAND_REQUIRE_SERVICES=1 requires the service"
            );
            eprintln!("skipped: {var} is not set (see DEVELOPERS.md)");
            None
        }
    }
}

/// Reports a service that is configured but does not answer: a skip with a notice, or a
/// panic when services are required.
pub fn unreachable<T>(service: &str, error: impl std::fmt::Display) -> Option<T> {
    assert!(
        !services_required(),
        "{service} is unreachable and KICKSTAND_REQUIRE_SERVICES=1: {error}"
    );
    eprintln!("skipped: {service} is unreachable: {error}");
    None
}

/// A name no other test (in this process or another) uses: for schemas, databases, prefixes.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}_{}_{nanos:x}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}
