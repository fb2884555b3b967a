//! The caller of a request: the API key the key check accepted, put into the request's
//! extensions by the guard (`kickstand-http`'s `auth::require`), so a service can check a
//! finer scope (a script's own) and record who did what.

use serde::Serialize;

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Caller {
    /// The key's public id (`None` when authentication is off, or for the process itself).
    pub key_id: Option<String>,
    /// The key's name, or `anonymous` / `kickstand` for the two cases above.
    pub name: String,
    /// The key's scopes (`ingest`, `read`, `operate`, `admin`).
    pub scopes: Vec<String>,
}

impl Caller {
    /// Authentication is off (`--auth off`, loopback only): every scope.
    pub fn anonymous() -> Caller {
        Caller {
            key_id: None,
            name: "anonymous".into(),
            scopes: vec!["admin".into()],
        }
    }

    /// Whether the caller holds `scope`; `admin` holds every scope.
    pub fn allows(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope || s == "admin")
    }

    /// How the caller is named in audit records: `name (key id)`.
    pub fn audit_name(&self) -> String {
        match &self.key_id {
            Some(id) => format!("{} ({id})", self.name),
            None => self.name.clone(),
        }
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    /// The caller the guard recorded; a request that passed no guard (a service mounted on its
    /// own in a test) is anonymous.
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Caller, Self::Rejection> {
        Ok(parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_holds_every_scope_and_others_only_their_own() {
        let operator = Caller {
            key_id: Some("k1".into()),
            name: "crew".into(),
            scopes: vec!["operate".into()],
        };
        assert!(operator.allows("operate"));
        assert!(!operator.allows("admin"));
        assert!(!operator.allows("read"));
        assert!(Caller::anonymous().allows("read"));
        assert_eq!(operator.audit_name(), "crew (k1)");
    }
}
