//! `model-server`: serves the model in `MODEL_WEIGHTS` (default `model/weights-v1.json`) on
//! `ADDR` (default `0.0.0.0:8080`), each prediction taking at least `INFERENCE_MS` (default
//! 0: a simulated model's inference time, for load demos). `model-server --check` loads the model, answers one
//! prediction, prints it and exits: the smoke test the example pipeline runs in the image.

use model_server::{AppState, Model, router};

#[tokio::main]
async fn main() {
    let weights = std::env::var("MODEL_WEIGHTS").unwrap_or_else(|_| "model/weights-v1.json".into());
    let model = match Model::load(std::path::Path::new(&weights)) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("model-server: {e}");
            std::process::exit(1);
        }
    };
    if std::env::args().any(|a| a == "--check") {
        let zeros = vec![0.0; model.weights.len()];
        match model.predict(&zeros) {
            Ok(p) => {
                println!(
                    "model {} loaded from {weights}; p(0) = {p:.4}",
                    model.version
                );
                return;
            }
            Err(e) => {
                eprintln!("model-server: {e}");
                std::process::exit(1);
            }
        }
    }
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "0.0.0.0:8080".into());
    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("model-server: {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("model-server: model {} on {addr}", model.version);
    let inference = std::env::var("INFERENCE_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .map(std::time::Duration::from_millis)
        .unwrap_or_default();
    let state = AppState::with_inference_time(model, inference);
    if let Err(e) = axum::serve(listener, router(state)).await {
        eprintln!("model-server: {e}");
        std::process::exit(1);
    }
}
