//! Load generator for scopegate (and the bare-tonic ceiling it is compared
//! with). Driven by `bench/run.sh`; prints one JSON line per run.
//!
//!   loadgen ceiling --listen 127.0.0.1:0 | --uds PATH
//!   loadgen check --target http://127.0.0.1:50051|unix:/path --workload scopes|http|ext-authz
//!           --token SG... --concurrency 16 --connections 4 --duration-secs 5 --warmup-secs 1
//!           [--server-pid PID] [--rate REQ_PER_SEC (open loop)] [--requests N]
//!   loadgen writes --target ... --admin-token-file F --concurrency 32 --count 2000
//!   loadgen audit-reads --target ... --token SG... --concurrency 2 --duration-secs 10
//!   loadgen gen-backup --keys 1000000 --out keys.jsonl
//!   loadgen revocation --origin http://A --watchers http://B,http://C
//!           --admin-token-file F --count 1000 [--etcd-pid PID]

// The same allocator as the scopegate binary, so the bare-tonic ceiling and
// scopegate are compared on equal terms.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use scopegate::grpc::pb;
use tonic::transport::{Channel, Endpoint};

#[path = "../benches/support/envoy_request.rs"]
mod envoy_request;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct CheckArgs {
    #[arg(long)]
    target: String,
    #[arg(long)]
    workload: String,
    #[arg(long, default_value = "")]
    token: String,
    /// Requests in flight (closed loop), or most outstanding (open loop).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    #[arg(long, default_value_t = 4)]
    connections: usize,
    #[arg(long, default_value_t = 5.0)]
    duration_secs: f64,
    #[arg(long, default_value_t = 1.0)]
    warmup_secs: f64,
    /// Send exactly this many requests (no warm-up, no duration), then exit.
    #[arg(long, conflicts_with = "rate")]
    requests: Option<u64>,
    /// Open loop: start a request every 1/rate s whatever the answers do;
    /// latency counts from the intended start (no coordinated omission).
    #[arg(long)]
    rate: Option<f64>,
    #[arg(long)]
    server_pid: Option<u32>,
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Subcommand)]
enum Command {
    /// A bare tonic server: Authorize/Check answers a fixed message (and so
    /// does ext_authz Check, for the same-size-message ceiling).
    Ceiling {
        #[arg(long)]
        listen: Option<String>,
        #[arg(long)]
        uds: Option<String>,
        /// Run on the runtime scopegate runs on (no LIFO slot: woken tasks
        /// queue behind ready ones, so answers are written in batches).
        #[arg(long)]
        fifo: bool,
    },
    /// Drive Check (or ext_authz): closed loop for a fixed duration after a
    /// warm-up, a fixed number of requests (`--requests`, for instruction
    /// counts), or open loop at a fixed arrival rate (`--rate`).
    Check(CheckArgs),
    /// Forward-auth over HTTP/1.1 keep-alive, one connection per request in
    /// flight: exactly `requests` allowed `POST /v3/mail/send`, to the door
    /// (judged on its own path) or to a proxy in front of it; then latency
    /// percentiles.
    ForwardAuth {
        /// HOST:PORT of `serve --forward-auth-listen`.
        #[arg(long)]
        target: String,
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 2000)]
        requests: u64,
    },
    /// Durable CreateKey then DeleteKey throughput, and stale allows after delete.
    Writes {
        #[arg(long)]
        target: String,
        #[arg(long)]
        admin_token_file: String,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
        #[arg(long, default_value_t = 2000)]
        count: usize,
    },
    /// ListAuditEvents in a loop (page_size 1) with a read-only key: the
    /// audit-read flood that must not stall decisions (bench/audit_flood.sh).
    AuditReads {
        #[arg(long)]
        target: String,
        #[arg(long)]
        token: String,
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
        #[arg(long, default_value_t = 10.0)]
        duration_secs: f64,
    },
    /// Fleet mode: the time from DeleteKey returning on `origin` until every
    /// watcher sidecar denies the key, over `count` revocations.
    Revocation {
        #[arg(long)]
        origin: String,
        /// Other sidecars of the same fleet, comma-separated.
        #[arg(long)]
        watchers: String,
        #[arg(long)]
        admin_token_file: String,
        #[arg(long, default_value_t = 1000)]
        count: usize,
        /// etcd's pid: report its CPU time per mutation.
        #[arg(long)]
        etcd_pid: Option<u32>,
    },
    /// A backup file of `keys` random keys, for `scopegate restore`.
    GenBackup {
        #[arg(long)]
        keys: usize,
        #[arg(long)]
        out: String,
    },
}

