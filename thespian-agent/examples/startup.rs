//! Bench helper for `bench/agent.sh`.
//!
//! - `startup BINARY RUNS`: starts `BINARY` (with the caller's environment plus `PORT=0`) `RUNS` times and
//!   prints the time from spawn to the first successful `A` as JSON: `{"runs":N,"median_ms":..,"p90_ms":..,"max_ms":..}`.
//! - `startup check HOST:PORT`: one `A` call; exits 1 with the status if it fails (h2load cannot see
//!   `grpc-status`, so the bench checks each server answers OK before loading it).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use thespian_agent::proto::Nothing;
use thespian_agent::proto::thespian_client::ThespianClient;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [check, addr] if check == "check" => {
            let mut client = ThespianClient::connect(format!("http://{addr}")).await?;
            if let Err(status) = client.a(Nothing {}).await {
                eprintln!("{addr}: A answered {status:?}");
                std::process::exit(1);
            }
            Ok(())
        }
        [binary, runs] => {
            let runs: usize = runs.parse()?;
            let mut times = Vec::with_capacity(runs);
            for _ in 0..runs {
                times.push(one_start(binary).await?);
            }
            times.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{{\"runs\":{runs},\"median_ms\":{:.2},\"p90_ms\":{:.2},\"max_ms\":{:.2}}}",
                ms(times[runs / 2]),
                ms(times[(runs * 9 / 10).min(runs - 1)]),
                ms(times[runs - 1])
            );
            Ok(())
        }
        _ => Err("usage: startup BINARY RUNS | startup check HOST:PORT".into()),
    }
}

/// Spawn → readiness line → first successful `A`.
async fn one_start(binary: &str) -> Result<Duration, Box<dyn std::error::Error>> {
    let started = Instant::now();
    let mut child = Command::new(binary)
        .env("PORT", "0")
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let first = BufReader::new(stdout)
        .lines()
        .next()
        .ok_or("no readiness line")??;
    let v: serde_json::Value = serde_json::from_str(&first)?;
    let addr = v["address"].as_str().ok_or("no address")?.to_owned();
    let mut client = ThespianClient::connect(format!("http://{addr}")).await?;
    client.a(Nothing {}).await?;
    let elapsed = started.elapsed();
    child.kill()?;
    child.wait()?;
    Ok(elapsed)
}
