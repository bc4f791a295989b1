//! A streaming OpenAI-style test server of known timing, for benchmarks/loadgen_capacity.py.
//!
//! Compiled (std only, no crates) so that on a 2-core machine it costs the load generators it measures as
//! little CPU as possible. One thread per connection (HTTP/1.1 keep-alive, chunked SSE), every token written
//! on an absolute schedule: first chunk `ttft_ms` after the request was read, then one every `gap_ms`.
//! The server measures its own first-write delay per request (GET /stats), so the "truth" a client's TTFT is
//! compared with is what the server actually did, not only what it was asked to do.
//!
//! It also holds the lean client that shows the server is not the limit: `drive` sends completions at a
//! constant rate, one thread and one connection per request, and times TTFT from the scheduled send.
//!
//! With JITTER (a fraction, e.g. 0.3), request n's first token comes after TTFT_MS x (1 + JITTER x (2u - 1)), u
//! drawn from n alone (splitmix64; n counts from the last POST /stats/reset), so the spread is known and seeded. The server also measures each request's
//! own TPOT (last token write - first token write) / (tokens - 1), the truth for a client's TPOT.
//!
//! Usage: capacity_server PORT TTFT_MS GAP_MS [JITTER]
//!        capacity_server drive PORT RATE SECONDS TOKENS
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

struct Stats {
    first_write_us: Mutex<Vec<u32>>,
    tpot_ns: Mutex<Vec<u64>>,
    arrivals: AtomicU64,
    last_body: Mutex<String>, // the last completion request's JSON, so a report can say what each client sent
    requests: AtomicU64,
    in_flight: AtomicU64,
    max_in_flight: AtomicU64,
}

struct Config {
    ttft: Duration,
    gap: Duration,
    jitter: f64,
}

/// Request n's draw in [0, 1): splitmix64 of n, so every run with the same order of arrivals sees the same TTFTs.
fn unit(n: u64) -> f64 {
    let mut z = n.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 6 && args[1] == "drive" {
        return drive(args[2].parse().expect("PORT"), args[3].parse().expect("RATE"), args[4].parse().expect("SECONDS"),
                     args[5].parse().expect("TOKENS"));
    }
    if args.len() != 4 && args.len() != 5 {
        eprintln!("usage: capacity_server PORT TTFT_MS GAP_MS [JITTER]");
        std::process::exit(2);
    }
    let port: u16 = args[1].parse().expect("PORT");
    let config = Arc::new(Config {
        ttft: Duration::from_micros((args[2].parse::<f64>().expect("TTFT_MS") * 1000.0) as u64),
        gap: Duration::from_micros((args[3].parse::<f64>().expect("GAP_MS") * 1000.0) as u64),
        jitter: args.get(4).map_or(0.0, |j| j.parse::<f64>().expect("JITTER")),
    });
    let stats = Arc::new(Stats {
        first_write_us: Mutex::new(Vec::with_capacity(1 << 20)),
        tpot_ns: Mutex::new(Vec::with_capacity(1 << 20)),
        arrivals: AtomicU64::new(0),
        last_body: Mutex::new(String::new()),
        requests: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        max_in_flight: AtomicU64::new(0),
    });
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    println!("listening on 127.0.0.1:{}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().ok();
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let (config, stats) = (config.clone(), stats.clone());
        thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                let _ = serve_connection(stream, &config, &stats);
            })
            .ok();
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
    keep_alive: bool,
}

fn read_request(reader: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let (mut length, mut chunked, mut keep_alive) = (0usize, false, true);
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 {
            return Ok(None);
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_ascii_lowercase());
            match name.as_str() {
                "content-length" => length = value.parse().unwrap_or(0),
                "transfer-encoding" => chunked = value.contains("chunked"),
                "connection" => keep_alive = !value.contains("close"),
                _ => {}
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            let mut piece = vec![0u8; size + 2];
            reader.read_exact(&mut piece)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&piece[..size]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    }
    Ok(Some(Request { method, path, body, keep_alive }))
}