struct Ceiling;

/// The same bare server answering Envoy's ext_authz with a fixed allow of the
/// shape scopegate sends (two upstream headers, the credential header removed,
/// four metadata fields): the ceiling for real Envoy messages both ways.
struct ExtAuthzCeiling;

fn fixed_allow() -> envoy_types::ext_authz::v3::pb::CheckResponse {
    use envoy_types::ext_authz::v3::pb::{CheckResponse, HeaderAppendAction};
    use envoy_types::ext_authz::v3::{CheckResponseExt, OkHttpResponseBuilder};
    use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
    let fields = [
        ("key_id", "qL0w1cT9Rk2tqc8z3mE1aA"),
        ("account_id", "bench"),
        ("scope", "mail.send"),
        ("decision", "ALLOWED"),
    ];
    let overwrite = Some(HeaderAppendAction::OverwriteIfExistsOrAdd);
    let mut ok = OkHttpResponseBuilder::new();
    ok.add_header("x-scopegate-key-id", fields[0].1, overwrite, false);
    ok.add_header("x-scopegate-account-id", fields[1].1, overwrite, false);
    ok.remove_header("authorization");
    let mut response = CheckResponse::with_status(tonic::Status::ok(""));
    response.set_http_response(ok);
    response.set_dynamic_metadata(Some(Struct {
        fields: fields
            .iter()
            .map(|(name, value)| {
                let value = Kind::StringValue((*value).to_owned());
                (name.to_string(), Value { kind: Some(value) })
            })
            .collect(),
    }));
    response
}

#[tonic::async_trait]
impl envoy_types::ext_authz::v3::pb::Authorization for ExtAuthzCeiling {
    async fn check(
        &self,
        _request: tonic::Request<envoy_types::ext_authz::v3::pb::CheckRequest>,
    ) -> Result<tonic::Response<envoy_types::ext_authz::v3::pb::CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(fixed_allow()))
    }
}

#[tonic::async_trait]
impl pb::authorize_server::Authorize for Ceiling {
    async fn check(
        &self,
        _request: tonic::Request<pb::CheckRequest>,
    ) -> Result<tonic::Response<pb::CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(pb::CheckResponse {
            allowed: true,
            decision: pb::Decision::Allowed as i32,
            key_id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            account_id: "acme".into(),
            ..Default::default()
        }))
    }
}

async fn channel(target: &str) -> Channel {
    if let Some(path) = target.strip_prefix("unix:") {
        let path = path.to_owned();
        Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await
            .expect("connect over the unix socket")
    } else {
        Endpoint::from_shared(target.to_owned())
            .unwrap()
            .tcp_nodelay(true)
            .connect()
            .await
            .expect("connect")
    }
}

/// (utime + stime in seconds, RSS in MiB) of a process.
fn process_usage(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // After the ')' the fields start at "state" (field 3): utime is 14, stime 15.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss_kib = status
        .lines()
        .find(|line| line.starts_with("VmRSS:"))
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(0.0);
    (cpu, rss_kib / 1024.0)
}

#[derive(Clone)]
enum Workload {
    Scopes(pb::CheckRequest),
    Http(pb::CheckRequest),
    ExtAuthz(Box<envoy_types::ext_authz::v3::pb::CheckRequest>),
}

