//! Media handlers (`/v1/media/…`): thin translation to `service::media`.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use parley_client_api::BlobHash;
use parley_client_api::http::media::{UploadState, upload};

use super::AppState;
use super::error::ApiError;
use super::extract::{ApiPath, ApiQuery, Auth};
use crate::service::media::{Progress, parse_range};

fn state(blob: BlobHash, p: Progress) -> UploadState {
    UploadState {
        blob,
        received: p.received,
        complete: p.complete,
    }
}

pub async fn exists(
    State(st): State<AppState>,
    Auth(_me): Auth,
    ApiPath(blob): ApiPath<BlobHash>,
) -> Result<Response, ApiError> {
    Ok(match st.services.media.size(&blob).await? {
        Some(size) => {
            ([(header::CONTENT_LENGTH, size.to_string())], StatusCode::OK).into_response()
        }
        None => StatusCode::NOT_FOUND.into_response(),
    })
}

pub async fn status(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(blob): ApiPath<BlobHash>,
) -> Result<Json<UploadState>, ApiError> {
    let p = st.services.media.progress(&me.user_id, &blob).await?;
    Ok(Json(state(blob, p)))
}

pub async fn upload(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(blob): ApiPath<BlobHash>,
    ApiQuery(q): ApiQuery<upload::Query>,
    body: Body,
) -> Result<Response, ApiError> {
    let p = st
        .services
        .media
        .append(
            &me.user_id,
            &blob,
            q.offset,
            q.total,
            body.into_data_stream(),
        )
        .await?;
    let status = if p.complete {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(state(blob, p))).into_response())
}

pub async fn download(
    State(st): State<AppState>,
    Auth(me): Auth,
    ApiPath(blob): ApiPath<BlobHash>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // A blob of another server that `me` may read is fetched (and kept) first.
    st.services.media.ensure_local(&me.user_id, &blob).await?;
    let size = st.services.media.size(&blob).await?.unwrap_or(0);
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(h) if size > 0 => match parse_range(h, size) {
            Ok(r) => r,
            Err(_) => {
                return Ok((
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{size}"))],
                )
                    .into_response());
            }
        },
        _ => None,
    };
    let partial = range.is_some();
    let d = st
        .services
        .media
        .download(&me.user_id, &blob, range)
        .await?;
    blob_response(d, partial)
}

/// Streams a blob, or the range asked for (`partial`: `206` with `Content-Range`).
pub fn blob_response(
    d: crate::service::media::Download,
    partial: bool,
) -> Result<Response, ApiError> {
    let mut resp = Response::builder()
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::ACCEPT_RANGES, "bytes")
        .header(
            header::CONTENT_LENGTH,
            (d.range.end - d.range.start).to_string(),
        );
    if partial {
        resp = resp.status(StatusCode::PARTIAL_CONTENT).header(
            header::CONTENT_RANGE,
            format!("bytes {}-{}/{}", d.range.start, d.range.end - 1, d.size),
        );
    }
    resp.body(Body::from_stream(d.body))
        .map_err(|e| ApiError::from(crate::service::ServiceError::Internal(e.to_string())))
}