/// The integer after `"key":` in a JSON body, if any (enough for the fields this server reads).
fn json_int(body: &str, key: &str) -> Option<u64> {
    let at = body.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = body[at..].trim_start().strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn json_bool(body: &str, key: &str) -> Option<bool> {
    let at = body.find(&format!("\"{key}\""))? + key.len() + 2;
    let rest = body[at..].trim_start().strip_prefix(':')?.trim_start();
    Some(rest.starts_with("true"))
}

/// Prompt length: token ids counted by commas, text by words (an estimate; usage only reports it).
fn prompt_tokens(body: &str) -> u64 {
    let Some(at) = body.find("\"prompt\"").or_else(|| body.find("\"content\"")) else { return 1 };
    let rest = body[at..].split_once(':').map(|x| x.1).unwrap_or("").trim_start();
    if let Some(list) = rest.strip_prefix('[') {
        let end = list.find(']').unwrap_or(list.len());
        return list[..end].matches(',').count() as u64 + 1;
    }
    let text = rest.strip_prefix('"').unwrap_or(rest);
    let end = text.find('"').unwrap_or(text.len());
    text[..end].split_whitespace().count().max(1) as u64
}

fn respond(stream: &mut TcpStream, code: &str, kind: &str, body: &str, keep_alive: bool) -> std::io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!(
        "HTTP/1.1 {code}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
        body.len()
    );
    stream.write_all(format!("{head}{body}").as_bytes())
}

fn write_chunk(stream: &mut TcpStream, data: &str) -> std::io::Result<()> {
    stream.write_all(format!("{:x}\r\n{data}\r\n", data.len()).as_bytes())
}

fn sleep_until(at: Instant) {
    let now = Instant::now();
    if at > now {
        thread::sleep(at - now);
    }
}

