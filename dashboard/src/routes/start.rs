//! The start form, generated from the backfill's declared parameters. Validation is
//! `drip.start`'s own: its message and SQLSTATE are shown next to the form.

use std::sync::Arc;

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::Viewer;
use crate::db::queries::{self, BackfillRow, RunFilter, StartRequest, Tab};
use crate::error::{AppError, AppResult};
use crate::routes::{chrome, html};
use crate::views::fmt;
use crate::views::pages::{
    field_kind, param_views, BackfillView, FieldView, FormError, PreviewRowView, PreviewView,
    RerunView, StartPage,
};
use crate::AppState;

#[derive(Deserialize)]
pub struct StartQuery {
    from_run: Option<i64>,
}

/// Values typed into the form (or copied from an earlier run), by field name.
#[derive(Default)]
struct Values {
    params: Map<String, Value>,
    raw: Vec<(String, String)>,
}

impl Values {
    fn get(&self, name: &str) -> String {
        self.raw
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// A stored parameter value as the text its input shows.
fn value_text(v: &Value, kind: &str) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) if kind == "array" => items
            .iter()
            .map(|i| match i {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// Typed text from the form as the JSON value drip.start receives. Numbers that parse are
/// sent as numbers; anything else as text, for the type's input function to judge.
pub fn form_value(text: &str, kind: &str) -> Option<Value> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    Some(match kind {
        "integer" | "number" => serde_json::from_str::<serde_json::Number>(t)
            .map(Value::Number)
            .unwrap_or_else(|_| Value::String(t.to_string())),
        "bool" => match t {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(other.to_string()),
        },
        "array" => Value::Array(
            t.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(|l| Value::String(l.to_string()))
                .collect(),
        ),
        "json" => serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())),
        _ => Value::String(text.to_string()),
    })
}