async fn one_request(workload: &Workload, channel: &Channel) {
    match workload {
        Workload::Scopes(request) | Workload::Http(request) => {
            let response = pb::authorize_client::AuthorizeClient::new(channel.clone())
                .check(request.clone())
                .await
                .expect("check");
            assert!(
                response.get_ref().allowed,
                "the load must be allowed checks"
            );
        }
        Workload::ExtAuthz(request) => {
            let response = envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient::new(channel.clone())
                .check((**request).clone())
                .await
                .expect("ext_authz check");
            assert_eq!(response.get_ref().status.as_ref().map(|s| s.code), Some(0));
        }
    }
}

async fn run_check(args: CheckArgs) {
    let token = args.token.clone();
    let request = match args.workload.as_str() {
        "scopes" | "ceiling" => Workload::Scopes(pb::CheckRequest {
            token: token.clone(),
            scopes: vec!["mail.send".into()],
            http: None,
            ..Default::default()
        }),
        "http" => Workload::Http(pb::CheckRequest {
            token: token.clone(),
            scopes: vec![],
            http: Some(pb::HttpRequest {
                method: "POST".into(),
                path: "/v3/mail/send".into(),
            }),
            ..Default::default()
        }),
        "ext-authz" | "ceiling-ext-authz" => {
            Workload::ExtAuthz(Box::new(envoy_request::envoy_request(&token)))
        }
        "ext-authz-allowed" | "ceiling-ext-authz-allowed" => Workload::ExtAuthz(Box::new(
            envoy_request::envoy_request_allowed_headers(&token),
        )),
        other => panic!("unknown workload {other}"),
    };
    let mut channels = Vec::new();
    for _ in 0..args.connections.max(1) {
        channels.push(channel(&args.target).await);
    }
    if let Some(count) = args.requests {
        run_count(&request, &channels, args.concurrency.max(1), count).await;
        return;
    }
    let duration = Duration::from_secs_f64(args.duration_secs);
    let warmup = Duration::from_secs_f64(args.warmup_secs);
    let started = Instant::now();
    let measure_from = started + warmup;
    let stop_at = measure_from + duration;
    let workers = match args.rate {
        None => closed_loop(&request, &channels, args.concurrency, measure_from, stop_at),
        Some(rate) => open_loop(
            &request,
            &channels,
            args.concurrency,
            rate,
            measure_from,
            stop_at,
        ),
    };
    tokio::time::sleep_until(measure_from.into()).await;
    let usage_before = args.server_pid.map(process_usage);
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for worker in workers {
        total.add(worker.await.unwrap()).unwrap();
    }
    let usage_after = args.server_pid.map(process_usage);
    let seconds = duration.as_secs_f64();
    let (cpu_percent, rss_mib) = match (usage_before, usage_after) {
        (Some((before, _)), Some((after, rss))) => (100.0 * (after - before) / seconds, rss),
        _ => (0.0, 0.0),
    };
    println!(
        "{}",
        serde_json::json!({
            "label": args.label, "workload": args.workload,
            "target": if args.target.starts_with("unix:") { "uds" } else { "tcp" },
            "concurrency": args.concurrency, "connections": args.connections,
            "rate": args.rate, "schedule_late_p99_us": SCHEDULE_LATE_P99_US.get(),
            "requests": total.len(), "rps": total.len() as f64 / seconds,
            "p50_us": total.value_at_quantile(0.50), "p99_us": total.value_at_quantile(0.99),
            "p999_us": total.value_at_quantile(0.999),
            "server_cpu_percent": cpu_percent, "server_rss_mib": rss_mib,
        })
    );
}

type Recorder = tokio::task::JoinHandle<Histogram<u64>>;

/// `concurrency` workers, each sending its next request when the last one
/// is answered; latency from the send.
fn closed_loop(
    request: &Workload,
    channels: &[Channel],
    concurrency: usize,
    measure_from: Instant,
    stop_at: Instant,
) -> Vec<Recorder> {
    (0..concurrency)
        .map(|worker| {
            let channel = channels[worker % channels.len()].clone();
            let request = request.clone();
            tokio::spawn(async move {
                let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
                loop {
                    let sent = Instant::now();
                    if sent >= stop_at {
                        break;
                    }
                    one_request(&request, &channel).await;
                    if sent >= measure_from {
                        histogram
                            .record(sent.elapsed().as_micros().max(1) as u64)
                            .unwrap();
                    }
                }
                histogram
            })
        })
        .collect()
}

