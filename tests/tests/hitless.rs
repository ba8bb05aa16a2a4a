//! Hitless rotation under load: while clients open new TLS connections and keep long streams,
//! the server certificate is rotated 1,000 times (Secret-volume `..data` swaps, the next one 50 ms
//! after each generation is published). No handshake may fail, no stream may break, and every
//! handshake that starts after a generation was accepted must be served that generation or a newer
//! one.

use std::{
    collections::HashMap,
    fs,
    os::unix::fs::symlink,
    path::Path,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use certreload_e2e::{
    pki::{Leaf, TestCa},
    Agent,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
use sha2::{Digest, Sha256};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tokio_rustls::TlsConnector;

/// The soak: 1,000 Secret-volume swaps under load, each waited for until published, then `PAUSE`.
const ROTATIONS: usize = 1000;
/// Between one generation's publication and the next swap.
const PAUSE: Duration = Duration::from_millis(50);
const LONG_STREAMS: usize = 50;
const NEW_PER_SECOND: u64 = 200;

fn write_version(vol: &Path, n: usize, cert: &str, key: &str) {
    let ts = vol.join(format!("..ts{n}"));
    fs::create_dir(&ts).expect("mkdir");
    fs::write(ts.join("tls.crt"), cert).expect("write");
    fs::write(ts.join("tls.key"), key).expect("write");
    symlink(format!("..ts{n}"), vol.join("..data_tmp")).expect("symlink");
    fs::rename(vol.join("..data_tmp"), vol.join("..data")).expect("rename");
}

async fn echo_upstream() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                // Ends when either side closes or resets; the clients check what they got back.
                tokio::io::copy(&mut r, &mut w).await.ok();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_every_50ms_under_load_fails_nothing() {
    scenario(false).await;
}

/// Bad material written during load (garbage, a key for another certificate, another issuer, an
/// expired pair): every write is rejected and the first certificate keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_material_during_load_keeps_the_old_certificate_and_fails_nothing() {
    scenario(true).await;
}

const BAD_WRITES: usize = 20;

async fn scenario(bad: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_path_buf();
    let vol = d.join("vol");
    fs::create_dir(&vol).expect("mkdir");
    let issuer = TestCa::new("hitless CA");
    fs::write(d.join("ca.crt"), &issuer.pem).expect("write");
    let mut generation_of: HashMap<Vec<u8>, u64> = HashMap::new();
    let pairs: Vec<(String, String)> = (0..=ROTATIONS)
        .map(|i| {
            let (cert, key) = issuer.issue(&Leaf::server("localhost"));
            let der = CertificateDer::from_pem_slice(cert.as_bytes()).expect("PEM");
            generation_of.insert(Sha256::digest(&der).to_vec(), i as u64 + 1);
            (cert, key)
        })
        .collect();
    write_version(&vol, 0, &pairs[0].0, &pairs[0].1);
    symlink("..data/tls.crt", vol.join("tls.crt")).expect("symlink");
    symlink("..data/tls.key", vol.join("tls.key")).expect("symlink");
    let upstream = echo_upstream().await;
    // Bad pairs are rejected at once rather than waited on as a half-written rotation.
    let pair_timeout = if bad { "0s" } else { "10s" };
    let audit = d.join("audit.jsonl");
    let config = format!(
        "[agent]\nadmin = \"127.0.0.1:0\"\npair_timeout = \"{pair_timeout}\"\n[audit]\npath = \"{}\"\n[[bundle]]\nname = \"web\"\nkind = \"server\"\ncert = \"{}\"\nkey = \"{}\"\nca = \"{}\"\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nbundle = \"web\"\nupstream = \"tcp://{upstream}\"\n",
        audit.display(),
        vol.join("tls.crt").display(),
        vol.join("tls.key").display(),
        d.join("ca.crt").display()
    );
    fs::write(d.join("c.toml"), config).expect("write");
    let rogue = TestCa::new("rogue CA");
    let bad_versions: Vec<(String, String)> = vec![
        ("garbage".to_string(), pairs[1].1.clone()),
        (pairs[1].0.clone(), pairs[2].1.clone()),
        rogue.issue(&Leaf::server("localhost")),
        issuer.issue(&Leaf::server("localhost").valid(-10, -1)),
    ];
    let agent = Agent::start(&d.join("c.toml"), &audit, &[]);
    let addr = agent.log_field("listener=web", "address");

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(issuer.pem.as_bytes()).expect("CA PEM"))
        .expect("root");
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let handshakes = Arc::new(Mutex::new(Vec::<(Instant, Vec<u8>)>::new()));
    let stream_rounds = Arc::new(AtomicU64::new(0));

    let connect = {
        let (client, addr) = (client.clone(), addr.clone());
        move || {
            let (client, addr) = (client.clone(), addr.clone());
            async move {
                // Taken before connect: the server can only pick a configuration after this.
                let started = Instant::now();
                let tcp = TcpStream::connect(&addr)
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
                let tls = TlsConnector::from(client)
                    .connect(ServerName::try_from("localhost").expect("name"), tcp)
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
                let leaf = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| Sha256::digest(c).to_vec())
                    .unwrap_or_default();
                Ok::<_, String>((tls, started, leaf))
            }
        }
    };

    // Long streams: a 1 KiB round trip every 10 ms for the whole run.
    let mut tasks = Vec::new();
    for _ in 0..LONG_STREAMS {
        let (connect, stop, failures, rounds) = (
            connect.clone(),
            stop.clone(),
            failures.clone(),
            stream_rounds.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut tls, _, _) = match connect().await {
                Ok(c) => c,
                Err(e) => {
                    return failures
                        .lock()
                        .expect("lock")
                        .push(format!("long stream: {e}"))
                }
            };
            let payload = [7u8; 1024];
            let mut back = [0u8; 1024];
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = async {
                    tls.write_all(&payload).await?;
                    tls.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                }
                .await
                {
                    return failures
                        .lock()
                        .expect("lock")
                        .push(format!("long stream broke: {e}"));
                }
                rounds.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    // New connections at a fixed offered rate.
    let opener = {
        let (connect, stop, failures, handshakes) = (
            connect.clone(),
            stop.clone(),
            failures.clone(),
            handshakes.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / NEW_PER_SECOND));
            let mut spawned = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (connect, failures, handshakes) =
                    (connect.clone(), failures.clone(), handshakes.clone());
                spawned.push(tokio::spawn(async move {
                    match connect().await {
                        Ok((mut tls, started, leaf)) => {
                            let mut back = [0u8; 4];
                            let io = async {
                                tls.write_all(b"ping").await?;
                                tls.read_exact(&mut back).await?;
                                tls.shutdown().await
                            };
                            if let Err(e) = io.await {
                                failures
                                    .lock()
                                    .expect("lock")
                                    .push(format!("short connection: {e}"));
                            }
                            handshakes.lock().expect("lock").push((started, leaf));
                        }
                        Err(e) => failures.lock().expect("lock").push(e),
                    }
                }));
            }
            for t in spawned {
                // A connection's failures are recorded in `failures`; a panic is a bug in the
                // test and leaves the counts incomplete.
                t.await.expect("a short connection's task panicked");
            }
        })
    };

    // Rotate every 50 ms; note when each generation is published (the agent logs it right after the
    // swap; its audit record comes earlier, before the fsync that must precede the swap).
    let mut accepted_at: Vec<(u64, Instant)> = Vec::new();
    if bad {
        for (i, (cert, key)) in bad_versions.iter().cycle().take(BAD_WRITES).enumerate() {
            let n = i + 1;
            write_version(&vol, n, cert, key);
            // As the kubelet does: the version before goes once `..data` points past it.
            fs::remove_dir_all(vol.join(format!("..ts{}", n - 1)))
                .expect("remove the version before");
            let deadline = Instant::now() + certreload_e2e::EVENT_DEADLINE;
            while fs::read_to_string(&audit)
                .unwrap_or_default()
                .matches("\"event\":\"material_rejected\"")
                .count()
                < n
            {
                assert!(
                    Instant::now() < deadline,
                    "bad write {n} never rejected:\n{}",
                    agent.log()
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let rotations = if bad { 0 } else { ROTATIONS };
    let mut log_offset = 0;
    let mut publish_latency = Vec::with_capacity(rotations);
    let rotating_since = Instant::now();
    for (n, (cert, key)) in pairs.iter().enumerate().skip(1).take(rotations) {
        let old = vol.join(format!("..ts{}", n - 1));
        let swapped = Instant::now();
        write_version(&vol, n, cert, key);
        fs::remove_dir_all(old).expect("remove the version before");
        let generation = n as u64 + 1;
        // The whole line: generation=12 must not match generation=120's.
        let needle = format!("generation published bundle=web generation={generation}\n");
        let deadline = Instant::now() + certreload_e2e::EVENT_DEADLINE;
        loop {
            if let Some(end) = agent.log_find(log_offset, &needle) {
                log_offset = end;
                break;
            }
            assert!(
                Instant::now() < deadline,
                "generation {generation} never accepted:\n{}",
                agent.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        accepted_at.push((generation, Instant::now()));
        publish_latency.push(swapped.elapsed());
        tokio::time::sleep(PAUSE).await;
    }
    let rotating = rotating_since.elapsed();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("long stream task");
    }
    opener.await.expect("opener");
    let audit_records = agent.stop();
    let rejected = audit_records
        .iter()
        .filter(|r| r["event"] == "material_rejected")
        .count();
    // A ..data swap changes cert and key; when they arrive in two batches, both are judged.
    if bad {
        assert!(
            rejected >= BAD_WRITES,
            "every bad write is rejected: {rejected}"
        );
    } else {
        assert_eq!(rejected, 0, "no good rotation is rejected");
    }

    let failures = failures.lock().expect("lock");
    assert!(
        failures.is_empty(),
        "{} failures, first: {:?}",
        failures.len(),
        failures.first()
    );
    let handshakes = handshakes.lock().expect("lock");
    assert!(
        handshakes.len() > 100,
        "load ran: {} handshakes",
        handshakes.len()
    );
    assert!(stream_rounds.load(Ordering::Relaxed) > 0);
    let mut stale = 0;
    for (started, leaf) in handshakes.iter() {
        let served = generation_of.get(leaf).copied().unwrap_or(0);
        let visible = accepted_at
            .iter()
            .filter(|(_, at)| at < started)
            .map(|(g, _)| *g)
            .max()
            .unwrap_or(1);
        if served < visible {
            stale += 1;
        }
    }
    assert_eq!(
        stale, 0,
        "handshakes started after a generation was published got an older certificate"
    );
    let records = fs::read_to_string(&audit).expect("audit");
    assert_eq!(
        records.matches("\"event\":\"material_accepted\"").count(),
        rotations + 1,
        "one generation per rotation, none for bad material"
    );
    if bad {
        assert!(
            handshakes
                .iter()
                .all(|(_, l)| generation_of.get(l) == Some(&1)),
            "the first certificate is served throughout"
        );
    }
    let summary = format!(
        "{} handshakes, {LONG_STREAMS} long streams ({} round trips), {} bad writes, {rotations} rotations",
        handshakes.len(),
        stream_rounds.load(Ordering::Relaxed),
        if bad { BAD_WRITES } else { 0 },
    );
    publish_latency.sort();
    let at = |q: f64| {
        publish_latency
            .get(((publish_latency.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    if rotations > 0 {
        eprintln!(
            "{summary} in {rotating:.1?} (swap to published: p50 {:?}, p99 {:?}, max {:?}): 0 failed handshakes, 0 broken streams",
            at(0.5),
            at(0.99),
            at(1.0),
        );
    } else {
        eprintln!("{summary}: 0 failed handshakes, 0 broken streams");
    }
}
