//! What Kickstand's operations services (messenger, script runner, scheduler and rules, and the
//! gateway in front of them) share:
//!
//! - [`db`]: their records in one SQL database — an embedded SQLite file in `kickstand run`,
//!   PostgreSQL in `kickstand serve` — with versioned migrations per component, behind one small
//!   async API so each service writes its SQL once.
//! - [`problem`]: `application/problem+json` answers (RFC 9457).
//! - [`caller`]: who sent a request, as the API's key check found it (for scopes and audit).

pub mod caller;
pub mod db;
pub mod problem;

pub use caller::Caller;
pub use db::{Db, DbError, Dialect, Migration, Row, Value};
pub use problem::Problem;

/// Milliseconds since the Unix epoch (UTC), the time unit of every ops record.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
