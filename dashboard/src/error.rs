//! One error type for request handlers, rendered as a page that names the SQLSTATE.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::views::pages::ErrorPage;

#[derive(Debug, Clone)]
pub struct AppError {
    pub status: StatusCode,
    pub title: &'static str,
    pub message: String,
    /// The SQLSTATE of a database error (`42501`, `55000`, ...).
    pub sqlstate: Option<String>,
    pub detail: Option<Box<str>>,
    pub hint: Option<Box<str>>,
    /// Seconds for a `Retry-After` header (429).
    pub retry_after: Option<u64>,
}

impl AppError {
    pub fn new(status: StatusCode, title: &'static str, message: impl Into<String>) -> Self {
        AppError {
            status,
            title,
            message: message.into(),
            sqlstate: None,
            detail: None,
            hint: None,
            retry_after: None,
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "Not found", what)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Not allowed", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "Bad request", message)
    }

    /// "message (SQLSTATE 42501)", the way the rest of data_drip prints errors.
    pub fn one_line(&self) -> String {
        match &self.sqlstate {
            Some(code) => format!("{} (SQLSTATE {code})", self.message),
            None => self.message.clone(),
        }
    }
}

impl From<tokio_postgres::Error> for AppError {
    fn from(e: tokio_postgres::Error) -> Self {
        match e.as_db_error() {
            Some(db) => {
                let code = db.code().code().to_string();
                // Privilege errors are the database refusing the viewer; everything else a
                // drip.* function raises is a conflict with the run's state or bad input.
                let status = match &code[..2] {
                    "42" if code == "42501" => StatusCode::FORBIDDEN,
                    "42" if code == "42704" => StatusCode::NOT_FOUND,
                    "22" | "42" => StatusCode::UNPROCESSABLE_ENTITY,
                    "55" | "25" => StatusCode::CONFLICT,
                    _ => StatusCode::INTERNAL_SERVER_ERROR,
                };
                AppError {
                    status,
                    title: "The database refused",
                    message: db.message().to_string(),
                    sqlstate: Some(code),
                    detail: db.detail().map(Box::from),
                    hint: db.hint().map(Box::from),
                    retry_after: None,
                }
            }
            None => AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "Database unavailable",
                format!("cannot talk to PostgreSQL: {e}"),
            ),
        }
    }
}

impl From<askama::Error> for AppError {
    fn from(e: askama::Error) -> Self {
        AppError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Rendering failed",
            e.to_string(),
        )
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status;
        let body = ErrorPage::render_error(&self);
        let mut resp = (status, Html(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, s.into());
        }
        resp
    }
}

pub type AppResult<T> = Result<T, AppError>;