fn serve_connection(stream: TcpStream, config: &Config, stats: &Stats) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    while let Some(request) = read_request(&mut reader)? {
        let received = Instant::now();
        let keep_alive = request.keep_alive;
        match (request.method.as_str(), request.path.split('?').next().unwrap_or("")) {
            ("GET", "/health") => respond(&mut writer, "200 OK", "text/plain", "ok", keep_alive)?,
            ("GET", "/v1/models") => respond(
                &mut writer, "200 OK", "application/json",
                r#"{"object":"list","data":[{"id":"capacity-test","object":"model","created":0,"owned_by":"qwenopt"}]}"#,
                keep_alive,
            )?,
            ("GET", "/stats") => {
                let mut values = stats.first_write_us.lock().unwrap().clone();
                values.sort_unstable();
                let pick = |q: f64| if values.is_empty() { 0 } else { values[((values.len() - 1) as f64 * q) as usize] };
                let mean = if values.is_empty() { 0.0 } else { values.iter().map(|&v| v as f64).sum::<f64>() / values.len() as f64 };
                let mut tpots = stats.tpot_ns.lock().unwrap().clone();
                tpots.sort_unstable();
                let tpot = |q: f64| if tpots.is_empty() { 0.0 } else { tpots[((tpots.len() - 1) as f64 * q) as usize] as f64 / 1000.0 };
                let last = stats.last_body.lock().unwrap().clone();
                let last = if last.starts_with('{') && last.ends_with('}') { last } else { "null".to_string() };
                let body = format!(
                    r#"{{"requests":{},"first_write_n":{},"first_write_p50_us":{},"first_write_p99_us":{},"first_write_mean_us":{:.1},"tpot_n":{},"tpot_p50_us":{:.3},"tpot_p99_us":{:.3},"max_in_flight":{},"last_body":{}}}"#,
                    stats.requests.load(Ordering::Relaxed), values.len(), pick(0.5), pick(0.99), mean,
                    tpots.len(), tpot(0.5), tpot(0.99), stats.max_in_flight.load(Ordering::Relaxed), last
                );
                respond(&mut writer, "200 OK", "application/json", &body, keep_alive)?
            }
            ("POST", "/stats/reset") => {
                stats.first_write_us.lock().unwrap().clear();
                stats.tpot_ns.lock().unwrap().clear();
                stats.arrivals.store(0, Ordering::Relaxed); // every level draws the same TTFT sequence
                stats.requests.store(0, Ordering::Relaxed);
                stats.max_in_flight.store(0, Ordering::Relaxed);
                respond(&mut writer, "200 OK", "application/json", "{}", keep_alive)?
            }
            ("POST", path @ ("/v1/completions" | "/v1/chat/completions")) => {
                let body = String::from_utf8_lossy(&request.body);
                *stats.last_body.lock().unwrap() = body.trim().to_string();
                let chat = path.ends_with("chat/completions");
                let tokens = json_int(&body, "max_tokens").or_else(|| json_int(&body, "max_completion_tokens")).unwrap_or(16).max(1);
                let stream_it = json_bool(&body, "stream").unwrap_or(false);
                let prompt = prompt_tokens(&body);
                let now_in = stats.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
                stats.max_in_flight.fetch_max(now_in, Ordering::Relaxed);
                let served = serve_completion(&mut writer, config, stats, received, chat, stream_it, tokens, prompt, keep_alive);
                stats.in_flight.fetch_sub(1, Ordering::Relaxed);
                stats.requests.fetch_add(1, Ordering::Relaxed);
                served?
            }
            _ => respond(&mut writer, "404 Not Found", "application/json", r#"{"error":"not found"}"#, keep_alive)?,
        }
        if !keep_alive {
            break;
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn serve_completion(
    writer: &mut TcpStream, config: &Config, stats: &Stats, received: Instant, chat: bool, stream_it: bool,
    tokens: u64, prompt: u64, keep_alive: bool,
) -> std::io::Result<()> {
    let n = stats.arrivals.fetch_add(1, Ordering::Relaxed);
    let ttft = config.ttft.mul_f64((1.0 + config.jitter * (2.0 * unit(n) - 1.0)).max(0.0));
    let (object, kind) = if chat { ("chat.completion", "chat.completion.chunk") } else { ("text_completion", "text_completion") };
    let usage = format!(r#"{{"prompt_tokens":{prompt},"completion_tokens":{tokens},"total_tokens":{}}}"#, prompt + tokens);
    if !stream_it {
        sleep_until(received + ttft + config.gap * (tokens as u32 - 1));
        let text = " a".repeat(tokens as usize);
        let choice = if chat {
            format!(r#"{{"index":0,"message":{{"role":"assistant","content":"{text}"}},"finish_reason":"length"}}"#)
        } else {
            format!(r#"{{"index":0,"text":"{text}","finish_reason":"length"}}"#)
        };
        let body = format!(r#"{{"id":"cmpl-0","object":"{object}","created":0,"model":"capacity-test","choices":[{choice}],"usage":{usage}}}"#);
        return respond(writer, "200 OK", "application/json", &body, keep_alive);
    }
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\nConnection: {connection}\r\n\r\n");
    writer.write_all(head.as_bytes())?;
    let mut first = received;
    for i in 0..tokens {
        sleep_until(received + ttft + config.gap * i as u32);
        let last = i + 1 == tokens;
        let finish = if last { r#""length""# } else { "null" };
        let choice = if chat {
            let role = if i == 0 { r#""role":"assistant","# } else { "" };
            format!(r#"{{"index":0,"delta":{{{role}"content":" a"}},"finish_reason":{finish}}}"#)
        } else {
            format!(r#"{{"index":0,"text":" a","finish_reason":{finish}}}"#)
        };
        let event = format!("data: {{\"id\":\"cmpl-0\",\"object\":\"{kind}\",\"created\":0,\"model\":\"capacity-test\",\"choices\":[{choice}]}}\n\n");
        write_chunk(writer, &event)?;
        if i == 0 {
            first = Instant::now();
            let us = (first - received).as_micros().min(u32::MAX as u128) as u32;
            stats.first_write_us.lock().unwrap().push(us);
        } else if last {
            let ns = (first.elapsed().as_nanos() / (tokens - 1) as u128).min(u64::MAX as u128) as u64;
            stats.tpot_ns.lock().unwrap().push(ns);
        }
    }
    let last = format!("data: {{\"id\":\"cmpl-0\",\"object\":\"{kind}\",\"created\":0,\"model\":\"capacity-test\",\"choices\":[],\"usage\":{usage}}}\n\ndata: [DONE]\n\n");
    write_chunk(writer, &last)?;
    writer.write_all(b"0\r\n\r\n")
}

/// Open-loop constant-rate lean client: a pool of threads, each with one keep-alive connection, takes each
/// request at its scheduled time; prints one JSON line with TTFT (from the scheduled send) and send lag.
fn drive(port: u16, rate: f64, seconds: f64, tokens: u64) {
    let count = (rate * seconds) as usize;
    let workers = ((rate * 0.1) as usize).max(64);
    let results: Arc<Mutex<Vec<(u32, u32, bool)>>> = Arc::new(Mutex::new(Vec::with_capacity(count)));
    let (sender, receiver) = std::sync::mpsc::channel::<Instant>();
    let receiver = Arc::new(Mutex::new(receiver));
    let body = format!(r#"{{"model":"capacity-test","prompt":[1,2,3,4],"max_tokens":{tokens},"stream":true}}"#);
    let request = format!("POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    let mut handles = Vec::new();
    for _ in 0..workers {
        let (results, receiver, request) = (results.clone(), receiver.clone(), request.clone());
        handles.push(thread::Builder::new().stack_size(128 * 1024).spawn(move || {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.set_nodelay(true).unwrap();
            let mut buf = [0u8; 16384];
            loop {
                let next = receiver.lock().unwrap().recv();
                let Ok(scheduled) = next else { break };
                let lag = scheduled.elapsed().as_micros() as u32;
                let outcome = (|| -> std::io::Result<(u32, bool)> {
                    stream.write_all(request.as_bytes())?;
                    let (mut seen, mut ttft) = (Vec::new(), None);
                    while !seen.ends_with(b"0\r\n\r\n") {
                        let n = stream.read(&mut buf)?;
                        if n == 0 { break; }
                        seen.extend_from_slice(&buf[..n]);
                        if ttft.is_none() && seen.windows(6).any(|w| w == b"data: ") {
                            ttft = Some(scheduled.elapsed().as_micros() as u32);
                        }
                    }
                    let done = seen.windows(6).any(|w| w == b"[DONE]");
                    Ok((ttft.unwrap_or(0), done && ttft.is_some()))
                })();
                let (ttft, ok) = outcome.unwrap_or((0, false));
                results.lock().unwrap().push((lag, ttft, ok));
            }
        }).expect("spawn"));
    }
    let start = Instant::now() + Duration::from_millis(200);
    for i in 0..count {
        let scheduled = start + Duration::from_secs_f64(i as f64 / rate);
        sleep_until(scheduled);
        sender.send(scheduled).unwrap();
    }
    let sent_window = start.elapsed().as_secs_f64();
    drop(sender);
    for handle in handles { let _ = handle.join(); }
    let elapsed = start.elapsed().as_secs_f64();
    let results = results.lock().unwrap();
    let ok: Vec<_> = results.iter().filter(|r| r.2).collect();
    let pick = |mut v: Vec<u32>, q: f64| -> f64 {
        if v.is_empty() { return f64::NAN; }
        v.sort_unstable();
        v[((v.len() - 1) as f64 * q) as usize] as f64 / 1000.0
    };
    let ttfts: Vec<u32> = ok.iter().map(|r| r.1).collect();
    let lags: Vec<u32> = results.iter().map(|r| r.0).collect();
    println!(
        r#"{{"sent":{},"ok":{},"send_window_s":{:.3},"elapsed_s":{:.3},"req_s":{:.1},"ttft_p50_ms":{:.3},"ttft_p99_ms":{:.3},"send_lag_p50_ms":{:.3},"send_lag_p99_ms":{:.3}}}"#,
        results.len(), ok.len(), sent_window, elapsed, ok.len() as f64 / elapsed.max(1e-9),
        pick(ttfts.clone(), 0.5), pick(ttfts, 0.99), pick(lags.clone(), 0.5), pick(lags, 0.99)
    );
}