/// Requests start on a fixed schedule (one every 1/rate s) whether or not
/// earlier ones were answered, up to `max_outstanding`; a request that has
/// to wait for a slot still counts its latency from its intended start, so
/// a stall shows in p99 instead of hiding (coordinated omission).
fn open_loop(
    request: &Workload,
    channels: &[Channel],
    max_outstanding: usize,
    rate: f64,
    measure_from: Instant,
    stop_at: Instant,
) -> Vec<Recorder> {
    let request = request.clone();
    let channels = channels.to_vec();
    let slots = Arc::new(tokio::sync::Semaphore::new(max_outstanding.max(1)));
    let (results, mut received) = tokio::sync::mpsc::unbounded_channel::<u64>();
    // The schedule runs on a thread of its own with the OS timer (tens of
    // µs), not tokio's (1 ms ticks, which alone would add up to 1 ms to
    // every latency counted from the intended time).
    let runtime = tokio::runtime::Handle::current();
    let schedule = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let started = Instant::now();
        let mut late = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for n in 0u64.. {
            let intended = started + interval.mul_f64(n as f64);
            if intended >= stop_at {
                break;
            }
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            late.record(intended.elapsed().as_micros().max(1) as u64)
                .unwrap();
            let slots = slots.clone();
            let channel = channels[n as usize % channels.len()].clone();
            let request = request.clone();
            let results = results.clone();
            runtime.spawn(async move {
                let slot = slots.acquire_owned().await.unwrap();
                one_request(&request, &channel).await;
                drop(slot);
                if intended >= measure_from {
                    let _ = results.send(intended.elapsed().as_micros().max(1) as u64);
                }
            });
        }
        let _ = SCHEDULE_LATE_P99_US.set(late.value_at_quantile(0.99));
    });
    let schedule = tokio::task::spawn_blocking(move || schedule.join().unwrap());
    vec![tokio::spawn(async move {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        schedule.await.unwrap();
        // Every sender is gone once the last request has been answered.
        while let Some(micros) = received.recv().await {
            histogram.record(micros).unwrap();
        }
        histogram
    })]
}

