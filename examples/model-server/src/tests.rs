//! The model's arithmetic, its file checks, and every endpoint through the real router.

use super::*;
use axum::body::Body;
use http_body_util::BodyExt;
use tower::ServiceExt;

const V1: &str = include_str!("../model/weights-v1.json");

fn model() -> Model {
    Model::parse(V1).expect("the shipped weights parse")
}

async fn call(app: &Router, method: &str, path: &str, body: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&bytes).into_owned())
}

#[test]
fn predict_is_the_logistic_of_the_weighted_sum() {
    let m = model();
    // z = 0.8*3 - 0.05*10 - 0.3*2 + 0.5 = 1.8
    let p = m.predict(&[3.0, 10.0, 2.0]).unwrap();
    assert!((p - 1.0 / (1.0 + (-1.8f64).exp())).abs() < 1e-12, "{p}");
    assert!((m.predict(&[0.0, 0.0, 0.0]).unwrap() - 0.6224593312018546).abs() < 1e-12);
    assert!(
        m.predict(&[1.0])
            .unwrap_err()
            .contains("expected 3 features")
    );
    assert!(m.predict(&[f64::NAN, 0.0, 0.0]).is_err());
}

#[test]
fn weights_files_are_checked() {
    assert!(Model::parse(r#"{"version":"x","features":["a"],"weights":[],"bias":0}"#).is_err());
    assert!(Model::parse(r#"{"version":"x","features":["a"],"weights":[1,2],"bias":0}"#).is_err());
    assert!(Model::parse("not json").is_err());
    assert_eq!(model().version, "v1");
}

#[tokio::test]
async fn endpoints_answer_and_are_counted() {
    let app = router(AppState::new(model()));
    let (status, body) = call(&app, "POST", "/predict", r#"{"features":[3,10,2]}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let p: Prediction = serde_json::from_str(&body).unwrap();
    assert_eq!((p.label, p.model_version.as_str()), (1, "v1"));

    let (status, body) = call(&app, "POST", "/predict", r#"{"features":[1]}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("expected 3 features"), "{body}");

    assert_eq!(
        call(&app, "GET", "/healthz", "").await,
        (StatusCode::OK, "ok\n".into())
    );
    assert_eq!(
        call(&app, "GET", "/ready", "").await,
        (StatusCode::OK, "ready: model v1\n".into())
    );

    let (status, metrics) = call(&app, "GET", "/metrics", "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        metrics.contains(r#"model_requests_total{path="/predict",status="200"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"model_requests_total{path="/predict",status="400"} 1"#));
    assert!(metrics.contains(r#"model_request_duration_seconds_count{path="/predict"} 2"#));
    // The /metrics request itself is the one in flight.
    assert!(metrics.contains("model_requests_in_flight 1"), "{metrics}");
}
