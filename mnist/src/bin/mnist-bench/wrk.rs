//! `/predict` load from `wrk` (one thread, so it leaves a core to the server), the same
//! load for lancer's server and for the Python peer.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::process::Command;

/// What one load run measured.
pub struct Load {
    pub requests_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl std::fmt::Display for Load {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>7.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms",
            self.requests_per_second, self.p50_ms, self.p99_ms
        )
    }
}

/// Writes the Lua script that makes wrk POST `body` as JSON.
pub fn script(work: &Path, body: &str) -> Result<std::path::PathBuf> {
    let path = work.join("predict.lua");
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = [[{body}]]\n"
    );
    std::fs::write(&path, lua)?;
    Ok(path)
}

/// Drives `url/predict` with `connections` open connections for `duration`.
pub async fn run(url: &str, script: &Path, connections: usize, duration: Duration) -> Result<Load> {
    let output = Command::new("wrk")
        .args(["-t1", "--latency", "-s"])
        .arg(script)
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", duration.as_secs().max(1)))
        .arg(format!("{url}/predict"))
        .output()
        .await
        .context("running wrk (apt-get install wrk)")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    parse(&text)
}

fn parse(text: &str) -> Result<Load> {
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx")) {
        bail!("/predict answered errors: {}", line.trim());
    }
    let field = |prefix: &str| -> Result<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|line| line.strip_prefix(prefix))
            .map(str::trim)
            .with_context(|| format!("wrk printed no {prefix:?} line:\n{text}"))
    };
    Ok(Load {
        requests_per_second: field("Requests/sec:")?.parse()?,
        p50_ms: milliseconds(field("50%")?)?,
        p99_ms: milliseconds(field("99%")?)?,
    })
}

/// wrk's durations: `812.00us`, `3.51ms`, `1.20s`.
fn milliseconds(text: &str) -> Result<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        bail!("wrk printed a latency without a unit: {text}")
    };
    Ok(number.parse::<f64>()? * scale)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn wrks_report_is_read_into_rate_and_percentiles() {
        let report = "  Latency Distribution\n     50%  812.00us\n     75%    1.10ms\n     90%    2.00ms\n     99%    3.51ms\n  1000 requests in 1.00s, 1.00MB read\nRequests/sec:   4321.50\nTransfer/sec:      1.00MB\n";
        let load = parse(report).expect("parses");
        assert_eq!(load.requests_per_second, 4321.5);
        assert!((load.p50_ms - 0.812).abs() < 1e-9);
        assert!((load.p99_ms - 3.51).abs() < 1e-9);
        assert!(parse("Non-2xx or 3xx responses: 3\nRequests/sec: 1\n").is_err());
    }
}
