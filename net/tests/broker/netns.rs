//! Network partitions for cluster tests, made with Linux network namespaces (as root, with
//! iproute2's `ip`).
//!
//! Every node runs in its own namespace with one interface on a private /24, plugged into a
//! bridge that lives in a namespace of its own (the "switch": a fresh namespace has no firewall
//! rules, whatever the host's are). The test itself stays in the host's namespace, plugged into
//! the switch too (address .254), so its clients reach every node — and keep reaching a node
//! that the other nodes no longer can, as a client on the far side of a partition would.
//!
//! A node is partitioned off from everyone by unplugging its port on the switch. A link between
//! two nodes is cut with a blackhole route to the other's address on each side:
//! packets either way are dropped silently (connections stall, as on a real partition, rather
//! than being refused), established connections included, until the link is healed. Dropping
//! the `Network` removes every namespace it made (the interfaces go with them).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static NETWORKS: AtomicU32 = AtomicU32::new(0);

pub struct Network {
    /// Short and unique per network: interface names have 15 bytes at most.
    id: String,
    /// The first three octets of the network's /24, e.g. "10.231.7".
    subnet: String,
    nodes: usize,
    /// How many times each link (lower node first) is cut: a link cut by two faults (a cut
    /// and an isolation) stays cut until both are healed.
    cuts: std::sync::Mutex<std::collections::BTreeMap<(usize, usize), u32>>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip_in(netns: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["netns", "exec", netns, "ip"];
    all.extend_from_slice(args);
    ip(&all)
}

impl Network {
    /// Whether this machine lets the tests make namespaces (root, iproute2). In CI it must: a
    /// partition test that cannot run there fails rather than passing unseen.
    pub fn available() -> bool {
        let probe = format!("sluice-probe-{}", std::process::id());
        let made = ip(&["netns", "add", &probe]).is_ok();
        if made {
            let _ = ip(&["netns", "del", &probe]);
        }
        if !made && std::env::var_os("CI").is_some() {
            panic!("network namespaces are needed for partition tests (run as root with iproute2)");
        }
        made
    }

    /// A network of `nodes` namespaces (nodes 1..=nodes) on one switch.
    pub fn create(nodes: usize) -> Network {
        assert!((1..=250).contains(&nodes));
        let n = NETWORKS.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let key = (pid % 4096) * 16 + n % 16;
        let network = Network {
            id: format!("{key:x}"),
            subnet: format!("10.{}.{}", 100 + (pid % 100), n % 250),
            nodes,
            cuts: Default::default(),
        };
        network.remove();
        network.build().unwrap_or_else(|e| {
            network.remove();
            panic!("building the test network: {e}")
        });
        network
    }

    fn switch(&self) -> String {
        format!("slsw{}", self.id)
    }

    /// The namespace node `i` runs in.
    pub fn netns(&self, i: usize) -> String {
        format!("sln{}x{i}", self.id)
    }

    /// Node `i`'s address.
    pub fn host(&self, i: usize) -> String {
        format!("{}.{i}", self.subnet)
    }

    fn build(&self) -> Result<(), String> {
        let switch = self.switch();
        ip(&["netns", "add", &switch])?;
        ip_in(&switch, &["link", "add", "br0", "type", "bridge"])?;
        ip_in(&switch, &["link", "set", "br0", "up"])?;
        // The test's own port on the switch.
        let (up_host, up_switch) = (format!("sl{}h", self.id), format!("sl{}s", self.id));
        ip(&[
            "link", "add", &up_host, "type", "veth", "peer", "name", &up_switch,
        ])?;
        ip(&["link", "set", &up_switch, "netns", &switch])?;
        ip_in(&switch, &["link", "set", &up_switch, "master", "br0", "up"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}.254/24", self.subnet),
            "dev",
            &up_host,
        ])?;
        ip(&["link", "set", &up_host, "up"])?;
        for i in 1..=self.nodes {
            let netns = self.netns(i);
            let (node_end, switch_end) =
                (format!("sl{}n{i}", self.id), format!("sl{}p{i}", self.id));
            ip(&["netns", "add", &netns])?;
            ip(&[
                "link",
                "add",
                &node_end,
                "type",
                "veth",
                "peer",
                "name",
                &switch_end,
            ])?;
            ip(&["link", "set", &switch_end, "netns", &switch])?;
            ip_in(
                &switch,
                &["link", "set", &switch_end, "master", "br0", "up"],
            )?;
            ip(&["link", "set", &node_end, "netns", &netns])?;
            ip_in(
                &netns,
                &[
                    "addr",
                    "add",
                    &format!("{}/24", self.host(i)),
                    "dev",
                    &node_end,
                ],
            )?;
            ip_in(&netns, &["link", "set", &node_end, "up"])?;
            ip_in(&netns, &["link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Cuts the link between nodes `a` and `b`, both ways.
    pub fn cut(&self, a: usize, b: usize) {
        let mut cuts = self.cuts.lock().expect("not poisoned");
        let count = cuts.entry((a.min(b), a.max(b))).or_insert(0);
        *count += 1;
        if *count > 1 {
            return;
        }
        for (from, to) in [(a, b), (b, a)] {
            let target = format!("{}/32", self.host(to));
            ip_in(&self.netns(from), &["route", "add", "blackhole", &target])
                .unwrap_or_else(|e| panic!("cutting {from} from {to}: {e}"));
        }
    }

    /// Heals the link between nodes `a` and `b` (it must be cut), once every cut of it is.
    pub fn heal(&self, a: usize, b: usize) {
        let mut cuts = self.cuts.lock().expect("not poisoned");
        let key = (a.min(b), a.max(b));
        let count = cuts.get_mut(&key).expect("healing a link that is not cut");
        *count -= 1;
        if *count > 0 {
            return;
        }
        cuts.remove(&key);
        for (from, to) in [(a, b), (b, a)] {
            let target = format!("{}/32", self.host(to));
            ip_in(&self.netns(from), &["route", "del", "blackhole", &target])
                .unwrap_or_else(|e| panic!("healing {from} and {to}: {e}"));
        }
    }

    /// Cuts node `a` off from every other node (the test still reaches it).
    pub fn isolate(&self, a: usize) {
        for b in (1..=self.nodes).filter(|b| *b != a) {
            self.cut(a, b);
        }
    }

    /// Heals every link of node `a` that `isolate` cut.
    pub fn rejoin(&self, a: usize) {
        for b in (1..=self.nodes).filter(|b| *b != a) {
            self.heal(a, b);
        }
    }

    /// Unplugs node `a` from the switch: nobody reaches it, the test included, while it runs on.
    pub fn disconnect(&self, a: usize) {
        ip_in(
            &self.switch(),
            &["link", "set", &format!("sl{}p{a}", self.id), "down"],
        )
        .unwrap_or_else(|e| panic!("disconnecting {a}: {e}"));
    }

    /// Plugs node `a` back in.
    pub fn reconnect(&self, a: usize) {
        ip_in(
            &self.switch(),
            &["link", "set", &format!("sl{}p{a}", self.id), "up"],
        )
        .unwrap_or_else(|e| panic!("reconnecting {a}: {e}"));
    }

    fn remove(&self) {
        for i in 1..=self.nodes {
            let _ = ip(&["netns", "del", &self.netns(i)]);
        }
        let _ = ip(&["netns", "del", &self.switch()]);
        // The host end of the uplink goes with its peer; this is for a half-built network.
        let _ = ip(&["link", "del", &format!("sl{}h", self.id)]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.remove();
    }
}
