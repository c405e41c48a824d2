//! JSON errors: `{"error": "...", "field": "..."}` with a fitting status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use crate::service::ServiceError;
use crate::store::StoreError;
use daolinet_policy::model::ModelError;

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Message for humans.
    pub error: String,
    /// The offending input field, if known.
    pub field: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl ApiError {
    /// An error with a status and message.
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        ApiError {
            status,
            error: error.into(),
            field: None,
        }
    }

    /// Names the offending field.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// 400 for a request body that is not the expected JSON.
    pub fn bad_json(e: &serde_json::Error) -> Self {
        let msg = e.to_string();
        // serde names the field in its message: "missing field `x`",
        // "unknown field `x`", or a type error at a path we cannot see.
        let field = ["missing field `", "unknown field `"]
            .iter()
            .find_map(|p| msg.split_once(p))
            .and_then(|(_, rest)| rest.split_once('`'))
            .map(|(f, _)| f.to_string());
        let mut e = ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("invalid request body: {msg}"),
        );
        e.field = field;
        e
    }
}

impl From<ModelError> for ApiError {
    fn from(e: ModelError) -> Self {
        use daolinet_policy::ipam::IpamError;
        let status = match &e {
            ModelError::NotFound { .. } => StatusCode::NOT_FOUND,
            ModelError::Duplicate { .. }
            | ModelError::Conflict { .. }
            | ModelError::InUse { .. } => StatusCode::CONFLICT,
            ModelError::Ipam {
                source: IpamError::InUse(_) | IpamError::Exhausted(_),
                ..
            } => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError {
            status,
            error: e.to_string(),
            field: e.field().map(str::to_string),
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Model(m) => m.into(),
            ServiceError::Store(StoreError::Conflict { .. }) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("{e}; retry"))
            }
            other => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: &self.error,
            field: self.field.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
}
