//! KRaft's split process roles: dedicated controllers (`process.roles=controller`) holding the
//! metadata quorum and serving no clients, and broker-only nodes (`process.roles=broker`) that
//! follow the quorum's log without a vote.

use std::collections::BTreeSet;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::cluster::{consume, create_topic_with, produce, values, wait_for, Cluster, FAST};

const BROKERS: [i32; 3] = [1, 2, 3];
const CONTROLLERS: [i32; 3] = [4, 5, 6];

/// The quorum's leader and its voters and observers, as broker `id` reports them (None while
/// it knows no leader, or the one it knows does not answer).
fn quorum_seen_by(cluster: &Cluster, id: i32) -> Option<(i32, Vec<i32>, BTreeSet<i32>)> {
    let answer = cluster.describe_quorum(id);
    let p = &answer.topics[0].partitions[0];
    (p.error_code == 0).then(|| {
        (
            p.leader_id.0,
            p.current_voters.iter().map(|v| v.replica_id.0).collect(),
            p.observers.iter().map(|o| o.replica_id.0).collect(),
        )
    })
}

#[test]
fn dedicated_controllers_hold_the_quorum_and_broker_only_nodes_serve_clients() {
    let mut cluster = Cluster::start_split(3, 3, FAST);
    let bootstrap = cluster.bootstrap();
    // Clients see the brokers only; the controller id they are given is a broker they can reach.
    assert_eq!(
        cluster.brokers_seen_by(1),
        BROKERS.into_iter().collect::<BTreeSet<_>>()
    );
    for id in BROKERS {
        assert!(
            BROKERS.contains(&cluster.controller(id)),
            "broker {id} names a broker as controller"
        );
    }
    // A dedicated controller has no client listener.
    for id in CONTROLLERS {
        let node = cluster.node(id);
        assert!(
            node.log().contains("sluice: controller only"),
            "controller {id}: {}",
            node.log()
        );
        assert!(
            TcpStream::connect((node.host.as_str(), node.port)).is_err(),
            "controller {id} serves clients"
        );
    }
    // The quorum's leader is a controller; the brokers follow its log as observers.
    wait_for("every broker observed", Duration::from_secs(10), || {
        quorum_seen_by(&cluster, 1).is_some_and(|q| q.2 == BROKERS.into_iter().collect())
    });
    let (leader, voters, _) = quorum_seen_by(&cluster, 2).expect("a quorum leader");
    assert!(CONTROLLERS.contains(&leader), "leader {leader}");
    assert_eq!(voters, CONTROLLERS.to_vec());

    // Replicated topics work as on combined nodes.
    create_topic_with(&bootstrap, "split", 3, 3, &[("min.insync.replicas", "2")]).expect("created");
    let acked = produce(&bootstrap, "split", "a", 300);
    assert_eq!(acked.len(), 300);
    let got = consume(&bootstrap, "split", 3, 300);
    assert_eq!(values(&got).len(), 300, "every record once");

    // The active controller dies: the other two elect a new one, and the brokers follow it —
    // topic creation works again through any broker.
    cluster.node_mut(leader).kill9();
    wait_for("a new quorum leader", Duration::from_secs(15), || {
        quorum_seen_by(&cluster, 3)
            .is_some_and(|(now, _, _)| now != leader && CONTROLLERS.contains(&now))
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while let Err(e) = create_topic_with(&bootstrap, "after", 2, 3, &[]) {
        assert!(
            Instant::now() < deadline,
            "no topic creation after the controller died: {e}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let acked_after = produce(&bootstrap, "after", "b", 100);
    assert_eq!(acked_after.len(), 100);
    // No broker was fenced for the controller's death.
    assert_eq!(cluster.brokers_seen_by(2).len(), 3);

    // A broker-only node restarts from its own copy of the log: with every controller frozen
    // (for less than the session timeout), it knows every topic before it has heard from the
    // quorum; then it registers again and is back in service.
    cluster.node_mut(2).kill9();
    cluster.node_mut(leader).restart();
    let controller_pids: Vec<i32> = CONTROLLERS
        .iter()
        .map(|id| cluster.node(*id).pid() as i32)
        .collect();
    let signal_controllers = |signal| {
        for pid in &controller_pids {
            unsafe {
                libc::kill(*pid, signal);
            }
        }
    };
    signal_controllers(libc::SIGSTOP);
    cluster.node_mut(2).restart();
    let metadata = cluster.metadata(2);
    signal_controllers(libc::SIGCONT);
    let names: BTreeSet<String> = metadata
        .topics
        .iter()
        .filter_map(|t| t.name.as_ref().map(|n| n.to_string()))
        .collect();
    assert!(
        names.contains("split") && names.contains("after"),
        "{names:?}"
    );
    cluster.wait_for_brokers(2, 3);
    let got = consume(&bootstrap, "split", 3, 300);
    assert_eq!(
        values(&got).len(),
        300,
        "every record once after the restarts"
    );
    let got = consume(&bootstrap, "after", 2, 100);
    assert_eq!(values(&got).len(), 100);
}
