//! Errors as `application/problem+json` (RFC 9457 problem details).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`: the status and title say what happened.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of error.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this case.
    pub detail: String,
    /// The field or parameter at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Seconds to wait before trying again (also sent as `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

impl Problem {
    pub fn new(status: StatusCode, title: &str, detail: impl Into<String>) -> Problem {
        Problem {
            kind: "about:blank".into(),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            retry_after: None,
        }
    }

    /// 400: `field` of the request is invalid.
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Problem {
        let mut p = Problem::new(StatusCode::BAD_REQUEST, "Invalid request", detail);
        p.field = Some(field.into());
        p
    }

    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "Invalid request", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "Not found", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "Forbidden", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::CONFLICT, "Conflict", detail)
    }

    pub fn too_many(detail: impl Into<String>, retry_after: u64) -> Problem {
        let mut p = Problem::new(StatusCode::TOO_MANY_REQUESTS, "Too many requests", detail);
        p.retry_after = Some(retry_after);
        p
    }

    pub fn unavailable(detail: impl Into<String>, retry_after: u64) -> Problem {
        let mut p = Problem::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", detail);
        p.retry_after = Some(retry_after);
        p
    }

    /// 500 for a failure the caller cannot mend: logged here with `what` and the error, and
    /// answered without the error's text (it may name hosts or files).
    pub fn internal(what: &str, error: &dyn std::fmt::Display) -> Problem {
        tracing::error!(message = what, %error);
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal error",
            format!("{what}; see the server log"),
        )
    }
}

/// Parses a JSON request body into `T`: an empty body, invalid JSON, trailing data and a value
/// of the wrong shape are each a 400 whose `field` names the part at fault (`args.below`,
/// `schedule.cron`), or `body` when it is the body as a whole.
pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Problem> {
    let whole = |mut p: Problem| {
        p.field = Some("body".into());
        p
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(whole(Problem::bad_request(
            "the body is empty; send a JSON object",
        )));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let mut p = syntax_or_data(e.into_inner());
        p.field = Some(if path == "." || path == "?" {
            "body".into()
        } else {
            path
        });
        p
    })?;
    de.end().map_err(|e| whole(syntax_or_data(e)))?;
    Ok(value)
}

fn syntax_or_data(e: serde_json::Error) -> Problem {
    Problem::bad_request(if e.is_syntax() || e.is_eof() {
        format!("the body is not valid JSON: {e}")
    } else {
        format!("the body is not a valid request: {e}")
    })
}

impl From<crate::db::DbError> for Problem {
    fn from(error: crate::db::DbError) -> Problem {
        Problem::internal("the ops database failed", &error)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
