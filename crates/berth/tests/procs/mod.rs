//! What the real-process tests share: the `berth` binary, a child process
//! killed when dropped, a JSON 1.1 API call, and polling with a deadline.

#![allow(dead_code)] // each test file uses its own subset

use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

/// A child process, killed and reaped when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The `berth` binary under test.
pub fn berth() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// One ECS API call that must succeed; its response.
pub async fn call(http: &reqwest::Client, url: &str, op: &str, body: Value) -> Value {
    let resp = http
        .post(url)
        .header("X-Amz-Target", format!("AmazonEC2ContainerServiceV20141113.{op}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let v: Value = resp.json().await.unwrap();
    assert!(status.is_success(), "{op}: {status} {v}");
    v
}

/// Polls `f` until it yields a value, failing the test after `secs`.
pub async fn wait<F, Fut, T>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
