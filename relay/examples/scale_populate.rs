//! Fills a relaybox data directory with accounts and messages for the scale benchmark
//! (`scripts/bench/scale.sh`), through the store's public API, so the files and the index on disk
//! are exactly what deliveries make. Adds to what is there: run it again with higher counts to
//! grow the same directory.
//!
//!   cargo run --release -p relaybox --example scale_populate -- --data DIR --accounts N --messages M
//!
//! Accounts are `bnch<NNNNN>@<domain>` (loadgen's names) with one shared password hash: hashing
//! 100 000 passwords would take minutes and measure nothing the benchmark needs. Messages are
//! 1–4 KB PGP/MIME-shaped (random armour, which the store does not look at), spread over the
//! accounts, with internal dates spread over the last 30 days so that an expiry run finds work.

use anyhow::{bail, Context, Result};
use relaybox::store::{AccountId, Store};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

struct Args {
    data: PathBuf,
    domain: String,
    accounts: u64,
    messages: u64,
    password: String,
    parallel: usize,
    min_free_mb: u64,
}

fn args() -> Result<Args> {
    let mut a = Args {
        data: PathBuf::new(),
        domain: "[127.0.0.21]".into(),
        accounts: 0,
        messages: 0,
        password: "benchpass12345".into(),
        parallel: 128,
        min_free_mb: 4096,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--data" => a.data = v()?.into(),
            "--domain" => a.domain = v()?,
            "--accounts" => a.accounts = v()?.parse()?,
            "--messages" => a.messages = v()?.parse()?,
            "--password" => a.password = v()?,
            "--parallel" => a.parallel = v()?.parse()?,
            "--min-free-mb" => a.min_free_mb = v()?.parse()?,
            _ => bail!("unknown option {k} (see the comment at the top of scale_populate.rs)"),
        }
    }
    if a.data.as_os_str().is_empty() {
        bail!("--data DIR is required");
    }
    Ok(a)
}

/// A deterministic xorshift, so that two runs make the same bytes.
fn next(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

fn message(n: u64, from: &str, to: &str) -> Vec<u8> {
    let mut s = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let armour_len = 1024 + (next(&mut s) % 3072) as usize;
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut armour = Vec::with_capacity(armour_len + armour_len / 76 + 2);
    for i in 0..armour_len {
        armour.push(B64[(next(&mut s) % 64) as usize]);
        if i % 76 == 75 {
            armour.extend_from_slice(b"\r\n");
        }
    }
    let mut m = format!(
        "From: <{from}>\r\nTo: <{to}>\r\nSubject: [...]\r\nMessage-ID: <scale{n}@bench>\r\n\
         Date: Thu, 01 Jan 2026 00:00:00 +0000\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/encrypted; protocol=\"application/pgp-encrypted\"; boundary=\"b{n}\"\r\n\
         \r\n--b{n}\r\nContent-Type: application/pgp-encrypted\r\n\r\nVersion: 1\r\n\r\n--b{n}\r\n\
         Content-Type: application/octet-stream\r\n\r\n-----BEGIN PGP MESSAGE-----\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(&armour);
    m.extend_from_slice(b"\r\n-----END PGP MESSAGE-----\r\n\r\n--b");
    m.extend_from_slice(format!("{n}--\r\n").as_bytes());
    m
}

fn free_mb(dir: &std::path::Path) -> Result<u64> {
    let s = nix::sys::statvfs::statvfs(dir)?;
    Ok(s.blocks_available() as u64 * s.fragment_size() as u64 / (1 << 20))
}

/// Messages stored so far, from the mailbox counters (no scan).
fn stored_messages(store: &Store) -> Result<u64> {
    let mut n = 0;
    for a in store.accounts()? {
        for mb in store.mailboxes(a.id)? {
            n += mb.exists as u64;
        }
    }
    Ok(n)
}

async fn run(a: Args) -> Result<()> {
    let dir = a.data.join("store");
    std::fs::create_dir_all(&dir)?;
    let t0 = Instant::now();
    let store = Store::open(&dir)?;
    let opened = t0.elapsed();
    let now = relaybox::clock::Clock::system().now();
    let hash = relaybox::accounts::make_hash(&a.password).map_err(anyhow::Error::msg)?;

    let t1 = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(a.parallel));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..a.accounts {
        let (store, sem, hash) = (store.clone(), sem.clone(), hash.clone());
        let addr = format!("bnch{i:05}@{}", a.domain);
        let permit = sem.acquire_owned().await?;
        tasks.spawn(async move {
            let _p = permit;
            store
                .create_account(&addr, &hash, now)
                .await
                .map(|(acc, _)| (i, acc.id))
        });
    }
    let mut ids: Vec<AccountId> = vec![0; a.accounts as usize];
    while let Some(r) = tasks.join_next().await {
        let (i, id) = r??;
        ids[i as usize] = id;
    }
    let accounts_s = t1.elapsed().as_secs_f64();
    if a.messages > 0 && ids.is_empty() {
        bail!("messages need accounts (--accounts)");
    }

    let have = stored_messages(&store)?;
    let t2 = Instant::now();
    let mut added = 0u64;
    for n in have..a.messages {
        if n % 20_000 == 0 {
            let free = free_mb(&dir)?;
            if free < a.min_free_mb {
                eprintln!(
                    "stopping: {free} MB free on the data disk (--min-free-mb {})",
                    a.min_free_mb
                );
                break;
            }
            if n > have {
                eprintln!(
                    "{n} messages ({:.0}/s)",
                    (n - have) as f64 / t2.elapsed().as_secs_f64()
                );
            }
        }
        // Spread by a multiplicative step so neighbouring messages land in different accounts.
        let k = (n.wrapping_mul(2_654_435_761) % ids.len() as u64) as usize;
        let (from, to) = (
            format!("bnch{:05}@{}", (k + 1) % ids.len(), a.domain),
            format!("bnch{k:05}@{}", a.domain),
        );
        let body: Arc<[u8]> = message(n, &from, &to).into();
        let date = now - (n.wrapping_mul(7919) % (30 * 86_400)) as i64;
        let (store, acc) = (store.clone(), ids[k]);
        let permit = sem.clone().acquire_owned().await?;
        tasks.spawn(async move {
            let _p = permit;
            store.deliver_at(&[acc], body, date).await.map(|()| (0, 0))
        });
        while let Some(r) = tasks.try_join_next() {
            r??;
        }
        added += 1;
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let messages_s = t2.elapsed().as_secs_f64();
    // What one uncached login pays for the password alone (SHA-512 crypt, 5000 rounds).
    let t3 = Instant::now();
    for _ in 0..20 {
        if !relaybox::accounts::verify_hash(&a.password, &hash) {
            bail!("the shared hash does not verify");
        }
    }
    let hash_ms = t3.elapsed().as_secs_f64() * 1000.0 / 20.0;
    println!(
        "{{\"open_s\": {:.3}, \"accounts\": {}, \"accounts_s\": {accounts_s:.1}, \"messages_before\": {have}, \
         \"messages_added\": {added}, \"messages_s\": {messages_s:.1}, \"hash_verify_ms\": {hash_ms:.2}, \"free_mb\": {}}}",
        opened.as_secs_f64(),
        ids.len(),
        free_mb(&dir)?
    );
    Ok(())
}

fn main() -> Result<()> {
    let a = args()?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(a))
}
