//! A prediction service's loop, in miniature: for each incoming "request" fetch a few users'
//! features in one batch, read the handful the model needs by name, score.
//!
//!     cargo run --release --example predict_loop -- http://127.0.0.1:50051 [requests] [users]
//!
//! Works with the data set of `quiver generate` (views profile, embedding, ads).

use std::time::Instant;

use quiver_client::{EntityId, QuiverClient, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "http://127.0.0.1:50051".into());
    let requests: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let users: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(2000);

    let client = QuiverClient::connect(&addr).await?;
    let mut rng = 0x2545_F491_4F6C_DD1D_u64; // xorshift: a stand-in for real traffic
    for request in 0..requests {
        let candidates: Vec<EntityId> = (0..4)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                EntityId::Int64((rng % users) as i64)
            })
            .collect();
        let started = Instant::now();
        // Only the views the model reads; the version that answered decodes them.
        let batch = client.get_features(&candidates, &["profile", "embedding", "ads"]).await?;
        let fetched = started.elapsed();
        println!("request {request}: version {} in {fetched:?}", batch.version());
        for (id, row) in candidates.iter().zip(batch.rows()) {
            let Some(profile) = row.view("profile") else {
                println!("  {id:?}: unknown user, default score 0.0");
                continue;
            };
            // Nulls are explicit: a model decides its own fallback.
            let age = profile.get("age").and_then(Value::as_i64).unwrap_or(30);
            let country = profile.get("country").and_then(Value::as_str).unwrap_or("??");
            let churn = profile.get("churn_score").and_then(Value::as_f64).filter(|x| !x.is_nan()).unwrap_or(0.5);
            let norm = row
                .get("embedding", "user_embedding")
                .and_then(Value::as_f32_list)
                .map_or(0.0, |e| e.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt());
            // Users who never saw an ad are absent from the ads view: found() tells them apart.
            let ctr = if row.found("ads") { row.get("ads", "ctr_7d").and_then(Value::as_f64) } else { None };
            let score = (1.0 - churn) * (1.0 + ctr.unwrap_or(0.0)) * (norm / 8.0).min(1.0) * (age as f64 / 100.0);
            println!(
                "  {id:?}: country={country} age={age} churn={churn:.3} ctr={ctr:?} |e|={norm:.2} -> score {score:.4}"
            );
        }
    }
    Ok(())
}
