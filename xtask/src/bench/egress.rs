//! `bench egress`: egress port assignment throughput on SQLite (one host) and on PostgreSQL (two
//! orchestrators racing over the same users), with the duplicate count of the race.
//! Baseline: the bare single-statement claim of a known-free port on the same store, in the same run.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use anyhow::{ensure, Result};
use orchestrator::egress::{EgressPorts, PortRange};
use orchestrator::store::{Store, StoreConfig};
use protocol::Secret;

use super::figure;
use crate::shell::step;

const USERS: usize = 1000;
const WORKERS: usize = 8;

/// Runs the benchmark.
pub fn run() -> Result<()> {
    let rt = crate::shell::runtime()?;
    rt.block_on(measure())
}

fn users(prefix: &str) -> Vec<String> {
    (0..USERS).map(|i| format!("{prefix}-{i:05}")).collect()
}

/// Assigns every user with `WORKERS` concurrent tasks per store; returns (user, port) pairs and the
/// elapsed seconds.
async fn assign_all(stores: &[Store], users: &[String]) -> Result<(Vec<(String, u16)>, f64)> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for (h, store) in stores.iter().enumerate() {
        let egress = EgressPorts::new(store.clone(), PortRange::default());
        for w in 0..WORKERS {
            let egress = egress.clone();
            let mut mine: Vec<String> = users.iter().skip(w).step_by(WORKERS).cloned().collect();
            if h % 2 == 1 {
                mine.reverse();
            }
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::with_capacity(mine.len());
                for u in mine {
                    let port = egress.assign(&u).await?;
                    got.push((u, port));
                }
                Ok::<_, anyhow::Error>(got)
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok((all, t.elapsed().as_secs_f64()))
}

/// The baseline: one INSERT per user on a port known to be free.
async fn bare_claims(store: &Store, users: &[String], first_port: u16) -> Result<f64> {
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..WORKERS {
        let store = store.clone();
        let mine: Vec<(usize, String)> = users
            .iter()
            .cloned()
            .enumerate()
            .skip(w)
            .step_by(WORKERS)
            .collect();
        tasks.push(tokio::spawn(async move {
            for (i, u) in mine {
                let port = first_port + u16::try_from(i).unwrap_or(0);
                anyhow::ensure!(
                    store.claim_egress_port(&u, port).await?,
                    "baseline port taken"
                );
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(users.len() as f64 / t.elapsed().as_secs_f64())
}

/// Users given two ports plus ports given to two users.
fn duplicates(pairs: &[(String, u16)]) -> usize {
    let mut by_user: HashMap<&str, u16> = HashMap::new();
    let mut dup = 0;
    for (u, p) in pairs {
        match by_user.get(u.as_str()) {
            Some(q) if q != p => dup += 1,
            _ => {
                by_user.insert(u, *p);
            }
        }
    }
    let distinct: HashSet<u16> = by_user.values().copied().collect();
    dup + (by_user.len() - distinct.len())
}

async fn measure() -> Result<()> {
    let dir = tempfile::tempdir()?;
    step(&format!(
        "SQLite: one host assigning {USERS} users ({WORKERS} workers)"
    ));
    let sqlite = Store::open(
        &StoreConfig::Sqlite {
            path: dir.path().join("egress.db"),
        },
        "bench",
    )
    .await?;
    let (pairs, secs) = assign_all(std::slice::from_ref(&sqlite), &users("s")).await?;
    ensure!(duplicates(&pairs) == 0, "SQLite handed out a port twice");
    let sqlite_rate = USERS as f64 / secs;
    let sqlite_base = bare_claims(&sqlite, &users("sb"), 30000).await?;

    step("starting a throwaway PostgreSQL (loopback only)");
    let cluster = test_kit::postgres::Cluster::start(&std::env::temp_dir())?;
    let url = Secret::new(cluster.url());
    step(&format!(
        "PostgreSQL: two orchestrators racing over the same {USERS} users"
    ));
    let config = StoreConfig::Postgres {
        url,
        max_connections: WORKERS as u32,
    };
    let a = Store::open(&config, "bench-a").await?;
    let b = Store::open(&config, "bench-b").await?;
    let (pairs, secs) = assign_all(&[a.clone(), b.clone()], &users("p")).await?;
    let dups = duplicates(&pairs);
    let rows = a.egress_assignments().await?;
    ensure!(
        rows.len() == USERS,
        "expected {USERS} assignments, store has {}",
        rows.len()
    );
    let pg_rate = USERS as f64 / secs;
    let pg_base = bare_claims(&a, &users("pb"), 30000).await?;
    a.close().await;
    b.close().await;
    drop(cluster);

    figure("egress_assign_per_s_sqlite", format!("{sqlite_rate:.0}"));
    figure(
        "egress_bare_insert_per_s_sqlite",
        format!("{sqlite_base:.0}"),
    );
    figure(
        "egress_assign_vs_bare_insert_ratio_sqlite",
        format!("{:.2}", sqlite_rate / sqlite_base),
    );
    figure("egress_assign_per_s_postgres", format!("{pg_rate:.0}"));
    figure("egress_bare_insert_per_s_postgres", format!("{pg_base:.0}"));
    figure(
        "egress_assign_vs_bare_insert_ratio_postgres",
        format!("{:.2}", pg_rate / pg_base),
    );
    figure("egress_duplicates", dups);
    Ok(())
}
