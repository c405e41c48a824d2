//! The HTTP side: every `POST /<Interface>.<Method>` goes to the
//! [`Driver`] (one call at a time, on a blocking thread: the driver uses
//! blocking clients and netlink); unknown calls get 404, errors 500 with
//! `{"Err": ...}` as Docker's plugin client expects.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::Value;

use crate::driver::Driver;
use crate::protocol::{self, CONTENT_TYPE};

/// The router serving `driver`.
pub fn router(driver: Driver) -> Router {
    Router::new()
        .route("/{method}", post(call))
        .with_state(Arc::new(Mutex::new(driver)))
}

fn answer(status: StatusCode, v: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        v.to_string(),
    )
        .into_response()
}

async fn call(
    State(driver): State<Arc<Mutex<Driver>>>,
    Path(method): Path<String>,
    body: Bytes,
) -> Response {
    let m = method.clone();
    let done = tokio::task::spawn_blocking(move || {
        let mut d = match driver.lock() {
            Ok(d) => d,
            Err(poisoned) => poisoned.into_inner(),
        };
        d.call(&m, &body)
    })
    .await;
    match done {
        Ok(Some(Ok(v))) => {
            tracing::debug!(%method, "answered");
            answer(StatusCode::OK, &v)
        }
        Ok(Some(Err(e))) => {
            tracing::warn!(%method, error = %e, "refused");
            answer(StatusCode::INTERNAL_SERVER_ERROR, &protocol::err(&e))
        }
        Ok(None) => answer(
            StatusCode::NOT_FOUND,
            &protocol::err(&format!("unknown call {method}")),
        ),
        Err(e) => answer(
            StatusCode::INTERNAL_SERVER_ERROR,
            &protocol::err(&format!("the call failed: {e}")),
        ),
    }
}
