use std::collections::{HashMap, HashSet};

use super::*;
use crate::store::testing::{both, postgres_config};

fn small(first: u16, last: u16) -> PortRange {
    PortRange::new(first, last).expect("range")
}

#[tokio::test]
async fn ports_are_stable_distinct_reused_and_exhaust_clearly() {
    for t in both("host-a").await {
        let b = t.store.backend_name();
        let egress = EgressPorts::new(t.store.clone(), small(20000, 20002));
        let alice = egress.assign("alice").await.expect("alice");
        assert_eq!(
            egress.assign("alice").await.expect("again"),
            alice,
            "{b}: stable"
        );
        let bob = egress.assign("bob").await.expect("bob");
        let carol = egress.assign("carol").await.expect("carol");
        let all: HashSet<_> = [alice, bob, carol].into_iter().collect();
        assert_eq!(all.len(), 3, "{b}");
        assert!(all.iter().all(|p| egress.range().contains(*p)), "{b}");
        match egress.assign("dave").await {
            Err(EgressError::Exhausted(r)) => assert_eq!(r.to_string(), "20000-20002"),
            other => panic!("{b}: {other:?}"),
        }
        assert_eq!(
            egress.release("bob").await.expect("release"),
            Some(bob),
            "{b}"
        );
        assert_eq!(
            egress.release("bob").await.expect("release twice"),
            None,
            "{b}"
        );
        assert_eq!(
            egress.assign("dave").await.expect("dave"),
            bob,
            "{b}: released port reused"
        );
        assert_eq!(egress.port_of("bob").await.expect("port_of"), None, "{b}");

        // A new handle (a restart, or another host) sees the same assignment.
        let again = EgressPorts::new(t.store.clone(), small(20000, 20002));
        assert_eq!(again.assign("alice").await.expect("alice"), alice, "{b}");
        let log = t.store.audit_log(Some("dave")).await.expect("audit");
        assert_eq!(
            log.last().map(|e| e.detail.as_str()),
            Some("action=assigned"),
            "{b}"
        );
    }
}

#[tokio::test]
async fn rotation_moves_to_a_free_port_or_says_exhausted() {
    for t in both("host-a").await {
        let b = t.store.backend_name();
        let egress = EgressPorts::new(t.store.clone(), small(30000, 30002));
        let alice = egress.assign("alice").await.expect("alice");
        let bob = egress.assign("bob").await.expect("bob");
        let rotated = egress.rotate("alice").await.expect("rotate");
        assert!(rotated != alice && rotated != bob, "{b}");
        assert_eq!(
            egress.port_of("alice").await.expect("port"),
            Some(rotated),
            "{b}"
        );
        // The old port is free again; now the range is full and rotation has nowhere to go.
        assert_eq!(egress.assign("carol").await.expect("carol"), alice, "{b}");
        assert!(
            matches!(egress.rotate("alice").await, Err(EgressError::Exhausted(_))),
            "{b}"
        );
        assert!(
            matches!(egress.rotate("nobody").await, Err(EgressError::NoPort)),
            "{b}"
        );
    }
}

/// Two orchestrators sharing one PostgreSQL assign ports for the same 1,000 users at once (each in
/// its own order, 8 workers each): nobody gets two ports, no port goes to two users.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_orchestrators_racing_over_a_thousand_users_never_collide() {
    let config = postgres_config().await;
    let hosts = [
        crate::store::Store::open(&config, "host-a")
            .await
            .expect("a"),
        crate::store::Store::open(&config, "host-b")
            .await
            .expect("b"),
    ];
    let users: Vec<String> = (0..1000).map(|i| format!("user-{i:04}")).collect();
    let mut tasks = Vec::new();
    for (h, store) in hosts.iter().enumerate() {
        let egress = EgressPorts::new(store.clone(), PortRange::default());
        for w in 0..8 {
            let egress = egress.clone();
            let mut mine: Vec<String> = users.iter().skip(w).step_by(8).cloned().collect();
            if h == 1 {
                mine.reverse();
            }
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for u in mine {
                    let port = egress.assign(&u).await.expect("assign");
                    got.push((u, port));
                }
                got
            }));
        }
    }
    let mut seen: HashMap<String, u16> = HashMap::new();
    for t in tasks {
        for (u, port) in t.await.expect("task") {
            let first = *seen.entry(u.clone()).or_insert(port);
            assert_eq!(first, port, "{u} was handed two ports");
        }
    }
    assert_eq!(seen.len(), 1000);
    let distinct: HashSet<u16> = seen.values().copied().collect();
    assert_eq!(distinct.len(), 1000, "a port was handed to two users");
    let rows = hosts[0].egress_assignments().await.expect("rows");
    assert_eq!(rows.len(), 1000);
    for (u, p) in rows {
        assert_eq!(seen.get(&u), Some(&p), "store disagrees for {u}");
    }
}

/// The same race on a nearly full small range: contention for the last ports ends in a clear
/// exhaustion error for the losers, never in a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_for_the_last_ports_exhausts_cleanly() {
    let config = postgres_config().await;
    let a = crate::store::Store::open(&config, "host-a")
        .await
        .expect("a");
    let b = crate::store::Store::open(&config, "host-b")
        .await
        .expect("b");
    let range = small(40000, 40049);
    let mut tasks = Vec::new();
    for (h, store) in [a.clone(), b].into_iter().enumerate() {
        for w in 0..4 {
            let egress = EgressPorts::new(store.clone(), range);
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..20 {
                    out.push(egress.assign(&format!("u-{h}-{w}-{i}")).await);
                }
                out
            }));
        }
    }
    let (mut ok, mut exhausted) = (0, 0);
    for t in tasks {
        for r in t.await.expect("task") {
            match r {
                Ok(_) => ok += 1,
                Err(EgressError::Exhausted(_)) => exhausted += 1,
                Err(e) => panic!("unexpected {e}"),
            }
        }
    }
    assert_eq!((ok, exhausted), (50, 110));
    let ports: HashSet<u16> = a
        .egress_assignments()
        .await
        .expect("rows")
        .into_iter()
        .map(|(_, p)| p)
        .collect();
    assert_eq!(ports.len(), 50);
}