/// How late the open-loop schedule itself started its requests (p99, µs):
/// the generator's own error, reported beside its latencies.
static SCHEDULE_LATE_P99_US: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Exactly `count` requests over `concurrency` workers, for callgrind.
async fn run_count(request: &Workload, channels: &[Channel], concurrency: usize, count: u64) {
    let workers: Vec<_> = (0..concurrency as u64)
        .map(|worker| {
            let channel = channels[worker as usize % channels.len()].clone();
            let request = request.clone();
            let share = count / concurrency as u64 + u64::from(worker < count % concurrency as u64);
            tokio::spawn(async move {
                for _ in 0..share {
                    one_request(&request, &channel).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    println!(
        "{}",
        serde_json::json!({ "requests": count, "concurrency": concurrency })
    );
}

/// Forward-auth requests over keep-alive connections; prints the count and
/// latency percentiles (µs) as JSON.
async fn run_forward_auth(target: String, token: String, concurrency: usize, requests: u64) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let request = format!(
        "POST /v3/mail/send HTTP/1.1\r\nHost: scopegate\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\n\r\n"
    );
    let request: Arc<[u8]> = request.into_bytes().into();
    let concurrency = concurrency.max(1) as u64;
    let workers: Vec<_> = (0..concurrency)
        .map(|worker| {
            let (target, request) = (target.clone(), request.clone());
            let share = requests / concurrency + u64::from(worker < requests % concurrency);
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&target)
                    .await
                    .expect("connect");
                stream.set_nodelay(true).unwrap();
                let mut stream = tokio::io::BufReader::new(stream);
                let mut latencies = Histogram::<u64>::new(3).unwrap();
                let mut line = String::new();
                for _ in 0..share {
                    let sent = Instant::now();
                    stream.get_mut().write_all(&request).await.unwrap();
                    let mut length = 0usize;
                    let mut status = String::new();
                    loop {
                        line.clear();
                        stream.read_line(&mut line).await.unwrap();
                        if status.is_empty() {
                            status = line.clone();
                        }
                        if line == "\r\n" {
                            break;
                        }
                        let lower = line.to_ascii_lowercase();
                        if let Some(value) = lower.strip_prefix("content-length:") {
                            length = value.trim().parse().unwrap();
                        }
                    }
                    let mut body = vec![0; length];
                    stream.read_exact(&mut body).await.unwrap();
                    assert!(
                        status.starts_with("HTTP/1.1 200"),
                        "the load must be allowed: {status}"
                    );
                    latencies.record(sent.elapsed().as_micros() as u64).unwrap();
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Histogram::<u64>::new(3).unwrap();
    for worker in workers {
        latencies.add(worker.await.unwrap()).unwrap();
    }
    println!(
        "{}",
        serde_json::json!({
            "workload": "forward-auth", "requests": requests, "concurrency": concurrency,
            "p50_us": latencies.value_at_quantile(0.5), "p99_us": latencies.value_at_quantile(0.99),
        })
    );
}

async fn run_audit_reads(target: String, token: String, concurrency: usize, duration_secs: f64) {
    let channel = channel(&target).await;
    let token: Arc<str> = token.into();
    let until = Instant::now() + Duration::from_secs_f64(duration_secs);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (channel, token) = (channel.clone(), token.clone());
        workers.push(tokio::spawn(async move {
            let mut client = pb::manage_key_client::ManageKeyClient::new(channel);
            let (mut served, mut limited) = (0u64, 0u64);
            while Instant::now() < until {
                let request = authed(
                    &token,
                    pb::ListAuditEventsRequest {
                        page_size: 1,
                        ..Default::default()
                    },
                );
                match client.list_audit_events(request).await {
                    Ok(_) => served += 1,
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => limited += 1,
                    Err(status) => panic!("ListAuditEvents: {status}"),
                }
            }
            (served, limited)
        }));
    }
    let (mut served, mut limited) = (0, 0);
    for worker in workers {
        let (s, l) = worker.await.unwrap();
        served += s;
        limited += l;
    }
    println!(
        "{}",
        serde_json::json!({"audit_reads_served": served, "audit_reads_limited": limited, "seconds": duration_secs})
    );
}

async fn run_writes(target: String, admin_token_file: String, concurrency: usize, count: usize) {
    let admin = std::fs::read_to_string(admin_token_file)
        .unwrap()
        .trim()
        .to_owned();
    let channel = channel(&target).await;
    let admin: Arc<str> = admin.into();
    let created: Arc<tokio::sync::Mutex<Vec<(String, String)>>> = Arc::default();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (channel, created, next, bearer) = (
            channel.clone(),
            created.clone(),
            next.clone(),
            admin.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut client = pb::manage_key_client::ManageKeyClient::new(channel);
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if index >= count {
                    break;
                }
                let response = client
                    .create_key(authed(
                        &bearer,
                        pb::CreateKeyRequest {
                            account_id: format!("bench-{}", index / 100),
                            name: format!("k{index}"),
                            scopes: vec!["mail.send".into()],
                            grants: vec![],
                            ..Default::default()
                        },
                    ))
                    .await
                    .expect("create")
                    .into_inner();
                created
                    .lock()
                    .await
                    .push((response.key.unwrap().key_id, response.token));
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    let create_rate = count as f64 / started.elapsed().as_secs_f64();

    let keys = Arc::new(created.lock().await.clone());
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let stale_allows = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (channel, keys, next, stale, bearer) = (
            channel.clone(),
            keys.clone(),
            next.clone(),
            stale_allows.clone(),
            admin.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut manage = pb::manage_key_client::ManageKeyClient::new(channel.clone());
            let mut authorize = pb::authorize_client::AuthorizeClient::new(channel);
            loop {
                let index = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((key_id, token)) = keys.get(index) else {
                    break;
                };
                manage
                    .delete_key(authed(
                        &bearer,
                        pb::DeleteKeyRequest {
                            key_id: key_id.clone(),
                        },
                    ))
                    .await
                    .expect("delete");
                // The very next check after DeleteKey returns must deny.
                if index % 10 == 0 {
                    let response = authorize
                        .check(pb::CheckRequest {
                            token: token.clone(),
                            scopes: vec!["mail.send".into()],
                            http: None,
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                    if response.get_ref().allowed {
                        stale.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for worker in workers {
        worker.await.unwrap();
    }
    // The delete loop also made count/10 checks; they take microseconds.
    let delete_rate = count as f64 / started.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({
            "workload": "writes", "concurrency": concurrency, "count": count,
            "create_per_sec": create_rate, "delete_per_sec": delete_rate,
            "checks_after_delete": count / 10,
            "stale_allows_after_delete": stale_allows.load(std::sync::atomic::Ordering::Relaxed),
        })
    );
}

fn authed<T>(admin: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {admin}").parse().unwrap());
    request
}

fn gen_backup(keys: usize, out: &str) {
    use base64::Engine;
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    let mut bytes = [0u8; 48];
    for index in 0..keys {
        getrandom::fill(&mut bytes).unwrap();
        let key_id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..16]);
        let hash: String = bytes[16..].iter().map(|b| format!("{b:02x}")).collect();
        writeln!(
            file,
            r#"{{"version":1,"key_id":"{key_id}","account_id":"acct-{}","name":"k{index}","scopes":["mail.send","stats.read"],"secret_hash":"{hash}","create_time_unix_ms":0,"update_time_unix_ms":0,"created_by":"admin"}}"#,
            index / 100
        )
        .unwrap();
    }
    file.flush().unwrap();
}

fn main() {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    #[cfg(tokio_unstable)]
    if matches!(cli.command, Command::Ceiling { fifo: true, .. }) {
        builder.disable_lifo_slot();
    }
    let runtime = builder.enable_all().build().unwrap();
    match cli.command {
        Command::Ceiling { listen, uds, .. } => runtime.block_on(async move {
            let service = pb::authorize_server::AuthorizeServer::new(Ceiling);
            let envoy = envoy_types::ext_authz::v3::pb::AuthorizationServer::new(ExtAuthzCeiling);
            let router = tonic::transport::Server::builder()
                .add_service(service)
                .add_service(envoy);
            match (listen, uds) {
                (Some(addr), _) => {
                    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                    println!("{}", listener.local_addr().unwrap());
                    let incoming = tonic::transport::server::TcpIncoming::from(listener)
                        .with_nodelay(Some(true));
                    router.serve_with_incoming(incoming).await.unwrap();
                }
                (None, Some(path)) => {
                    let _ = std::fs::remove_file(&path);
                    let listener = tokio::net::UnixListener::bind(&path).unwrap();
                    println!("{path}");
                    router
                        .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(
                            listener,
                        ))
                        .await
                        .unwrap();
                }
                (None, None) => panic!("give --listen or --uds"),
            }
        }),
        Command::Check(args) => runtime.block_on(run_check(args)),
        Command::ForwardAuth {
            target,
            token,
            concurrency,
            requests,
        } => runtime.block_on(run_forward_auth(target, token, concurrency, requests)),
        Command::Writes {
            target,
            admin_token_file,
            concurrency,
            count,
        } => runtime.block_on(run_writes(target, admin_token_file, concurrency, count)),
        Command::AuditReads {
            target,
            token,
            concurrency,
            duration_secs,
        } => runtime.block_on(run_audit_reads(target, token, concurrency, duration_secs)),
        Command::GenBackup { keys, out } => gen_backup(keys, &out),
        Command::Revocation {
            origin,
            watchers,
            admin_token_file,
            count,
            etcd_pid,
        } => runtime.block_on(run_revocation(
            origin,
            watchers,
            admin_token_file,
            count,
            etcd_pid,
        )),
    }
}

/// CPU seconds (user + system) a process has used, from /proc.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit(')').next()?.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

async fn run_revocation(
    origin: String,
    watchers: String,
    admin_token_file: String,
    count: usize,
    etcd_pid: Option<u32>,
) {
    let admin = std::fs::read_to_string(admin_token_file)
        .unwrap()
        .trim()
        .to_owned();
    let mut manage = pb::manage_key_client::ManageKeyClient::new(channel(&origin).await);
    let mut checkers = Vec::new();
    for target in watchers.split(',').filter(|t| !t.is_empty()) {
        checkers.push(pb::authorize_client::AuthorizeClient::new(
            channel(target).await,
        ));
    }
    let decision = |response: pb::CheckResponse| response.decision;
    let unknown = pb::Decision::UnknownKey as i32;
    // Keys first, visible everywhere.
    let mut keys = Vec::with_capacity(count);
    let cpu_before_creates = etcd_pid.and_then(cpu_seconds);
    for index in 0..count {
        let created = manage
            .create_key(authed(
                &admin,
                pb::CreateKeyRequest {
                    account_id: format!("revoke-{}", index / 100),
                    name: format!("r{index}"),
                    scopes: vec!["mail.send".into()],
                    grants: vec![],
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner();
        keys.push((created.key.unwrap().key_id, created.token));
    }
    let create_cpu = etcd_pid
        .and_then(cpu_seconds)
        .zip(cpu_before_creates)
        .map(|(after, before)| after - before);
    for (_, token) in &keys {
        for checker in &mut checkers {
            let request = || pb::CheckRequest {
                token: token.clone(),
                scopes: vec!["mail.send".into()],
                http: None,
                ..Default::default()
            };
            while !checker.check(request()).await.unwrap().into_inner().allowed {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
    let mut all = Histogram::<u64>::new(3).unwrap();
    let cpu_before = etcd_pid.and_then(cpu_seconds);
    for (key_id, token) in &keys {
        manage
            .delete_key(authed(
                &admin,
                pb::DeleteKeyRequest {
                    key_id: key_id.clone(),
                },
            ))
            .await
            .unwrap();
        let returned = Instant::now();
        // Each watcher is polled on its own task; the slowest one counts.
        let mut polls = Vec::new();
        for checker in &checkers {
            let mut checker = checker.clone();
            let token = token.clone();
            polls.push(tokio::spawn(async move {
                loop {
                    let request = pb::CheckRequest {
                        token: token.clone(),
                        scopes: vec!["mail.send".into()],
                        http: None,
                        ..Default::default()
                    };
                    let response = checker.check(request).await.unwrap().into_inner();
                    if decision(response) == unknown {
                        return returned.elapsed();
                    }
                }
            }));
        }
        let mut slowest = Duration::ZERO;
        for poll in polls {
            slowest = slowest.max(poll.await.unwrap());
        }
        all.record(slowest.as_micros() as u64).unwrap();
    }
    let delete_cpu = etcd_pid
        .and_then(cpu_seconds)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    let per_ms = |cpu: Option<f64>| cpu.map(|cpu| 1000.0 * cpu / count as f64);
    println!(
        "{}",
        serde_json::json!({
            "workload": "revocation",
            "watchers": checkers.len(),
            "revocations": count,
            "p50_ms": all.value_at_quantile(0.50) as f64 / 1000.0,
            "p99_ms": all.value_at_quantile(0.99) as f64 / 1000.0,
            "max_ms": all.max() as f64 / 1000.0,
            "etcd_cpu_ms_per_create": per_ms(create_cpu),
            "etcd_cpu_ms_per_delete": per_ms(delete_cpu),
        })
    );
}
