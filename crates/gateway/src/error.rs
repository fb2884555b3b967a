//! The gateway's error type.

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A setting is wrong; `at` names it the way kickstand.toml spells it, like
    /// `gateway.rules[priority 10].conditions.path[0]`.
    #[error("{at}: {reason}")]
    Config { at: String, reason: String },
}

impl GatewayError {
    pub(crate) fn config(at: impl Into<String>, reason: impl Into<String>) -> GatewayError {
        GatewayError::Config {
            at: at.into(),
            reason: reason.into(),
        }
    }
}
