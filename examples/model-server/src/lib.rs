//! The example service kiln builds, tests, ships and rolls back: a small, real model served
//! over HTTP.
//!
//! The model is a logistic regression whose weights live in a versioned JSON file
//! (`model/weights-v1.json`): a new model version is a new file, and so a new image and a
//! new kiln revision. [`Model::predict`] is `sigmoid(w · x + b)`.
//!
//! Endpoints ([`router`]):
//! - `POST /predict` `{"features": [..]}` → `{"probability", "label", "model_version"}`
//!   (400 with a reason when the features do not fit the model);
//! - `GET /healthz`: the process is up; `GET /ready`: the model is loaded and answers;
//! - `GET /metrics`: Prometheus text — `model_requests_total{path,status}`,
//!   `model_request_duration_seconds` (histogram, by path) and `model_requests_in_flight`.

use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};

/// A logistic-regression model, as stored in its weights file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Model {
    pub version: String,
    #[serde(default)]
    pub description: String,
    pub features: Vec<String>,
    pub weights: Vec<f64>,
    pub bias: f64,
}

impl Model {
    /// Reads and checks a weights file.
    pub fn load(path: &std::path::Path) -> Result<Model, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Model::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Model, String> {
        let model: Model = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if model.weights.is_empty() || model.weights.len() != model.features.len() {
            return Err(format!(
                "{} weights for {} features",
                model.weights.len(),
                model.features.len()
            ));
        }
        if !model
            .weights
            .iter()
            .chain([&model.bias])
            .all(|w| w.is_finite())
        {
            return Err("weights must be finite numbers".into());
        }
        Ok(model)
    }

    /// The probability of the positive class for one feature vector.
    pub fn predict(&self, features: &[f64]) -> Result<f64, String> {
        if features.len() != self.weights.len() {
            return Err(format!(
                "expected {} features ({}), got {}",
                self.weights.len(),
                self.features.join(", "),
                features.len()
            ));
        }
        if !features.iter().all(|f| f.is_finite()) {
            return Err("features must be finite numbers".into());
        }
        let z: f64 = self
            .weights
            .iter()
            .zip(features)
            .map(|(w, x)| w * x)
            .sum::<f64>()
            + self.bias;
        Ok(1.0 / (1.0 + (-z).exp()))
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    path: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: String,
}

/// What every request shares: the model and the metrics.
pub struct AppState {
    model: Model,
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<PathLabel, Histogram>,
    in_flight: Gauge<i64, AtomicI64>,
    /// Simulated inference time per prediction (`INFERENCE_MS`), for load demos: a real
    /// model takes milliseconds, this logistic regression microseconds.
    inference: std::time::Duration,
}

impl AppState {
    pub fn new(model: Model) -> Arc<AppState> {
        AppState::with_inference_time(model, std::time::Duration::ZERO)
    }

    pub fn with_inference_time(model: Model, inference: std::time::Duration) -> Arc<AppState> {
        let mut registry = Registry::with_prefix("model");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<PathLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 4.0, 10))
        });
        let in_flight = Gauge::<i64, AtomicI64>::default();
        registry.register("requests", "HTTP requests answered", requests.clone());
        registry.register(
            "request_duration_seconds",
            "Time to answer an HTTP request",
            latency.clone(),
        );
        registry.register(
            "requests_in_flight",
            "HTTP requests being answered now",
            in_flight.clone(),
        );
        Arc::new(AppState {
            model,
            registry,
            requests,
            latency,
            in_flight,
            inference,
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct PredictRequest {
    pub features: Vec<f64>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Prediction {
    pub probability: f64,
    pub label: u8,
    pub model_version: String,
}

/// The service's routes, with the metrics middleware around them.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/predict", post(predict))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .with_state(state)
}

async fn predict(
    State(state): State<Arc<AppState>>,
    Json(req): Json<PredictRequest>,
) -> Result<Json<Prediction>, (StatusCode, String)> {
    if !state.inference.is_zero() {
        tokio::time::sleep(state.inference).await;
    }
    let probability = state
        .model
        .predict(&req.features)
        .map_err(|e| (StatusCode::BAD_REQUEST, e))?;
    Ok(Json(Prediction {
        probability,
        label: u8::from(probability >= 0.5),
        model_version: state.model.version.clone(),
    }))
}

/// Ready when the loaded model answers a prediction.
async fn ready(State(state): State<Arc<AppState>>) -> (StatusCode, String) {
    let zeros = vec![0.0; state.model.weights.len()];
    match state.model.predict(&zeros) {
        Ok(_) => (
            StatusCode::OK,
            format!("ready: model {}\n", state.model.version),
        ),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn track(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    state.in_flight.inc();
    let started = Instant::now();
    let response = next.run(req).await;
    state
        .latency
        .get_or_create(&PathLabel { path: path.clone() })
        .observe(started.elapsed().as_secs_f64());
    state
        .requests
        .get_or_create(&RequestLabels {
            path,
            status: response.status().as_u16(),
        })
        .inc();
    state.in_flight.dec();
    response
}

#[cfg(test)]
mod tests;