fn fields(b: &BackfillRow, values: &Values, from_stored: bool) -> Vec<FieldView> {
    param_views(&b.params)
        .into_iter()
        .map(|p| {
            let kind = field_kind(&p.ty);
            let value = if from_stored {
                values
                    .params
                    .get(&p.name)
                    .map(|v| value_text(v, kind))
                    .unwrap_or_default()
            } else {
                values.get(&format!("p.{}", p.name))
            };
            FieldView {
                name: p.name,
                ty: p.ty,
                kind,
                value,
                required: p.required,
                default: p.default,
            }
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
async fn render(
    state: &AppState,
    viewer: &Viewer,
    db: &tokio_postgres::Client,
    b: &BackfillRow,
    values: Values,
    from_run: Option<i64>,
    error: Option<FormError>,
    overrides: [String; 4],
    preview: Option<PreviewView>,
) -> AppResult<String> {
    let rights = queries::rights(db).await?;
    let now = fmt::now_epoch();
    let filter = RunFilter {
        tab: Tab::All,
        search: String::new(),
        mine: false,
        before: None,
        backfill: Some(b.name.clone()),
    };
    let reruns = queries::runs(db, &filter, 10)
        .await?
        .iter()
        .map(|r| RerunView {
            id: r.id,
            status: r.status.clone(),
            created: crate::views::pages::When::at(r.created_at, now),
            current: Some(r.id) == from_run,
        })
        .collect();
    let [batch_size, sleep, start_at, note] = overrides;
    let page = StartPage {
        chrome: chrome(
            state,
            viewer,
            &rights,
            format!("Start {}", b.name),
            "backfills",
        ),
        b: BackfillView::new(b, &rights, now),
        fields: fields(b, &values, from_run.is_some() && error.is_none()),
        batch_size,
        sleep,
        start_at,
        note,
        error,
        reruns,
        preview,
    };
    Ok(page.render()?)
}

async fn backfill_or_404(db: &tokio_postgres::Client, name: &str) -> AppResult<BackfillRow> {
    queries::backfill(db, name).await?.ok_or_else(|| {
        AppError::not_found(format!(
            "No backfill named “{name}” that your role may see."
        ))
    })
}

pub async fn form(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(name): Path<String>,
    Query(q): Query<StartQuery>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    let b = backfill_or_404(&db, &name).await?;
    let mut values = Values::default();
    let mut overrides: [String; 4] = Default::default();
    if let Some(run_id) = q.from_run {
        let detail = queries::run_detail(&db, run_id)
            .await?
            .ok_or_else(|| crate::routes::run::run_not_found(run_id))?;
        if let Value::Object(m) = detail.params {
            values.params = m;
        }
        overrides[0] = detail.batch_size.to_string();
        overrides[1] = fmt::duration(detail.sleep_secs);
        overrides[3] = format!("re-run of #{run_id}");
    }
    let body = render(
        &state, &viewer, &db, &b, values, q.from_run, None, overrides, None,
    )
    .await?;
    Ok(html(body))
}

/// The rows the Preview button shows.
const PREVIEW_ROWS: i32 = 20;

/// The parameters typed into the form, as the JSON object drip.start and drip.preview take.
fn form_params(b: &BackfillRow, values: &Values) -> Value {
    let mut params = Map::new();
    for p in param_views(&b.params) {
        if let Some(v) = form_value(&values.get(&format!("p.{}", p.name)), field_kind(&p.ty)) {
            params.insert(p.name, v);
        }
    }
    Value::Object(params)
}

/// `POST /backfills/{name}/preview`: the form again, with what `drip.preview` (called as the
/// viewer; the action runs as the backfill's owner and is rolled back) says the first rows
/// would become, or its error and SQLSTATE.
pub async fn preview(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(raw): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    let b = backfill_or_404(&db, &name).await?;
    let values = Values {
        params: Map::new(),
        raw,
    };
    let params = form_params(&b, &values);
    let preview = match queries::preview(&db, &b.name, &params, PREVIEW_ROWS).await {
        Ok(rows) => PreviewView {
            rows: rows.iter().map(PreviewRowView::new).collect(),
            error: None,
        },
        Err(e) if e.sqlstate.is_some() => PreviewView {
            rows: Vec::new(),
            error: Some(FormError::from(&e)),
        },
        Err(e) => return Err(e),
    };
    let status = if preview.error.is_some() {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let overrides = [
        values.get("batch_size"),
        values.get("sleep"),
        values.get("start_at"),
        values.get("note"),
    ];
    let body = render(
        &state,
        &viewer,
        &db,
        &b,
        values,
        None,
        None,
        overrides,
        Some(preview),
    )
    .await?;
    Ok((status, html(body)).into_response())
}

pub async fn submit(
    State(state): State<Arc<AppState>>,
    viewer: Viewer,
    Path(name): Path<String>,
    Form(raw): Form<Vec<(String, String)>>,
) -> AppResult<Response> {
    let db = viewer.pool.get().await?;
    let b = backfill_or_404(&db, &name).await?;
    let values = Values {
        params: Map::new(),
        raw,
    };
    let params = form_params(&b, &values);
    let opt = |k: &str| Some(values.get(k).trim().to_string()).filter(|s| !s.is_empty());
    let req = StartRequest {
        name: b.name.clone(),
        params,
        batch_size: opt("batch_size"),
        sleep: opt("sleep"),
        start_at: opt("start_at"),
        note: opt("note"),
    };
    match queries::start(&db, &req).await {
        Ok(run_id) => Ok(Redirect::to(&format!("/runs/{run_id}")).into_response()),
        Err(e) if e.sqlstate.is_some() => {
            let overrides = [
                values.get("batch_size"),
                values.get("sleep"),
                values.get("start_at"),
                values.get("note"),
            ];
            let body = render(
                &state,
                &viewer,
                &db,
                &b,
                values,
                None,
                Some(FormError::from(&e)),
                overrides,
                None,
            )
            .await?;
            Ok((StatusCode::UNPROCESSABLE_ENTITY, html(body)).into_response())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_values_by_kind() {
        assert_eq!(form_value("  ", "integer"), None);
        assert_eq!(form_value("30", "integer"), Some(serde_json::json!(30)));
        assert_eq!(
            form_value("thirty", "integer"),
            Some(serde_json::json!("thirty"))
        );
        assert_eq!(form_value("true", "bool"), Some(serde_json::json!(true)));
        assert_eq!(
            form_value("1\n 2\n\n3", "array"),
            Some(serde_json::json!(["1", "2", "3"]))
        );
        assert_eq!(
            form_value("{\"a\":1}", "json"),
            Some(serde_json::json!({"a": 1}))
        );
        assert_eq!(
            form_value("2026-01-01 10:00", "datetime"),
            Some(serde_json::json!("2026-01-01 10:00"))
        );
        assert_eq!(value_text(&serde_json::json!([1, "b"]), "array"), "1\nb");
        assert_eq!(value_text(&serde_json::json!(null), "text"), "");
    }
}
