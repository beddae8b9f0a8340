//! A private network for a test cluster: each node in a network namespace of its own, joined
//! by veth pairs to one bridge, so a test can cut the links between two nodes (a partition)
//! and heal them. Cuts are `iptables` DROP rules inside the two nodes' namespaces, so they
//! vanish with the namespaces; everything is created with a per-run tag and removed on drop
//! (and namespaces a killed run left behind are swept at the next start). Needs root.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::cluster::{HarnessError, Result};

/// Prefix of every name this module creates (links, namespaces), for the sweep.
const PREFIX: &str = "cfn";

/// Networks created by this process so far: part of every name, so two test clusters of one
/// process (cargo runs tests as threads) never share one.
static CREATED: AtomicU32 = AtomicU32::new(0);

/// The network of one cluster.
#[derive(Debug)]
pub struct Network {
    tag: String,
    /// The bridge, once created (only what was created is removed).
    bridge: Option<String>,
    subnet: [u8; 3],
    namespaces: BTreeMap<u64, String>,
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HarnessError::Unexpected(format!("{}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// Removes namespaces and bridges of runs whose process is gone (names carry the pid).
fn sweep() {
    let Ok(out) = Command::new("ip").args(["-o", "link", "show", "type", "bridge"]).output() else { return };
    let dead = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.split(['x', '-']).next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
    };
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(name) = line.split(": ").nth(1).map(|n| n.split('@').next().unwrap_or(n))
            && dead(name)
        {
            let _ = run(&["ip", "link", "del", name]);
        }
    }
    if let Ok(out) = Command::new("ip").args(["netns", "list"]).output() {
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Some(name) = line.split_whitespace().next()
                && dead(name)
            {
                let _ = run(&["ip", "netns", "del", name]);
            }
        }
    }
}

impl Network {
    /// Creates the bridge and one namespace per id, each with an address in a random
    /// 10.x.y.0/24 (the bridge is .254, node `id` is .`id`).
    pub fn create(ids: &[u64]) -> Result<Network> {
        sweep();
        let [x, y]: [u8; 2] = rand::random();
        // Kept clear of the ranges container and Kubernetes networks here use (10.0–10.199).
        let subnet = [10, 200 + x % 50, y];
        // Link names are limited to 15 bytes: "cfn" + pid (≤ 7 digits) + "x" + a counter below
        // 100 + "h" + a one-digit id.
        let n = CREATED.fetch_add(1, Ordering::Relaxed) % 100;
        let tag = format!("{PREFIX}{}x{n}", std::process::id());
        if ids.iter().any(|id| *id > 9) {
            return Err(HarnessError::Unexpected("node ids of an isolated cluster must be 1–9".into()));
        }
        let mut net = Network { bridge: None, tag, subnet, namespaces: BTreeMap::new() };
        let bridge = format!("{}b", net.tag);
        run(&["ip", "link", "add", &bridge, "type", "bridge"])?;
        net.bridge = Some(bridge.clone());
        let bridge_ip = format!("{}/24", net.addr(254));
        run(&["ip", "addr", "add", &bridge_ip, "dev", &bridge])?;
        run(&["ip", "link", "set", &bridge, "up"])?;
        for id in ids {
            let ns = format!("{}-{id}", net.tag);
            let (host, peer) = (format!("{}h{id}", net.tag), format!("{}p{id}", net.tag));
            run(&["ip", "netns", "add", &ns])?;
            net.namespaces.insert(*id, ns.clone());
            run(&["ip", "link", "add", &host, "type", "veth", "peer", "name", &peer])?;
            run(&["ip", "link", "set", &peer, "netns", &ns])?;
            run(&["ip", "link", "set", &host, "master", &bridge, "up"])?;
            let ip = format!("{}/24", net.addr(*id as u8));
            run(&["ip", "-n", &ns, "addr", "add", &ip, "dev", &peer])?;
            run(&["ip", "-n", &ns, "link", "set", &peer, "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    fn addr(&self, host: u8) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, host)
    }

    /// Node `id`'s address.
    pub fn ip(&self, id: u64) -> Ipv4Addr {
        self.addr(id as u8)
    }

    /// A command that runs `program` inside node `id`'s namespace (`ip netns exec` execs it,
    /// so the child's pid is the program's).
    pub fn command(&self, id: u64, program: &std::path::Path) -> Result<Command> {
        let ns = self.namespaces.get(&id).ok_or_else(|| HarnessError::Unexpected(format!("no namespace for {id}")))?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).arg(program);
        Ok(c)
    }

    /// Drops every packet between nodes `a` and `b`, both ways.
    pub fn cut(&self, a: u64, b: u64) -> Result<()> {
        for (from, to) in [(a, b), (b, a)] {
            let ns = self
                .namespaces
                .get(&from)
                .ok_or_else(|| HarnessError::Unexpected(format!("no namespace for {from}")))?;
            let peer = self.ip(to).to_string();
            run(&["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-s", &peer, "-j", "DROP"])?;
            run(&["ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-d", &peer, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Removes every cut (tries every namespace, then reports the first failure).
    pub fn heal(&self) -> Result<()> {
        let results: Vec<Result<()>> =
            self.namespaces.values().map(|ns| run(&["ip", "netns", "exec", ns, "iptables", "-F"])).collect();
        results.into_iter().collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for ns in self.namespaces.values() {
            let _ = run(&["ip", "netns", "del", ns]);
        }
        if let Some(bridge) = &self.bridge {
            let _ = run(&["ip", "link", "del", bridge]);
        }
    }
}
