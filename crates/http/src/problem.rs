//! One error type for the whole API, rendered as `application/problem+json` (RFC 9457).
//! Internal details are logged, never sent.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use kickstand_domain::input::Rejection;
use serde::Serialize;

/// An error (RFC 9457 problem details).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Problem {
    /// Always `about:blank`: the status and title say what happened.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "about:blank")]
    pub kind: &'static str,
    /// A short summary of the kind of error, e.g. `Not found`.
    #[schema(value_type = String)]
    pub title: &'static str,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
    /// Per-item errors of a batch (422).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::openapi::Rejection>)]
    pub errors: Vec<Rejection>,
    /// The query parameter or field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    pub field: Option<&'static str>,
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl From<kickstand_engine::state::StateError> for Problem {
    fn from(e: kickstand_engine::state::StateError) -> Problem {
        tracing::warn!(message = "latest-state store unavailable", error = %e.0);
        Problem::unavailable("the latest-state store is unavailable; retry later", 1)
    }
}

impl Problem {
    pub fn new(status: StatusCode, title: &'static str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank",
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            field: None,
            retry_after: None,
        }
    }

    pub fn bad_param(field: &'static str, detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "Invalid query parameter", detail);
        p.field = Some(field);
        p
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    pub fn unavailable(detail: impl Into<String>, retry_after: u64) -> Problem {
        let mut p = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "Service unavailable",
            detail,
        );
        p.retry_after = Some(retry_after);
        p
    }
}

impl From<axum::extract::rejection::QueryRejection> for Problem {
    fn from(e: axum::extract::rejection::QueryRejection) -> Problem {
        Problem::new(
            StatusCode::BAD_REQUEST,
            "Invalid query parameter",
            e.body_text(),
        )
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
